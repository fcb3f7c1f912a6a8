"""Equality with the original TensorFlow implementation, on a log dir its own code wrote.

`$IMGCOMP_SHARED/fixtures/original_tf1/` (README.md there) holds `0101_0001 cvpr@med
cvpr@res_shallow/ckpts/` (a TF1 checkpoint of seeded random weights) and the arrays the
original computed with it: `oracle/io.npz` (test branch on a Kodak crop, training branch on a
synthetic batch) and `oracle/step.npz` (gradients and weights of one step of its two Adams).
Everything here goes through the public paths: val.py, `imgcomp decode`, train.py --restore,
`imgcomp convert`, and the checkpoint loaders they use.
"""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcomp import cli
from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.checkpoints.from_original import main as convert_main
from imgcomp.evaluation import validation
from imgcomp.evaluation.quality import ms_ssim
from imgcomp.nets.autoencoder import importance_mask
from imgcomp.original.tf_log_dirs import tf_variable_map
from imgcomp.train import run as train_run
from imgcomp.train import trainer as trainer_module
from imgcomp.train.losses import compute_loss

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("IMGCOMP_SHARED", ROOT.parent / "shared")) / "fixtures/original_tf1"
JOB = "0101_0001"
LOG_DIR_NAME = f"{JOB} cvpr@med cvpr@res_shallow"

pytestmark = pytest.mark.skipif(not (FIXTURE / LOG_DIR_NAME).is_dir(),
                                reason="original_tf1 fixture not available (set IMGCOMP_SHARED)")

# The fixture's names of the loss terms -> ours.
LOSS_TERMS = {"total_loss": "total", "d_loss_scaled": "distortion", "pc_loss": "rate_loss",
              "reg_enc_dec": "reg_enc_dec", "ms_ssim": "ms_ssim", "mse": "mse", "psnr": "psnr",
              "bpp": "bpp", "H_real": "H_real", "H_mask": "H_mask", "H_soft": "H_soft"}


def rel_diff(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.fixture(scope="module")
def oracle():
    folder = FIXTURE / LOG_DIR_NAME / "oracle"
    return np.load(folder / "io.npz"), np.load(folder / "step.npz")


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    """A writable log dir root holding (a link to) the read-only fixture log dir."""
    root = tmp_path_factory.mktemp("logs")
    (root / LOG_DIR_NAME).symlink_to(FIXTURE / LOG_DIR_NAME)
    return root


@pytest.fixture(scope="module")
def model(logs):
    return ckpt.load_codec(logs / LOG_DIR_NAME, -1)


def test_configs_come_from_the_log_dir_name(logs):
    ae_cfg, pc_cfg = ckpt.read_configs(logs / LOG_DIR_NAME)
    assert ae_cfg.source_path == ROOT / "ae_configs/cvpr/med"
    assert pc_cfg.source_path == ROOT / "pc_configs/cvpr/res_shallow"
    assert [s for s, _ in ckpt.list_checkpoints(logs / LOG_DIR_NAME)] == [0]


def test_test_branch_tensors(model, oracle):
    io, _ = oracle
    x = torch.from_numpy(io["test_x"])
    with torch.no_grad():
        bottleneck = model.autoencoder.bottleneck(x)
        z, mask = model.autoencoder.encode(x)
        q = model.quantizer(z)
        padded = model.probclass.pad(q.qhard, model.pad_value())
        logits = model.probclass(q.qhard, model.pad_value())
        out = model(x)
    assert rel_diff(bottleneck, io["test_bottleneck"]) < 1e-4
    assert rel_diff(mask, io["test_heatmap3D"]) < 1e-4
    assert torch.equal(importance_mask(bottleneck[:, :1], 32), mask)
    assert rel_diff(z, io["test_z_masked"]) < 1e-4
    assert rel_diff(q.qsoft, io["test_qsoft"]) < 1e-4
    np.testing.assert_array_equal(q.symbols.numpy(), io["test_symbols"])
    np.testing.assert_array_equal(out.symbols.numpy(), io["test_symbols"])
    np.testing.assert_array_equal(q.qhard.numpy(), io["test_qhard"])
    assert rel_diff(padded[:, 0], io["test_pc_in_padded"][..., 0]) < 1e-6
    assert rel_diff(logits.permute(0, 2, 3, 4, 1), io["test_logits"]) < 1e-4
    assert (logits >= 0).all()  # the original's ReLU on the logits
    assert rel_diff(out.bitcost, io["test_bc"]) < 1e-4
    bpp = float(out.bitcost.sum()) / (x.shape[2] * x.shape[3])
    assert bpp == pytest.approx(float(io["test_bpp"]), rel=1e-4)
    assert float((out.x_hat - torch.from_numpy(io["test_x_out"])).abs().max()) < 0.5
    same = model.to_uint8(out.x_hat).numpy() == io["test_x_out_uint8"]
    assert same.mean() >= 0.999


@pytest.mark.parametrize("branch", ["test", "train"])
def test_loss_terms(logs, model, oracle, branch):
    io, _ = oracle
    ae_cfg, pc_cfg = ckpt.read_configs(logs / LOG_DIR_NAME)
    model = copy.deepcopy(model).train(branch == "train")  # BN in training updates its stats
    with torch.no_grad():
        x = torch.from_numpy(io[f"{branch}_x"])
        out = model(x)
        terms = compute_loss(model, out, x, ae_cfg, pc_cfg)
    np.testing.assert_array_equal(out.symbols.numpy(), io[f"{branch}_symbols"])
    assert rel_diff(out.bitcost, io[f"{branch}_bc"]) < 1e-4
    assert float((out.x_hat - torch.from_numpy(io[f"{branch}_x_out"])).abs().max()) < 0.5
    for theirs, ours in LOSS_TERMS.items():
        assert float(getattr(terms, ours)) == pytest.approx(float(io[f"{branch}_{theirs}"]),
                                                            rel=1e-4), theirs


def test_training_graph_ms_ssim(oracle):
    io, _ = oracle
    x, y = torch.from_numpy(io["train_x"]), torch.from_numpy(io["msssim_pair_x2"])
    value = float(ms_ssim(x, y, definition="graph"))
    assert value == pytest.approx(float(io["msssim_pair_value"]), rel=1e-5)
    # The evaluation definition differs at the coarse scales of a 64 px crop.
    assert abs(float(ms_ssim(x, y, definition="eval")) - value) > 1e-5


def test_one_training_step_as_the_original(logs, oracle):
    io, step = oracle
    ae_cfg, pc_cfg = ckpt.read_configs(logs / LOG_DIR_NAME)
    torch.manual_seed(0)
    trainer = trainer_module.Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=1281167)
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(logs / LOG_DIR_NAME))
    trainer.model.load_state_dict(state["model"])
    assert trainer.ae_optimizer.param_groups[0]["lr"] == pytest.approx(float(step["lr_ae"]))
    assert trainer.pc_optimizer.param_groups[0]["lr"] == pytest.approx(float(step["lr_pc"]))
    # The trainer drops gradients after its update: each is copied as it is accumulated.
    grads = {}
    for name, param in trainer.model.named_parameters():
        param.register_post_accumulate_grad_hook(
            lambda p, name=name: grads.__setitem__(name, p.grad.detach().clone()))
    terms = trainer.train_step(torch.from_numpy(io["train_x"]))
    for theirs, ours in LOSS_TERMS.items():
        assert float(getattr(terms, ours)) == pytest.approx(float(step[f"loss/{theirs}"]),
                                                            rel=1e-4), theirs
    params, buffers = dict(trainer.model.named_parameters()), dict(trainer.model.named_buffers())
    checked = 0
    for ours, theirs, axes in tf_variable_map(ae_cfg.arch_param_B):
        if f"grad/{theirs}" in step.files:
            checked += 1
            grad, ref = grads[ours].numpy(), step[f"grad/{theirs}"].transpose(axes or None)
            assert np.linalg.norm(grad - ref) <= 1e-3 * np.linalg.norm(ref), theirs
            # After one step of TF1 Adam: float noise of gradients near zero changes a few
            # elements' updates, so the weights are compared relative to the update's size.
            before = step[f"before/{theirs}"].transpose(axes or None)
            after = step[f"after/{theirs}"].transpose(axes or None)
            ours_after = params[ours].detach().numpy()
            assert np.linalg.norm(ours_after - after) <= 1e-2 * np.linalg.norm(after - before)
        if f"bn_after/{theirs}" in step.files:
            assert rel_diff(buffers[ours], step[f"bn_after/{theirs}"]) < 1e-4, theirs
    assert checked == sum(k.startswith("grad/") for k in step.files)  # all of them


def _crop_png(folder: Path, io) -> Path:
    folder.mkdir()
    path = folder / "kodim19_crop.png"
    Image.fromarray(io["test_x"][0].transpose(1, 2, 0).astype(np.uint8)).save(path)
    return path


def test_val_py_on_the_original_log_dir(logs, oracle, tmp_path):
    io, _ = oracle
    crop = _crop_png(tmp_path / "crops", io)
    assert validation.main([str(logs), JOB, str(crop.parent), "--save_ours", "--real_bpp"]) == 0
    out_dir = logs / f"{JOB} crops"
    with open(out_dir / "measures.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["bpp"]) == pytest.approx(float(io["test_bpp"]), rel=1e-4)
    # The original's val.py gave these on the same crop (fixture README, meta.json).
    assert float(row["ms-ssim"]) == pytest.approx(0.17522642, abs=2e-4)
    assert float(row["psnr"]) == pytest.approx(10.49994, abs=1e-2)
    ours = np.asarray(Image.open(out_dir / "imgs" / crop.name)).transpose(2, 0, 1)
    assert (ours == io["test_x_out_uint8"][0]).mean() >= 0.999
    with open(out_dir / "real_bpp.csv", newline="") as f:
        (real,) = list(csv.DictReader(f))
    assert float(real["bpp_real"]) == pytest.approx(float(io["test_bpp"]), rel=0.02)
    # The compressed file decodes, with the log dir as the model, to val.py's reconstruction.
    decoded = tmp_path / "decoded.png"
    stream = out_dir / "bitstreams" / f"{crop.stem}.imgc"
    assert cli.main(["decode", "--model", str(logs / LOG_DIR_NAME), str(stream),
                     "-o", str(decoded)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(decoded)).transpose(2, 0, 1), ours)


def test_convert_writes_a_log_dir_of_ours(logs, model, tmp_path, capsys):
    assert convert_main([str(logs), JOB, "-o", str(tmp_path / "out")]) == 0
    converted = tmp_path / "out" / LOG_DIR_NAME
    assert (converted / "ckpts" / "ckpt-0.pt").is_file()
    ae_cfg, _ = ckpt.read_configs(converted)
    assert ae_cfg.tf_same_padding and ae_cfg.bottleneck_output_bn
    again = ckpt.load_codec(converted)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert convert_main([str(logs), "0101_0002", "-o", str(tmp_path / "out")]) == 1
    assert "no job '0101_0002'" in capsys.readouterr().err


def test_train_py_fine_tunes_from_the_original_log_dir(logs, oracle, tmp_path, capsys):
    io, _ = oracle
    # The paper's cvpr/med network (the checkpoint's), on small crops so that a step is quick.
    ae_config = tmp_path / "ae_configs" / "small_crops"
    ae_config.parent.mkdir()
    ae_config.write_text(f"use {ROOT / 'ae_configs/cvpr/med'}\ncrop_size = (32, 32)\n"
                         "batch_size = 2\n")
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        Image.fromarray(io["train_x"][i].transpose(1, 2, 0).astype(np.uint8)).save(
            images / f"{i}.png")
    out = tmp_path / "out"
    args = [str(ae_config), str(ROOT / "pc_configs/cvpr/res_shallow"), "--dataset_train",
            str(images), "--dataset_test", str(images), "--log_dir_root", str(out),
            "--restore", str(logs / LOG_DIR_NAME), "--max_steps", "1", "--num_workers", "0",
            "--restore_skip_vars", "probclass3d/logits/conv3d_conv2_mask"]
    assert train_run.main(args) == 0
    console = capsys.readouterr().out
    assert "its Adam slots are dropped" in console
    assert "2 model variable(s): probclass.conv_out.weight, probclass.conv_out.bias" in console
    (log_dir,) = out.iterdir()
    assert log_dir.name.endswith(f"RESTORE@{str(logs).replace(os.sep, '@')}@{JOB}")
    tuned = ckpt.load_checkpoint(ckpt.checkpoint_path(log_dir))
    original = ckpt.load_checkpoint(ckpt.checkpoint_path(logs / LOG_DIR_NAME))
    assert tuned["step"] == 1
    name = "autoencoder.encoder.head.0.0.weight"
    step_size = (tuned["model"][name] - original["model"][name]).abs().max()
    assert 0 < float(step_size) <= 8e-5 * 1.001  # one Adam step at the config's lr
    # Continuing in place would mix our checkpoints into the original's dir: refused.
    assert train_run.main([*args[:-2], "--restore_continue"]) == 1
    assert "convert it first" in capsys.readouterr().err


def test_original_readme_val_command_runs_as_written(oracle, tmp_path):
    """`python val.py ../ckpts MODEL_ID DATASET --save_ours`, run from a folder beside the
    checkpoints as the original README does (here with the fixture's job and `kodak`)."""
    io, _ = oracle
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / LOG_DIR_NAME).symlink_to(FIXTURE / LOG_DIR_NAME)
    _crop_png(tmp_path / "val", io)
    (tmp_path / "val" / "kodak").mkdir()
    (tmp_path / "val" / "kodim19_crop.png").rename(tmp_path / "val" / "kodak" / "kodim19.png")
    (tmp_path / "code").mkdir()
    env = {**os.environ, "VAL_ROOT": str(tmp_path / "val"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "val.py"), "../ckpts", JOB, "kodak",
                             "--save_ours"], cwd=tmp_path / "code", env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out_dir = tmp_path / "ckpts" / f"{JOB} kodak"
    assert (out_dir / "imgs" / "kodim19.png").is_file()
    assert "mean bpp=1.3375" in result.stdout
