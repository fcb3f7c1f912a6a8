"""imgcomp.checkpoints.ship: a trained log dir made small enough to commit, still usable and
resumable."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcomp.api import load_model
from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.checkpoints import ship
from imgcomp.train import run as train_run


def _events(log_dir: Path) -> EventAccumulator:
    return EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0}).Reload()


def test_ship_keeps_the_model_and_scalars_only(trained_copy, train_images, capsys):
    log_dir = trained_copy
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
    photo = np.asarray(Image.open(next(train_images.iterdir())))
    model = load_model(log_dir)
    assert model.decompress(model.compress(photo)).shape == photo.shape


def test_training_resumes_from_a_shipped_checkpoint(trained_copy, ae_tiny, pc_tiny,
                                                     train_images, capsys):
    log_dir = trained_copy
    assert ship.main([str(log_dir)]) == 0
    capsys.readouterr()
    data = str(train_images)
    assert train_run.main([ae_tiny, pc_tiny, "--dataset_train", data, "--dataset_test", data,
                          "--log_dir_root", str(log_dir.parent), "--num_workers", "0",
                          "--max_steps", "5", "--restore", str(log_dir),
                          "--restore_continue"]) == 0
    assert "(step 3; no optimizer states in it, Adam starts afresh)" in capsys.readouterr().out
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(log_dir))["step"] == 5


def test_ship_names_a_log_dir_without_checkpoints(tmp_path, capsys):
    (tmp_path / "empty" / "ckpts").mkdir(parents=True)
    assert ship.main([str(tmp_path / "empty")]) == 1
    assert f"error: {tmp_path / 'empty'}: no checkpoints in" in capsys.readouterr().err
