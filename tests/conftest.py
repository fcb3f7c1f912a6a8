"""Fixtures shared by the tests: the tiny configs, training images, and one tiny model that is
trained once per session.

The session fixtures are read-only: a test that writes into a log dir (val.py writes next to it,
imgcomp.checkpoints.ship and restoring write into it) takes `trained_copy`, its own copy of the
model.
"""

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcomp.config.parsing import Config, load_config
from imgcomp.train import run as train_run

TINY_CONFIGS = Path(__file__).resolve().parent / "configs"
# Where downloads go and come from: a test sets them itself.
DOWNLOAD_ENV = ("IMGCOMP_DATA", "IMGCOMP_AUTHORS_URL", "IMGCOMP_KODAK_URL", "IMGCOMP_BSDS500_URL")


@pytest.fixture(scope="session", autouse=True)
def empty_user_cache(tmp_path_factory):
    """The user's cache dir (downloaded models and data, always searched) is an empty folder
    for the whole session, subprocesses included: what a developer downloaded stays out."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user_cache")))
        for name in DOWNLOAD_ENV:
            mp.delenv(name, raising=False)
        yield


def write_images(folder: Path, count: int = 4, size: tuple[int, int] = (40, 48),
                 ext: str = "png") -> list[Path]:
    """`count` smooth gradients with noise, `size` (h, w), saved as img0.<ext>, img1.<ext>, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    paths = []
    for i in range(count):
        base = np.stack([xx * 4 + i * 10, yy * 5, (xx + yy) * 3], -1)
        img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"img{i}.{ext}")
        Image.fromarray(img).save(paths[-1], format="JPEG" if ext == "JPEG" else None)
    return paths


@pytest.fixture(scope="session")
def ae_tiny() -> str:
    """A tiny autoencoder config: fast to train, same architecture family as cvpr/ and cpu/."""
    return str(TINY_CONFIGS / "ae_tiny")


@pytest.fixture(scope="session")
def pc_tiny() -> str:
    """A tiny probability classifier config, to go with ae_tiny."""
    return str(TINY_CONFIGS / "pc_tiny")


@pytest.fixture(scope="session")
def tiny_configs(ae_tiny, pc_tiny) -> tuple[Config, Config]:
    """The tiny configs, loaded (configs are read-only)."""
    return load_config(ae_tiny), load_config(pc_tiny)


@pytest.fixture(scope="session")
def make_images() -> Callable[..., list[Path]]:
    """write_images, for tests that need images of their own (other counts, sizes, formats)."""
    return write_images


@pytest.fixture(scope="session")
def train_images(tmp_path_factory) -> Path:
    """A folder of 4 images (the tiny config's batch size), 40x48. Read-only."""
    folder = tmp_path_factory.mktemp("train_images")
    write_images(folder)
    return folder


@pytest.fixture(scope="session")
def trained_log_dir(tmp_path_factory, ae_tiny, pc_tiny, train_images) -> Path:
    """The log dir of the tiny model trained by train.py for 3 steps, with a checkpoint and
    train and test summaries (scalars, images, histograms) at every step. Read-only."""
    logs = tmp_path_factory.mktemp("trained") / "logs"
    data = str(train_images)
    assert train_run.main([ae_tiny, pc_tiny, "--dataset_train", data, "--dataset_test", data,
                          "--log_dir_root", str(logs), "--max_steps", "3",
                          "--log_interval_train", "1", "--log_interval_test", "1",
                          "--log_interval_save", "1", "--num_workers", "0"]) == 0
    (log_dir,) = logs.iterdir()
    return log_dir


@pytest.fixture
def trained_copy(trained_log_dir, tmp_path) -> Path:
    """This test's own copy of the trained log dir, alone in tmp_path / "logs"."""
    return Path(shutil.copytree(trained_log_dir, tmp_path / "logs" / trained_log_dir.name))
