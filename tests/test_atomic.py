"""Atomic writes: the old file or the complete new one, never a half-written one."""

import pytest

from imgcomp.base.atomic import atomic_open, atomic_path, atomic_write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "measures.csv"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["measures.csv"]


def test_temporary_keeps_the_suffix_is_hidden_and_replaces_the_file(tmp_path):
    path = tmp_path / "plot.png"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".")
        tmp.write_bytes(b"new")
        assert not path.exists()
    assert path.read_bytes() == b"new" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_a_missing_folder_is_named_by_the_path_asked_for(tmp_path):
    path = tmp_path / "missing" / "x.png"
    with pytest.raises(FileNotFoundError) as error:
        atomic_write_text(path, "x")
    assert error.value.filename == str(path)  # not the hidden temporary's name
