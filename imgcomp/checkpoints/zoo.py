"""The model registry: the shipped models by name (low, med, hi), and every model a name, job
id, log dir or weights fingerprint can refer to.

Known models, in lookup order: the shipped ones (the table below, in `shipped_models_dir()`),
then the log dirs under the roots of `$IMGCOMP_MODELS` (os.pathsep-separated; each root is a
log dir or holds log dirs, i.e. folders with a ckpts/ holding a checkpoint), under the
user's models folder (`user_models_dir()`, where `imgcomp models --download authors` puts the
authors' release unless $IMGCOMP_MODELS is set) and under the working directory's `logs/`
(train.py's default log dir root). The authors' three models (original log dirs of the job ids
in AUTHORS) are known by the original README's labels A, B, C too. `find` also takes the path
of any log dir, or LOG_DIR_ROOT/JOB_ID. A compressed file's header carries its model's
fingerprint, so `find_all_by_fingerprint` picks the models that decode it (several if they
hold identical weights).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgcomp.base.installed_files import installed_files_root
from imgcomp.base.user_dirs import user_cache_dir
from imgcomp.checkpoints.fingerprints import fingerprint_of
from imgcomp.checkpoints.log_dirs import (
    CKPTS_DIRNAME,
    DEFAULT_LOG_DIR_ROOT,
    CheckpointError,
    ckpt_dir_of,
    find_log_dir,
    job_id_of,
    list_checkpoints,
    load_codec,
)
from imgcomp.original.tf_log_dirs import is_tf_ckpt_dir

# torch is imported where a model is loaded: listing and finding models (`imgcomp models`,
# `imgcomp info`) answer without it.
if TYPE_CHECKING:
    import torch

    from imgcomp.codec.image_codec import ImageCodec

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
# The shipped model used when none is named.
DEFAULT_MODEL = "med"


@dataclass(frozen=True)
class AuthorsModel:
    """One of the models the original's authors released (ckpts.tar.gz), as the original
    README lists it: its label in the README's plot, its job id, and its Kodak numbers (the
    context model's bpp estimate, as val.py prints by default). No fingerprint: it is computed
    from the downloaded weights."""
    label: str
    job_id: str
    configs: str
    kodak_bpp: float
    kodak_ms_ssim: float


AUTHORS = (
    AuthorsModel("A", "0515_1103", "cvpr/low + cvpr/res_shallow", 0.370, 0.975),
    AuthorsModel("B", "0515_1309", "cvpr/med + cvpr/res_shallow", 0.677, 0.987),
    AuthorsModel("C", "0515_1310", "cvpr/hi + cvpr/res_shallow", 1.051, 0.992),
)


@dataclass(frozen=True)
class KnownModel:
    """A model the registry can load: a shipped one (`shipped` set), one of the authors'
    (`authors` set) or any log dir."""
    name: str  # the shipped name, the authors' label, else the job id
    log_dir: Path
    shipped: ShippedModel | None = None
    authors: AuthorsModel | None = None

    @property
    def job_id(self) -> str:
        return job_id_of(self.log_dir)

    @property
    def fingerprint(self) -> str:
        """Hex fingerprint of the latest checkpoint's weights (for a log dir that is not
        shipped, loaded once: see imgcomp.checkpoints.fingerprints)."""
        if self.shipped is not None:
            return self.shipped.fingerprint
        return fingerprint_of(self.log_dir)


def shipped_models_dir() -> Path:
    """The folder holding the shipped models' log dirs; the one place that says where shipped
    models are: ckpts/ of the checkout or of the wheel's installed files."""
    return installed_files_root() / "ckpts"


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


def user_models_dir() -> Path:
    """The user's models folder, always searched: `models/` in the user's cache dir."""
    return user_cache_dir() / "models"


def models_search_path() -> list[Path]:
    """The roots searched for log dirs: those of $IMGCOMP_MODELS, then user_models_dir(), then
    the working directory's `logs` (train.py's default --log_dir_root: a model just trained is
    known by its job id)."""
    roots = [Path(r).expanduser()
             for r in os.environ.get(MODELS_PATH_ENV, "").split(os.pathsep) if r]
    return list(dict.fromkeys([*roots, user_models_dir(), Path(DEFAULT_LOG_DIR_ROOT)]))


def search_path_models() -> list[KnownModel]:
    """The log dirs under the roots of models_search_path(), in root order, each sorted by
    name; missing roots are skipped (as in $PATH), a log dir reached twice is listed once."""
    models, seen = [], set()
    for root in models_search_path():
        if _has_checkpoint(root):
            candidates = [root]
        elif root.is_dir():
            candidates = sorted(p for p in root.iterdir() if p.is_dir() and _has_checkpoint(p))
        else:
            continue
        for log_dir in candidates:
            if log_dir.resolve() not in seen:
                seen.add(log_dir.resolve())
                models.append(_log_dir_model(log_dir))
    return models


def authors_models() -> dict[str, KnownModel]:
    """The authors' models found on the search path, by label."""
    return {m.name: m for m in search_path_models() if m.authors is not None}


def known_models() -> list[KnownModel]:
    """The shipped models, then the log dirs of the search path (a shipped one reached on
    the search path too is listed once)."""
    return list(dict.fromkeys(shipped_models() + search_path_models()))


def _log_dir_model(log_dir: Path) -> KnownModel:
    """The KnownModel of a log dir (or its ckpts/): the shipped entry if it is a shipped one."""
    ckpt_dir = ckpt_dir_of(log_dir).resolve()
    for model in shipped_models():
        if ckpt_dir_of(model.log_dir).resolve() == ckpt_dir:
            return model
    log_dir = ckpt_dir.parent if ckpt_dir.name == CKPTS_DIRNAME else ckpt_dir
    job_id = job_id_of(log_dir)
    if is_tf_ckpt_dir(ckpt_dir):  # the job ids of the release are the authors' only there
        for row in AUTHORS:
            if row.job_id == job_id:
                return KnownModel(row.label, log_dir, authors=row)
    return KnownModel(job_id, log_dir)


def _describe(models: list[KnownModel]) -> str:
    """The models' names (a job id for a log dir not shipped): no weights are loaded."""
    return ", ".join(m.name for m in models) or "none"


def _searched() -> str:
    """Where models are looked for, for error messages: the folders, missing ones marked."""
    unset = "" if os.environ.get(MODELS_PATH_ENV) else f"${MODELS_PATH_ENV} unset; "
    folders = [shipped_models_dir(), *models_search_path()]
    return unset + ", ".join(f"{f}{'' if f.is_dir() else ' (missing)'}" for f in folders)


def _job_in_root(spec: str) -> KnownModel:
    """The model of `LOG_DIR_ROOT/JOB_ID` (as val.py takes a job): the one log dir of that
    job id in that folder."""
    path = Path(spec).expanduser()
    if not path.parent.is_dir():
        raise UnknownModelError(f"no model {spec!r}: neither a log dir nor LOG_DIR_ROOT/JOB_ID "
                                f"(no folder {path.parent})")
    try:
        return _log_dir_model(find_log_dir(path.parent, path.name))
    except CheckpointError as e:
        jobs = sorted(job_id_of(p) for p in path.parent.iterdir() if (p / CKPTS_DIRNAME).is_dir())
        raise UnknownModelError(f"no model {spec!r}: {e} (jobs there: "
                                f"{', '.join(jobs) or 'none'})") from None


def find(spec: str | os.PathLike) -> KnownModel:
    """The model named by `spec`: a shipped name, a log dir path (or its ckpts/),
    LOG_DIR_ROOT/JOB_ID (as val.py takes a job), or a job id or hex fingerprint (16 digits) of
    a known model; UnknownModelError if none, naming where it looked."""
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
    if any(sep and sep in spec_text for sep in (os.sep, os.altsep)):
        return _job_in_root(spec_text)
    known = known_models()
    for model in known:
        if model.job_id == spec_text or (model.authors and model.name == spec_text):
            return model
    if spec_text in {row.label for row in AUTHORS}:
        raise UnknownModelError(f"the authors' model {spec_text!r} is not installed: "
                                "`imgcomp models --download authors` fetches it")
    if _FINGERPRINT_RE.fullmatch(spec_text):
        for model in known:
            if model.fingerprint == spec_text.lower():
                return model
    raise UnknownModelError(f"no model {spec_text!r}: not a shipped name, a log dir, "
                            f"LOG_DIR_ROOT/JOB_ID, or the job id or fingerprint of a known model "
                            f"(known: {_describe(known)}; looked in {_searched()}; more with "
                            f"${MODELS_PATH_ENV}; `imgcomp models` lists them)")


def find_all_by_fingerprint(fingerprint: bytes) -> list[KnownModel]:
    """The known models whose weights have this fingerprint, in lookup order: several when
    log dirs hold identical weights (the same seed and steps), which decode alike.
    UnknownModelError naming the fingerprint and the known models if none."""
    wanted = fingerprint.hex()
    known = known_models()
    matches = [model for model in known if model.fingerprint == wanted]
    if not matches:
        raise UnknownModelError(f"no known model has fingerprint {wanted} (known: "
                                f"{_describe(known)}; `imgcomp models` lists their "
                                f"fingerprints); name its log dir as the model, or add the "
                                f"folder holding it to ${MODELS_PATH_ENV}")
    return matches


def find_by_fingerprint(fingerprint: bytes) -> KnownModel:
    """The first known model with this fingerprint (see find_all_by_fingerprint)."""
    return find_all_by_fingerprint(fingerprint)[0]


def load_model(model: str | os.PathLike | KnownModel, step: int = -1,
               device: torch.device | str = "cpu") -> ImageCodec:
    """A model (a shipped name, a log dir or its ckpts/, or a known job id or fingerprint: see
    `find`; or a KnownModel already found) at checkpoint `step` (-1: latest), in eval mode,
    ready to compress and decompress."""
    import torch

    known = model if isinstance(model, KnownModel) else find(model)
    return load_codec(ckpt_dir_of(known.log_dir), step, torch.device(device))
