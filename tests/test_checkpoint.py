"""Checkpoint files: atomic writes, listing, loading errors, log dir names."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.config.parsing import config_job_name
from imgcomp.original.tf_log_dirs import TFLogDirError, configs_from_log_dir_name


def test_save_list_load_and_keep(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, keep=3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3, 4]
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 3))
    assert state["step"] == 3 and torch.equal(state["w"], torch.full((2,), 3.0))
    assert ckpt.checkpoint_path(tmp_path).name == "ckpt-4.pt"
    # A step is the latest checkpoint at or before it, as the original's --restore_itr.
    assert ckpt.checkpoint_path(tmp_path, 7).name == "ckpt-4.pt"
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint of step <= 1.*2, 3, 4"):
        ckpt.checkpoint_path(tmp_path, 1)


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 5, {"w": torch.ones(3)})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed while writing

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 5, {"w": torch.zeros(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-5.pt"]  # no temp file left
    assert torch.equal(ckpt.load_checkpoint(tmp_path / "ckpt-5.pt")["w"], torch.ones(3))


def test_temporary_left_by_a_killed_save_is_removed_by_the_next(tmp_path):
    (tmp_path / ".ckpt-5.abc123.pt").write_bytes(b"half a checkpoint")  # kill -9 mid-save
    ckpt.save_checkpoint(tmp_path, 6, {"w": torch.ones(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-6.pt"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "ckpt-1.pt").write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="cannot read checkpoint .*ckpt-1.pt"):
        ckpt.load_checkpoint(tmp_path / "ckpt-1.pt")


class Arbitrary:
    """Unpickling this would run code of a class outside the allow-list."""


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    torch.save({"obj": Arbitrary()}, tmp_path / "ckpt-1.pt")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(tmp_path / "ckpt-1.pt")


def test_log_dir_names_are_unique_per_minute(tmp_path):
    now = time.strptime("2026-05-15 11:03", "%Y-%m-%d %H:%M")
    first = ckpt.make_log_dir(tmp_path, "ae_configs/cvpr/low", "pc_configs/cvpr/res_shallow",
                              now)
    second = ckpt.make_log_dir(tmp_path, "ae_configs/cvpr/low", "pc_configs/cvpr/res_shallow",
                               now)
    assert first.name == "0515_1103 cvpr@low cvpr@res_shallow"
    assert second.name == "0515_1103_1 cvpr@low cvpr@res_shallow"
    assert (first / "ckpts").is_dir()
    assert ckpt.find_log_dir(tmp_path, "0515_1103") == first
    with pytest.raises(ckpt.CheckpointError, match="no job '0101_0000'"):
        ckpt.find_log_dir(tmp_path, "0101_0000")


def test_runs_started_together_get_distinct_job_ids(tmp_path, monkeypatch):
    # Runs launched at once into one root (as three operating points on a shared GPU). The
    # slowed-down naming widens the window between choosing a job id and creating the dir.
    def slow_job_name(path):
        time.sleep(0.05)
        return config_job_name(path)

    monkeypatch.setattr(ckpt, "config_job_name", slow_job_name)
    now = time.strptime("2026-05-15 11:03", "%Y-%m-%d %H:%M")
    names = ["low", "med", "hi"] * 3
    with ThreadPoolExecutor(len(names)) as pool:
        made = list(pool.map(lambda n: ckpt.make_log_dir(
            tmp_path, f"ae_configs/cvpr/{n}", "pc_configs/cvpr/res_shallow", now), names))
    job_ids = sorted(ckpt.job_id_of(m) for m in made)
    assert job_ids == sorted(["0515_1103"] + [f"0515_1103_{i}" for i in range(1, 9)])


def test_configs_of_an_original_log_dir_come_from_its_name(tmp_path, monkeypatch):
    # The original wrote '-' in config names as '*' and appended RESTORE@... when restoring.
    (tmp_path / "aes" / "x").mkdir(parents=True)
    (tmp_path / "aes" / "x" / "lr1e-5").write_text("num_chan_bn = 8\n")
    (tmp_path / "aes" / "x" / "lr1e-45").write_text("num_chan_bn = 9\n")
    (tmp_path / "pcs").mkdir()
    (tmp_path / "pcs" / "p").write_text("kernel_size = 3\n")
    monkeypatch.setenv("CONFIG_BASE_AE", str(tmp_path / "aes"))
    monkeypatch.setenv("CONFIG_BASE_PC", str(tmp_path / "pcs"))
    ae, pc = configs_from_log_dir_name(tmp_path / "0101_0000 x@lr1e*5 p RESTORE@logs@0515_1103")
    assert ae.num_chan_bn == 8 and pc.kernel_size == 3
    with pytest.raises(TFLogDirError, match="config 'x@nothing' not found"):
        configs_from_log_dir_name(tmp_path / "0101_0000 x@nothing p")
