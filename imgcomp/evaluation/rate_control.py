"""Rate control: one file per image within a budget in bits per pixel (`encode_within_bpp`),
or of at least an MS-SSIM (`encode_for_ms_ssim`), found by actually encoding; and what
`imgcomp encode` codes with (`load_candidates`, `encode_image`).

The settings are models ordered by rate (e.g. the shipped low, med, hi), each plain or, with
refinement steps, refined at its own rate (imgcomp.evaluation.refinement: a better image at
about the same rate, so a refined model replaces its plain self). They are bisected on their
real files: log2(settings) + 1 encodings. Refinement does not move a model's rate far enough
to fill the gaps between models (docs/refinement.md), so the budget is met by model choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from imgcomp.checkpoints import zoo
from imgcomp.checkpoints.log_dirs import CheckpointError, ckpt_dir_of, read_configs
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.config.parsing import Config
from imgcomp.evaluation.quality import ms_ssim_uint8
from imgcomp.evaluation.refinement import refined_symbols


class RateControlError(ValueError):
    """No setting meets the budget or the quality floor."""


class Candidate(NamedTuple):
    name: str
    model: ImageCodec
    ae_cfg: Config  # the model's ae config: the objective of refinement


class Encoded(NamedTuple):
    setting: str  # the candidate's name, with the refinement if any
    data: bytes  # the file
    bpp: float  # its real size, header included, per pixel
    ms_ssim: float | None  # of the decoded image, where it was asked for


def load_candidates(model: str | None, step: int = -1, device: torch.device | str = "cpu",
                    choose: bool = False) -> list[Candidate]:
    """The candidates `imgcomp encode` codes with: the model `model` names (see zoo.find) alone
    or, with none, the default model, or with `choose` (rate control) the shipped models in
    rate order. CheckpointError if a model cannot be loaded or none is installed."""
    if model or not choose:
        known_models = [zoo.find(model or zoo.DEFAULT_MODEL)]
    else:
        known_models = sorted(zoo.shipped_models(), key=lambda m: m.shipped.kodak_bpp)
        if not known_models:
            raise CheckpointError(f"rate control chooses among the shipped models, and none "
                                  f"is installed in {zoo.shipped_models_dir()}")
    return [Candidate(known.name, zoo.load_model(known, step, device),
                      read_configs(ckpt_dir_of(known.log_dir))[0]) for known in known_models]


def encode_image(image: np.ndarray, candidates: Sequence[Candidate], refine_steps: int = 0,
                 max_bpp: float | None = None, min_ms_ssim: float | None = None,
                 progress: bool = False) -> Encoded:
    """One image's file: within `max_bpp` (encode_within_bpp), of at least `min_ms_ssim`
    (encode_for_ms_ssim), or else with the first candidate; refined with `refine_steps`."""
    if max_bpp is not None:
        return encode_within_bpp(image, candidates, max_bpp, refine_steps, progress)
    if min_ms_ssim is not None:
        return encode_for_ms_ssim(image, candidates, min_ms_ssim, refine_steps, progress)
    return encode_with(candidates[0], image, refine_steps, progress=progress)


def encode_with(candidate: Candidate, image: np.ndarray, refine_steps: int = 0,
                quality: bool = False, progress: bool = False) -> Encoded:
    """Encode an H x W x 3 uint8 image with one candidate, plainly or refined for
    `refine_steps` steps; with `quality`, measure the decoded image's MS-SSIM too."""
    model = candidate.model
    h, w = image.shape[:2]
    symbols = refined_symbols(model, image, candidate.ae_cfg, refine_steps, progress)
    data, _ = model.encode_symbols(symbols, h, w)
    score = ms_ssim_uint8(image, model.reconstruct(symbols, h, w)) if quality else None
    setting = candidate.name + (f" refined ({refine_steps} steps)" if refine_steps else "")
    return Encoded(setting, data, 8 * len(data) / (h * w), score)


def _last_true(predicate: Callable[[int], bool], count: int) -> int:
    """The largest i < count with predicate(i), for a predicate true up to some index and
    false after it (-1 if it is true nowhere), in at most log2(count) + 1 calls."""
    low, high = -1, count
    while high - low > 1:
        mid = (low + high) // 2
        if predicate(mid):
            low = mid
        else:
            high = mid
    return low


class _Encodings:
    """The encodings of one image by candidate index, each made once, when first asked for."""

    def __init__(self, image: np.ndarray, candidates: Sequence[Candidate], refine_steps: int,
                 quality: bool, progress: bool) -> None:
        self.done: dict[int, Encoded] = {}
        self.make = lambda i: encode_with(candidates[i], image, refine_steps, quality,
                                          progress)

    def __call__(self, i: int) -> Encoded:
        if i not in self.done:
            self.done[i] = self.make(i)
        return self.done[i]


def encode_within_bpp(image: np.ndarray, candidates: Sequence[Candidate], max_bpp: float,
                      refine_steps: int = 0, progress: bool = False) -> Encoded:
    """The file of the highest rate not above `max_bpp` (real size, header included) among
    the candidates (ordered by rate; refined with `refine_steps`); RateControlError if even
    the lowest exceeds it."""
    encoded = _Encodings(image, candidates, refine_steps, False, progress)
    fits = _last_true(lambda i: encoded(i).bpp <= max_bpp, len(candidates))
    if fits < 0:
        lowest = encoded(0)
        raise RateControlError(f"even the lowest setting ({lowest.setting}) needs "
                               f"{lowest.bpp:.4f} bpp, over the budget of {max_bpp:g} bpp")
    return encoded(fits)


def encode_for_ms_ssim(image: np.ndarray, candidates: Sequence[Candidate], min_ms_ssim: float,
                       refine_steps: int = 0, progress: bool = False) -> Encoded:
    """The file of the lowest rate whose decoded image has an MS-SSIM of at least
    `min_ms_ssim` among the candidates (ordered by rate; refined with `refine_steps`);
    RateControlError if even the highest falls short."""
    encoded = _Encodings(image, candidates, refine_steps, True, progress)
    first = _last_true(lambda i: encoded(i).ms_ssim < min_ms_ssim, len(candidates)) + 1
    if first == len(candidates):
        highest = encoded(len(candidates) - 1)
        raise RateControlError(f"even the highest setting ({highest.setting}) reaches only "
                               f"MS-SSIM {highest.ms_ssim:.4f}, below {min_ms_ssim:g}")
    return encoded(first)
