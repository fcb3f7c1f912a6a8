"""torchrun on CPU with gloo and 2 processes: DDP training, rank-0 outputs, restore, and
sharded val.py equal to single-process val.py."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.evaluation import validation

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp_imgs")
    rng = np.random.default_rng(0)
    for i in range(10):
        h, w = (40, 48) if i % 3 else (37, 45)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 5 + i * 20, yy * 6, (xx + yy) * 2], -1) + rng.normal(0, 9, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"im{i:02d}.png")
    return folder


def test_ddp_ranks_share_parameters_but_not_data(images, tmp_path, ae_tiny, pc_tiny):
    _torchrun(str(ROOT / "tests/ddp_probe.py"), ae_tiny, pc_tiny, str(images), str(tmp_path))
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert len(r0["batches"]) == len(r1["batches"]) == 3
    assert r0["batches"] != r1["batches"]  # each rank its own shard and crops
    assert r0["params"] == r1["params"]  # gradients averaged: identical models
    # BatchNorm running statistics are broadcast from rank 0 at each forward, then updated by
    # each rank's own batch: they differ after a step, and checkpoints hold rank 0's.
    assert r0["buffers"] != r1["buffers"]


def test_torchrun_train_one_log_dir_and_restore(images, tmp_path, ae_tiny, pc_tiny):
    logs = tmp_path / "logs"
    common = [str(ROOT / "train.py"), ae_tiny, pc_tiny, "--dataset_train", str(images),
              "--dataset_test", str(images), "--log_dir_root", str(logs), "--num_workers", "0"]
    out = _torchrun(*common, "--max_steps", "3").stdout
    assert "2 process(es)" in out
    (log_dir,) = logs.iterdir()  # exactly one log dir
    assert [s for s, _ in ckpt.list_checkpoints(log_dir)] == [3]
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    out = _torchrun(*common, "--max_steps", "5", "--restore", str(log_dir),
                    "--restore_continue").stdout
    assert out.count("Restored") == 1 and "(step 3)" in out  # printed by rank 0 only
    assert [p.name for p in logs.iterdir()] == [log_dir.name]
    assert [s for s, _ in ckpt.list_checkpoints(log_dir)] == [3, 5]


def test_sharded_val_equals_single_process(images, trained_copy):
    logs = trained_copy.parent
    job_id = ckpt.job_id_of(trained_copy)
    assert validation.main([str(logs), job_id, str(images), "--device", "cpu"]) == 0
    out_dir = logs / f"{job_id} {images.name}"
    single = (out_dir / "measures.csv").read_text()
    _torchrun(str(ROOT / "val.py"), str(logs), job_id, str(images), "--reset", "--save_ours")
    assert (out_dir / "measures.csv").read_text() == single
    rows = list(csv.DictReader(open(out_dir / "measures.csv")))
    assert [r["img_name"] for r in rows] == sorted(p.name for p in images.iterdir())
    assert len(list((out_dir / "imgs").iterdir())) == 10  # both ranks saved theirs
