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
from imgcomp.config.parsing import load_config
from imgcomp.config.schema import AE_SCHEMA

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
    for configs in ("ae_configs", "pc_configs"):
        shutil.copytree(ROOT / configs, src / configs)
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


COMMANDS = ["train", "train-context", "val", "plot", "codecs", "crops", "report", "ship",
            "convert", "records", "encode", "decode", "info", "models", "data"]


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


# Runs `imgcomp ARGS...` and fails if it imported torch (~2 s): the commands that run no
# network answer at once.
WITHOUT_TORCH = """import sys
from imgcomp.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
assert "torch" not in sys.modules, "imported torch"
sys.exit(code)
"""


def _imgcomp_without_torch(*argv: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_importing_the_cli_imports_no_torch():
    subprocess.run([sys.executable, "-c",
                    "import imgcomp.cli, sys; assert 'torch' not in sys.modules"], check=True)


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in COMMANDS),
                                  ["decode", "-h"], ["models"], ["info", str(GOLDEN)]],
                         ids=" ".join)
def test_commands_that_run_no_network_import_no_torch(argv, tmp_path):
    out = _imgcomp_without_torch(*argv, cwd=tmp_path)
    assert out.startswith("usage: ") if "-h" in argv[-1] else out


@pytest.mark.parametrize("command", list(cli.SCRIPT_PARSERS))
def test_script_help_without_torch_is_the_scripts_own(command, capsys):
    with pytest.raises(SystemExit):
        importlib.import_module(cli.SCRIPT_COMMANDS[command][0]).main(["--help"])
    own = capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert capsys.readouterr().out == own and own.startswith("usage: ")


def test_models_and_info_of_a_trained_model_import_no_torch_once_fingerprinted(
        trained_log_dir, tmp_path, monkeypatch, capsys):
    """A log dir's fingerprint is computed once (loading its weights), then kept: listing it
    and naming it as a file's model import no torch."""
    monkeypatch.setenv(zoo.MODELS_PATH_ENV, str(trained_log_dir.parent))
    photo = tmp_path / "photo.png"
    shutil.copy2(DATA / "golden.png", photo)
    assert cli.main(["encode", "-m", str(trained_log_dir), str(photo), "-o",
                     str(tmp_path / "photo.imgc")]) == 0
    assert cli.main(["models"]) == 0  # computes the fingerprint
    fingerprint = zoo.find(str(trained_log_dir)).fingerprint
    job_id = zoo.job_id_of(trained_log_dir)
    listed = _imgcomp_without_torch("models", cwd=tmp_path).splitlines()
    assert listed[-1].split()[:3] == [job_id, job_id, fingerprint]
    assert (f"model: {job_id} ({fingerprint})"
            in _imgcomp_without_torch("info", "photo.imgc", cwd=tmp_path))


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
               "print(*[m.name for m in z.shipped_models()]); "
               # an original log dir's configs, named by its name, come with the wheel
               "from imgcomp.original.tf_log_dirs import configs_from_log_dir_name as c; "
               "print(c('0515_1103 cvpr@low cvpr@res_shallow')[0].num_chan_bn); "
               "from imgcomp.cli import main; "
               "raise SystemExit(main(['encode', '-m', 'med', 'in.png', '-o', 'in.imgc']))",
               cwd=tmp_path).splitlines()
    assert Path(out[0]).is_relative_to(fresh_venv)  # the wheel's copy, not the checkout's
    assert Path(out[1]) == fresh_venv / "share" / "imgcomp" / "ckpts"
    assert out[2].split() == [row.name for row in zoo.SHIPPED]
    assert out[3] == str(load_config(ROOT / "ae_configs/cvpr/low", AE_SCHEMA).num_chan_bn)
    assert (tmp_path / "in.imgc").read_bytes() == GOLDEN.read_bytes()

    # Without --model: the model whose fingerprint the file's header carries.
    _run(fresh_venv / "bin" / "imgcomp", "decode", "in.imgc", "-o", "out.png", cwd=tmp_path)
    decoded = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    expected = json.loads((DATA / "golden_v1.json").read_text())["decoded_sha256"]
    assert hashlib.sha256(np.ascontiguousarray(decoded).tobytes()).hexdigest() == expected
