"""imgcomp.ship: a trained log dir made small enough to commit, still usable and resumable."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcomp import checkpoint as ckpt
from imgcomp import ship, training
from imgcomp.bitstream import ImageCompressor

ROOT = Path(__file__).resolve().parents[1]
AE_TINY = str(ROOT / "tests/configs/ae_tiny")
PC_TINY = str(ROOT / "tests/configs/pc_tiny")


def _events(log_dir: Path) -> EventAccumulator:
    return EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0}).Reload()


@pytest.fixture
def trained(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            images / f"{i}.png")
    argv = [AE_TINY, PC_TINY, "--dataset_train", str(images), "--dataset_test", str(images),
            "--log_dir_root", str(tmp_path / "logs"), "--num_workers", "0",
            "--log_interval_train", "1", "--log_interval_save", "1"]
    assert training.main([*argv, "--max_steps", "3"]) == 0
    (log_dir,) = (tmp_path / "logs").iterdir()
    return log_dir, argv


def test_ship_keeps_the_model_and_scalars_only(trained, capsys):
    log_dir, _ = trained
    full = ckpt.load_checkpoint(ckpt.checkpoint_path(log_dir))
    before = _events(log_dir)
    assert before.Tags()["images"] and len(ckpt.list_checkpoints(log_dir / "ckpts")) == 3
    assert ship.main([str(log_dir)]) == 0
    assert f"{log_dir}: " in capsys.readouterr().out

    assert [s for s, _ in ckpt.list_checkpoints(log_dir / "ckpts")] == [3]
    slim = ckpt.load_checkpoint(ckpt.checkpoint_path(log_dir))
    assert sorted(slim) == ["ae_schedule", "model", "pc_schedule", "step"]
    assert all(torch.equal(full["model"][k], v) for k, v in slim["model"].items())
    after = _events(log_dir)
    assert after.Tags()["images"] == []
    assert after.Tags()["histograms"] == before.Tags()["histograms"]
    for tag in before.Tags()["scalars"]:
        assert [e.value for e in after.Scalars(tag)] == [e.value for e in before.Scalars(tag)]
    photo = np.asarray(Image.open(next((log_dir.parent.parent / "imgs").iterdir())))
    compressor = ImageCompressor.from_log_dir(log_dir)
    assert compressor.decompress(compressor.compress(photo)).shape == photo.shape


def test_training_resumes_from_a_shipped_checkpoint(trained, capsys):
    log_dir, argv = trained
    assert ship.main([str(log_dir)]) == 0
    capsys.readouterr()
    assert training.main([*argv, "--max_steps", "5", "--restore", str(log_dir),
                          "--restore_continue"]) == 0
    assert "(step 3; no optimizer states in it, Adam starts afresh)" in capsys.readouterr().out
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(log_dir))["step"] == 5


def test_ship_names_a_log_dir_without_checkpoints(tmp_path, capsys):
    (tmp_path / "empty" / "ckpts").mkdir(parents=True)
    assert ship.main([str(tmp_path / "empty")]) == 1
    assert f"error: {tmp_path / 'empty'}: no checkpoints in" in capsys.readouterr().err
