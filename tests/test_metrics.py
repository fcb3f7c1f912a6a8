"""Tests for imgcomp.evaluation.quality (MS-SSIM against the original's golden values and
pytorch-msssim)
and imgcomp.evaluation.results (measures of a reconstruction, measures.csv, means)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import pytorch_msssim
import torch
from PIL import Image
from scipy import ndimage

from imgcomp.evaluation.quality import ms_ssim, ms_ssim_uint8, mse, psnr, psnr_uint8
from imgcomp.evaluation.results import (
    MeanMeasures,
    Measure,
    mean_measures,
    measure,
    read_measures_csv,
    write_measures_csv,
)

SHARED = Path(os.environ.get("IMGCOMP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GOLDEN = SHARED / "docs" / "msssim_golden.json"
KODAK = SHARED / "data" / "kodak"
GOLDEN_TOL = 1e-4


def _golden_cases() -> list[dict]:
    if not GOLDEN.is_file():
        return []
    return json.loads(GOLDEN.read_text())["cases"]


def _load_kodak(name: str) -> np.ndarray:
    path = KODAK / name
    if not path.is_file():
        pytest.skip(f"Kodak image {path} not available")
    return np.asarray(Image.open(path).convert("RGB"))


def _to_tensor(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1).unsqueeze(0).to(dtype)


def test_golden_file_present() -> None:
    if not GOLDEN.is_file():
        pytest.skip(f"{GOLDEN} not available")
    assert "1e-4" in json.loads(GOLDEN.read_text())["tolerance"]


@pytest.mark.parametrize(
    "case", _golden_cases(), ids=lambda c: f"{c['image']}-{c['width']}x{c['height']}"
)
def test_golden_values(case: dict) -> None:
    a = _load_kodak(case["image"])
    if case["crop_xyxy"] is not None:
        x0, y0, x1, y1 = case["crop_xyxy"]
        a = a[y0:y1, x0:x1]
    assert a.shape[:2] == (case["height"], case["width"])
    # 3x3 box blur per channel; scipy's 'reflect' is half-sample symmetric (edge repeated).
    # Values are k/9, so rounding never hits a .5 tie.
    blurred = ndimage.uniform_filter(a.astype(np.float64), size=(3, 3, 1), mode="reflect")
    b = np.round(blurred).astype(np.uint8)
    assert ms_ssim_uint8(a, b) == pytest.approx(case["ms_ssim"], abs=GOLDEN_TOL)


def _noisy_crop(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 256x256 Kodak crop and a noisy uint8 copy (sigma 8), as float32 tensors."""
    a = _load_kodak(name)[:256, :256]
    rng = np.random.default_rng(seed)
    b = np.clip(np.round(a + rng.normal(0.0, 8.0, a.shape)), 0, 255)
    return _to_tensor(a), _to_tensor(b)


def test_agrees_with_pytorch_msssim_per_channel() -> None:
    # On one channel (power-of-two sizes, so no odd-size downsampling) the two definitions
    # coincide; pytorch-msssim builds its window in float32, hence ~1e-6 differences.
    x, y = _noisy_crop("kodim19.png", seed=0)
    # Channels as a batch of grey images; per-image values from both sides.
    xs, ys = x.transpose(0, 1), y.transpose(0, 1)
    ours = ms_ssim(xs, ys, reduce_batch=False)
    ref = pytorch_msssim.ms_ssim(xs, ys, data_range=255, size_average=False)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, ref, rtol=0, atol=5e-6)


@pytest.mark.parametrize("name", ["kodim05.png", "kodim19.png", "kodim23.png"])
def test_agrees_with_pytorch_msssim_rgb(name: str) -> None:
    # On RGB the definitions differ in one place: pytorch-msssim takes the product over scales
    # per channel and then averages channels, the original averages channels first. For mild
    # distortions the channels behave alike and the gap stays below 5e-5 (measured <= 2.5e-5).
    x, y = _noisy_crop(name, seed=1)
    ours = float(ms_ssim(x, y))
    ref = float(pytorch_msssim.ms_ssim(x, y, data_range=255))
    assert ours == pytest.approx(ref, abs=5e-5)


def test_identical_images_give_one() -> None:
    x = torch.rand(2, 3, 64, 64) * 255
    assert float(ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    a = (np.random.default_rng(0).random((48, 32, 3)) * 255).astype(np.uint8)
    assert ms_ssim_uint8(a, a) == pytest.approx(1.0, abs=1e-6)


def test_gradient_flows() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=gen) * 255
    y = (x + 20 * torch.randn(x.shape, generator=gen)).clamp(0, 255).requires_grad_(True)
    loss = 1 - ms_ssim(x, y)
    loss.backward()
    assert y.grad is not None
    assert torch.isfinite(y.grad).all()
    assert y.grad.abs().sum() > 0


def test_negative_means_stay_finite() -> None:
    # Inverted images give negative contrast-structure means, where the original gives NaN.
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    y = (255 - x).requires_grad_(True)
    value = ms_ssim(x, y)
    value.backward()
    assert torch.isfinite(value)
    assert 0 < float(value.detach()) < 0.5
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_reduce_batch_false_matches_individual_calls() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 96, 96, generator=gen) * 255
    y = x + torch.randn(x.shape, generator=gen) * torch.tensor([5.0, 15.0, 40.0]).view(3, 1, 1, 1)
    y = y.clamp(0, 255)
    per_image = ms_ssim(x, y, reduce_batch=False)
    assert per_image.shape == (3,)
    singles = torch.stack([ms_ssim(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(per_image, singles, rtol=0, atol=1e-6)
    # More noise, lower score.
    assert per_image[0] > per_image[1] > per_image[2]


@pytest.mark.parametrize("shape", [(48, 32), (32, 48), (96, 96), (160, 160)])
def test_small_shapes(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, *shape, generator=gen) * 255
    y = (x + 10 * torch.randn(x.shape, generator=gen)).clamp(0, 255)
    value = ms_ssim(x, y)
    assert value.dim() == 0
    assert 0 < float(value) < 1


def test_psnr_known_values() -> None:
    x = torch.full((2, 3, 8, 8), 100.0)
    y = x.clone()
    y[0] += 1
    y[1] += 2
    per_image = psnr(x, y, reduce_batch=False)
    expected = 10 * np.log10(255.0**2 / np.array([1.0, 4.0]))
    torch.testing.assert_close(per_image, torch.tensor(expected, dtype=torch.float32))
    assert float(per_image[0]) == pytest.approx(48.1308, abs=1e-4)
    # Batch PSNR comes from the batch MSE (2.5), not from averaging per-image PSNRs.
    assert float(mse(x, y)) == pytest.approx(2.5)
    assert float(psnr(x, y)) == pytest.approx(10 * np.log10(255.0**2 / 2.5), abs=1e-4)


def test_psnr_uint8() -> None:
    a = np.full((16, 16, 3), 50, dtype=np.uint8)
    assert psnr_uint8(a, a + 1) == pytest.approx(48.1308, abs=1e-4)
    assert psnr_uint8(a, a) == float("inf")


def _graph_ms_ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """The original's training-graph MS-SSIM (ms_ssim.py), written out in numpy for N x H x
    W x C arrays: per scale a (2 * (size // 2) + 1)-tap Gaussian at integer offsets, reflect
    padding by the excess over the width before (and half of it after), means over
    everything; downsampling by a [0.5, 0.5] filter after reflect-padding one row/column."""
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])

    def blur(img, kernel):  # separable VALID correlation along H then W
        out = np.apply_along_axis(lambda v: np.correlate(v, kernel, "valid"), 1, img)
        return np.apply_along_axis(lambda v: np.correlate(v, kernel, "valid"), 2, out)

    mcs, mssim = [], []
    for _ in range(5):
        _, h, w, _ = a.shape
        size = min(11, h, w)
        sigma = size * 1.5 / 11
        x = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
        g = np.exp(-x * x / (2 * sigma * sigma))
        g /= g.sum()
        excess = max(len(g) - w, 0)
        pad = ((0, 0), (excess, excess // 2), (excess, excess // 2), (0, 0))
        ap, bp = np.pad(a, pad, mode="reflect"), np.pad(b, pad, mode="reflect")
        mu1, mu2 = blur(ap, g), blur(bp, g)
        s11, s22, s12 = blur(ap * ap, g) - mu1**2, blur(bp * bp, g) - mu2**2, \
            blur(ap * bp, g) - mu1 * mu2
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        v1, v2 = 2 * s12 + c2, s11 + s22 + c2
        mssim.append(np.mean((2 * mu1 * mu2 + c1) * v1 / ((mu1**2 + mu2**2 + c1) * v2)))
        mcs.append(np.mean(v1 / v2))
        down = np.array([0.5, 0.5])
        a, b = (blur(np.pad(t, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="reflect"), down)
                [:, ::2, ::2] for t in (a, b))
    return float(np.prod(np.array(mcs[:4]) ** weights[:4]) * mssim[4] ** weights[4])


@pytest.mark.parametrize("shape", [(40, 40), (33, 37), (64, 48)])
def test_graph_definition_matches_the_original_training_graph(shape) -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2, *shape, 3)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    ours = ms_ssim(torch.from_numpy(a).permute(0, 3, 1, 2), torch.from_numpy(b).permute(0, 3, 1, 2),
                   definition="graph")
    assert float(ours) == pytest.approx(_graph_ms_ssim_reference(a, b), rel=1e-9)


def test_measure_of_a_reconstruction() -> None:
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    assert measure(a, b, 24 * 32 * 0.5) == (0.5, ms_ssim_uint8(a, b), psnr_uint8(a, b))


def test_measures_csv_and_means(tmp_path: Path) -> None:
    rows = [Measure("a.png", 0.25, 0.95, 30.0), Measure("b.png", 0.5, 0.9712345678, 32.56789)]
    path = tmp_path / "job kodak" / "measures.csv"
    write_measures_csv(path, rows)
    assert path.read_text().splitlines() == [
        "img_name,bpp,ms-ssim,psnr", "a.png,0.250000,0.950000,30.0000",
        "b.png,0.500000,0.971235,32.5679"]
    assert read_measures_csv(path)[0] == rows[0]
    assert mean_measures(rows) == MeanMeasures(2, float(np.mean([0.25, 0.5])),
                                               float(np.mean([0.95, 0.9712345678])),
                                               float(np.mean([30.0, 32.56789])))
    path.write_text("img_name,bpp,psnr\n")
    with pytest.raises(ValueError, match="not a measures.csv"):
        read_measures_csv(path)
