"""CUDA paths, skipped where no GPU is present (CI has none): training on the GPU, checkpoints
that move between devices, and bitstreams that either device writes and the other reads."""

import numpy as np
import pytest
import torch
from PIL import Image

from imgcomp.api import default_model_dir, load_model
from imgcomp.base.device import select_device
from imgcomp.base.image_files import sample_photos
from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.evaluation import validation
from imgcomp.evaluation.quality import psnr
from imgcomp.evaluation.results import read_measures_csv
from imgcomp.train import run as train_run
from imgcomp.train import trainer as trainer_module

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(scope="module")
def photo():
    return np.asarray(Image.open(sample_photos()[0]).convert("RGB"))[40:296, 64:448]


def test_training_on_cuda_resumes_on_cpu(tmp_path, tiny_configs):
    torch.manual_seed(0)
    ae_cfg, pc_cfg = tiny_configs
    trainer = trainer_module.Trainer(ae_cfg, pc_cfg, CUDA, num_train_images=100)
    x = torch.rand(4, 3, 32, 32, device=CUDA) * 255
    first = trainer.train_step(x)
    for _ in range(10):
        last = trainer.train_step(x)
    assert float(last.total.detach()) < float(first.total.detach())
    assert all(p.is_cuda for p in trainer.model.parameters())
    # A checkpoint written on the GPU restores on the CPU with its optimizer state.
    path = ckpt.save_checkpoint(tmp_path, trainer.step, trainer.state_dict())
    on_cpu = trainer_module.Trainer(ae_cfg, pc_cfg, CPU, num_train_images=100)
    on_cpu.restore(ckpt.load_checkpoint(path, CPU), [])
    assert on_cpu.step == 11
    assert on_cpu.train_step(x.cpu()) is not None


def test_bf16_training_on_cuda(tiny_configs):
    torch.manual_seed(0)
    trainer = trainer_module.Trainer(*tiny_configs, CUDA, num_train_images=100, bf16=True)
    x = torch.rand(4, 3, 32, 32, device=CUDA) * 255
    first = trainer.train_step(x)
    for _ in range(10):
        last = trainer.train_step(x)
    assert float(last.total.detach()) < float(first.total.detach())
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


def test_train_and_val_commands_on_cuda(tmp_path, photo, ae_tiny, pc_tiny):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):  # the tiny config's batch
        Image.fromarray(photo[:, 72 * i:72 * i + 160]).save(images / f"{i}.png")
    assert train_run.main([ae_tiny, pc_tiny, "--dataset_train", str(images), "--dataset_test",
                          str(images), "--log_dir_root", str(tmp_path / "logs"),
                          "--max_steps", "4", "--device", "cuda", "--num_workers", "1"]) == 0
    (log_dir,) = (tmp_path / "logs").iterdir()
    job = log_dir.name.split()[0]
    measures = {}
    for device in ("cuda", "cpu"):
        assert validation.main([str(tmp_path / "logs"), job, str(images), "--device", device,
                                "--real_bpp"]) == 0
        measures[device] = read_measures_csv(tmp_path / "logs" / f"{job} images" / "measures.csv")
    for gpu, cpu in zip(measures["cuda"], measures["cpu"], strict=True):
        assert gpu.bpp == pytest.approx(cpu.bpp, rel=0.02)
        assert gpu.ms_ssim == pytest.approx(cpu.ms_ssim, abs=2e-3)


def test_bitstreams_decode_identically_on_either_device(photo):
    on = {d: load_model(default_model_dir(), device=d) for d in (CPU, CUDA)}
    encoded = {d: c.symbols(photo) for d, c in on.items()}
    # The encoders' float convolutions differ in the last bits, so a few symbols may differ.
    differing = (encoded[CPU] != encoded[CUDA]).float().mean().item()
    assert differing < 0.02
    for encoder, symbols in encoded.items():
        data, _ = on[encoder].encode_symbols(symbols, *photo.shape[:2])
        decoded = {d: c.decode_symbols(data)[1] for d, c in on.items()}
        # Entropy decoding is exact on both devices: the symbols that were written.
        assert all(torch.equal(s, symbols) for s in decoded.values())
        pixels = {d: c.reconstruct(symbols, *photo.shape[:2]) for d, c in on.items()}
        agreement = psnr(torch.from_numpy(pixels[CPU]).float(),
                         torch.from_numpy(pixels[CUDA]).float())
        assert float(agreement) > 45


def test_device_auto_picks_cuda():
    assert select_device("auto") == CUDA and select_device("cpu") == CPU
