"""The installed command line (README, "Command line"): one `imgcomp` with every subcommand,
and the wheel `pip install .` builds, installed into a fresh venv, encoding and decoding with
the shipped models from outside the checkout. Nothing is downloaded: the fresh venv sees this
venv's packages (torch, ...) through a .pth file, and the wheel is installed with --no-deps
--no-index."""

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcomp import cli
from imgcomp.checkpoints import zoo

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
GOLDEN = DATA / "golden_v1.imgc"  # golden.png compressed by the shipped med model


def _run(*cmd: str | os.PathLike, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", zoo.MODELS_PATH_ENV)}
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (build/ and *.egg-info stay out of the
    checkout, and other work in it cannot leak in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "imgcomp", src / "imgcomp",
                    ignore=shutil.ignore_patterns("__pycache__", "*.tmp*"))
    for ckpt_dir in (ROOT / "ckpts").glob("*/ckpts"):  # what data-files pick from
        shutil.copytree(ckpt_dir, src / ckpt_dir.relative_to(ROOT))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", tmp, src, cwd=tmp)
    (path,) = tmp.glob("imgcomp-*.whl")
    return path


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A venv holding only the wheel, plus a .pth file naming this venv's site-packages: a .pth
    inside a directory a .pth adds is not processed, so this venv's editable imgcomp stays out."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv.parent)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
         "--no-index", wheel, cwd=venv.parent)
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                        cwd=venv.parent).strip())
    ours = dict.fromkeys(sysconfig.get_path(key) for key in ("purelib", "platlib"))
    (purelib / "deps_of_the_test_venv.pth").write_text("".join(f"{p}\n" for p in ours))
    return venv


COMMANDS = ["train", "val", "plot", "codecs", "crops", "ship", "records", "encode", "decode",
            "info", "models"]


def test_every_command_is_listed_and_has_help(capsys):
    (commands,) = [a.choices for a in cli.build_arg_parser()._actions if a.dest == "command"]
    assert list(commands) == COMMANDS
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("usage: ")


@pytest.mark.parametrize("command", list(cli.SCRIPT_COMMANDS))
def test_script_commands_pass_the_rest_of_the_line_unchanged(command, monkeypatch):
    module = importlib.import_module(cli.SCRIPT_COMMANDS[command][0])
    calls = []
    monkeypatch.setattr(module, "main", lambda argv: calls.append(argv) or 3)
    assert cli.main([command, "-o", "x y", "--device", "cpu"]) == 3
    assert calls == [["-o", "x y", "--device", "cpu"]]


def test_checkout_uses_its_ckpts_folder():
    assert zoo.shipped_models_dir() == ROOT / "ckpts"


def test_wheel_ships_what_loading_needs_of_each_shipped_model(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.split("/share/imgcomp/ckpts/", 1)[1] for n in names
                     if "/share/imgcomp/ckpts/" in n)
    expected = sorted(str(p.relative_to(ROOT / "ckpts")) for p in (ROOT / "ckpts").glob("*/ckpts/*")
                      if p.name in ("ae_config", "pc_config") or p.suffix == ".pt")
    assert shipped == expected and len(expected) == 3 * len(zoo.SHIPPED)


def test_installed_imgcomp_encodes_and_decodes_by_name_and_fingerprint(fresh_venv, tmp_path):
    shutil.copy2(DATA / "golden.png", tmp_path / "in.png")
    # One process (each loads torch, ~2 s): where imgcomp and the models come from, and
    # `imgcomp encode` by name through the package (the console script decodes below).
    out = _run(fresh_venv / "bin" / "python", "-c", "import imgcomp, imgcomp.checkpoints.zoo as z; "
               "print(imgcomp.__file__); print(z.shipped_models_dir()); "
               "print(*[m.name for m in z.shipped_models()]); from imgcomp.cli import main; "
               "raise SystemExit(main(['encode', '-m', 'med', 'in.png', '-o', 'in.imgc']))",
               cwd=tmp_path).splitlines()
    assert Path(out[0]).is_relative_to(fresh_venv)  # the wheel's copy, not the checkout's
    assert Path(out[1]) == fresh_venv / "share" / "imgcomp" / "ckpts"
    assert out[2].split() == [row.name for row in zoo.SHIPPED]
    assert (tmp_path / "in.imgc").read_bytes() == GOLDEN.read_bytes()

    # Without --model: the model whose fingerprint the file's header carries.
    _run(fresh_venv / "bin" / "imgcomp", "decode", "in.imgc", "-o", "out.png", cwd=tmp_path)
    decoded = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    expected = json.loads((DATA / "golden_v1.json").read_text())["decoded_sha256"]
    assert hashlib.sha256(np.ascontiguousarray(decoded).tobytes()).hexdigest() == expected
