"""The model registry: the shipped models by name (low, med, hi), and every model a name, job
id, log dir or weights fingerprint can refer to.

Known models, in lookup order: the shipped ones (the table below, in `shipped_models_dir()`),
then the log dirs under the roots of `$IMGCOMP_MODELS` (os.pathsep-separated; each root is a
log dir or holds log dirs, i.e. folders with a ckpts/ holding a checkpoint). `find` also takes
the path of any log dir. A compressed file's header carries its model's fingerprint, so
`find_by_fingerprint` picks the model that decodes it.
"""

from __future__ import annotations

import functools
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from imgcomp.checkpoints.log_dirs import (
    CKPTS_DIRNAME,
    CheckpointError,
    checkpoint_path,
    ckpt_dir_of,
    find_log_dir,
    job_id_of,
    list_checkpoints,
    load_codec,
)
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.entropy_coding.bitstream import model_fingerprint

MODELS_PATH_ENV = "IMGCOMP_MODELS"
# A fingerprint as `find` takes it: the hex of bitstream.model_fingerprint's 8 bytes. Only such
# a spec is matched against fingerprints, which loads every non-shipped model's weights.
_FINGERPRINT_RE = re.compile(r"[0-9a-fA-F]{16}")


class UnknownModelError(CheckpointError):
    """No known model has this name, job id, path or fingerprint."""


@dataclass(frozen=True)
class ShippedModel:
    """A row of the table: the fingerprint and Kodak means (ckpts/<job> kodak/measures.csv,
    24 images, the context model's bpp estimate) are committed so a lookup loads no weights;
    tests/test_zoo.py checks them against the weights and the CSV."""
    name: str
    job_id: str
    fingerprint: str  # hex of bitstream.model_fingerprint at the shipped (latest) checkpoint
    configs: str  # "<ae config> + <pc config>", as in the log dir name
    kodak_bpp: float
    kodak_ms_ssim: float

    @property
    def description(self) -> str:
        return (f"{self.configs}; Kodak {self.kodak_bpp:.4f} bpp, "
                f"MS-SSIM {self.kodak_ms_ssim:.4f}")


SHIPPED = (
    ShippedModel("low", "1126_0305_1", "a7c36926f8c5f1cd", "gpu/low + gpu/res_shallow",
                 0.3858, 0.9613),
    ShippedModel("med", "1126_0305_2", "5c098c516fd7b8df", "gpu/med + gpu/res_shallow",
                 0.6148, 0.9737),
    ShippedModel("hi", "1126_0507_2", "09f9f062bba32a7f",
                 "gpu/hi_long_c192 + gpu/res_shallow_long", 0.9652, 0.9836),
)


@dataclass(frozen=True)
class KnownModel:
    """A model the registry can load: a shipped one (`shipped` set) or any log dir."""
    name: str  # the shipped name, else the job id
    log_dir: Path
    shipped: ShippedModel | None = None

    @property
    def job_id(self) -> str:
        return job_id_of(self.log_dir)

    @property
    def fingerprint(self) -> str:
        """Hex fingerprint of the latest checkpoint's weights (loaded once per process for a
        log dir that is not shipped)."""
        if self.shipped is not None:
            return self.shipped.fingerprint
        return fingerprint_of(self.log_dir)


def shipped_models_dir() -> Path:
    """The folder holding the shipped models' log dirs; the one place that says where shipped
    models are. In a checkout (or an editable install) the repository's ckpts/; else the copy
    a wheel installed (pyproject.toml's data-files: share/imgcomp/ckpts under the install
    scheme's data path, i.e. the venv or sys.prefix, or the user base after `--user`)."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "ckpts").is_dir():
        return checkout / "ckpts"
    installed = [Path(sysconfig.get_path("data", scheme), "share", "imgcomp", "ckpts")
                 for scheme in (sysconfig.get_default_scheme(),
                                sysconfig.get_preferred_scheme("user"))]
    return next((path for path in installed if path.is_dir()), installed[0])


def shipped_models() -> list[KnownModel]:
    """The shipped models present on disk, in table order."""
    root = shipped_models_dir()
    models = []
    for row in SHIPPED:
        try:
            models.append(KnownModel(row.name, find_log_dir(root, row.job_id), row))
        except CheckpointError:  # not installed
            continue
    return models


def _has_checkpoint(path: Path) -> bool:
    return (path / CKPTS_DIRNAME).is_dir() and bool(list_checkpoints(path / CKPTS_DIRNAME))


def search_path_models() -> list[KnownModel]:
    """The log dirs under the roots of $IMGCOMP_MODELS, in root order, each sorted by name;
    missing roots are skipped (as in $PATH)."""
    models = []
    for root in filter(None, os.environ.get(MODELS_PATH_ENV, "").split(os.pathsep)):
        root = Path(root).expanduser()
        if _has_checkpoint(root):
            candidates = [root]
        elif root.is_dir():
            candidates = sorted(p for p in root.iterdir() if p.is_dir() and _has_checkpoint(p))
        else:
            continue
        models += [_log_dir_model(p) for p in candidates]
    return models


def known_models() -> list[KnownModel]:
    """The shipped models, then the $IMGCOMP_MODELS log dirs."""
    return shipped_models() + search_path_models()


def _log_dir_model(log_dir: Path) -> KnownModel:
    """The KnownModel of a log dir (or its ckpts/): the shipped entry if it is a shipped one."""
    ckpt_dir = ckpt_dir_of(log_dir).resolve()
    for model in shipped_models():
        if ckpt_dir_of(model.log_dir).resolve() == ckpt_dir:
            return model
    log_dir = ckpt_dir.parent if ckpt_dir.name == CKPTS_DIRNAME else ckpt_dir
    return KnownModel(job_id_of(log_dir), log_dir)


@functools.cache
def _fingerprint_of_checkpoint(ckpt_dir: str, step: int, ckpt_file: str, mtime_ns: int) -> str:
    # ckpt_file and mtime_ns key the cache: a newer latest checkpoint is loaded anew.
    return model_fingerprint(load_codec(ckpt_dir, step)).hex()


def fingerprint_of(log_dir: str | os.PathLike, step: int = -1) -> str:
    """Hex fingerprint of a log dir's checkpoint at `step` (-1: latest), by loading it; cached
    per process (per checkpoint file and modification time)."""
    ckpt_dir = ckpt_dir_of(log_dir).resolve()
    ckpt = checkpoint_path(ckpt_dir, step)
    return _fingerprint_of_checkpoint(str(ckpt_dir), step, str(ckpt), ckpt.stat().st_mtime_ns)


def _describe(models: list[KnownModel]) -> str:
    """The models' names (a job id for a log dir not shipped): no weights are loaded."""
    return ", ".join(m.name for m in models) or "none"


def find(spec: str | os.PathLike) -> KnownModel:
    """The model named by `spec`: a shipped name, a log dir path (or its ckpts/), a job id or a
    hex fingerprint (16 digits) of a known model; UnknownModelError if none."""
    spec_text = os.fspath(spec)
    shipped = shipped_models()
    for model in shipped:
        if model.name == spec_text:
            return model
    if spec_text in {row.name for row in SHIPPED}:
        raise UnknownModelError(f"the shipped model {spec_text!r} is not installed in "
                                f"{shipped_models_dir()}")
    if Path(spec_text).expanduser().is_dir():
        return _log_dir_model(Path(spec_text).expanduser())
    known = shipped + search_path_models()
    for model in known:
        if model.job_id == spec_text:
            return model
    if _FINGERPRINT_RE.fullmatch(spec_text):
        for model in known:
            if model.fingerprint == spec_text.lower():
                return model
    raise UnknownModelError(f"no model {spec_text!r}: not a shipped name, a log dir, or the job "
                            f"id or fingerprint of a known model (known: {_describe(known)}; "
                            f"more with ${MODELS_PATH_ENV}; `imgcomp models` lists them)")


def find_by_fingerprint(fingerprint: bytes) -> KnownModel:
    """The known model whose weights have this fingerprint (shipped ones first, loading no
    weights for them); UnknownModelError naming the fingerprint and the known ones if none."""
    wanted = fingerprint.hex()
    known = known_models()
    for model in known:
        if model.fingerprint == wanted:
            return model
    raise UnknownModelError(f"no known model has fingerprint {wanted} (known: "
                            f"{_describe(known)}; `imgcomp models` lists their fingerprints); "
                            f"name its log dir as the model, or add the folder holding it to "
                            f"${MODELS_PATH_ENV}")


def load_model(model: str | os.PathLike | KnownModel, step: int = -1,
               device: torch.device | str = "cpu") -> ImageCodec:
    """A model (a shipped name, a log dir or its ckpts/, or a known job id or fingerprint: see
    `find`; or a KnownModel already found) at checkpoint `step` (-1: latest), in eval mode,
    ready to compress and decompress."""
    known = model if isinstance(model, KnownModel) else find(model)
    return load_codec(ckpt_dir_of(known.log_dir), step, torch.device(device))
