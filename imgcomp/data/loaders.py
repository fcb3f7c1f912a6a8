"""Training data: crops of image files or TFRecords, batched by DataLoaders.

A dataset spec (as in the original train.py) is one of

- ``imgnet_train`` / ``imgnet_test``: TFRecords ``$RECORDS_ROOT/train/*.tfrecord`` resp.
  ``$RECORDS_ROOT/val/*.tfrecord``; each record is a tf.train.Example whose bytes feature
  ``image/encoded`` holds an encoded image (write them with ``python -m imgcomp.data.records``);
- a glob of image files (``'imgs/*.png'``, ``**`` recursive), any format Pillow reads;
- a directory: the images in it (see ``imgcomp.base.image_files.IMAGE_EXTENSIONS``), sorted.

``make_loader`` yields float32 batches N x 3 x H x W with values in [0, 255]. Every iteration
over a loader is a new epoch: new order and new random crops, reproducible from the seed.
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from google.protobuf.message import DecodeError
from tfrecord import example_pb2
from tfrecord.reader import tfrecord_iterator
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from imgcomp.base.image_files import DatasetError, ImageReadError, read_image, resolve_image_paths
from imgcomp.data.tfrecord_files import FEATURE_KEY, DataWarning, count_tfrecords

# Spec name -> subdirectory of $RECORDS_ROOT.
RECORDS_SPECS = {"imgnet_train": "train", "imgnet_test": "val"}
# Records are read sequentially, so train-time shuffling needs a buffer; a few hundred encoded
# images (~30 MB for ImageNet) per worker mixes well enough.
SHUFFLE_BUFFER_SIZE = 256


def _crop(
    img: np.ndarray,
    crop_hw: tuple[int, int],
    rng: np.random.Generator | None,
    name: str,
    warned: set[str],
    flip: bool = False,
) -> np.ndarray:
    """Random crop (and with `flip` a random left-right flip) if `rng` is given, else centre
    crop; pads small images by edge replication."""
    h, w = img.shape[:2]
    ch, cw = crop_hw
    if h < ch or w < cw:
        if name not in warned:
            warned.add(name)
            warnings.warn(
                f"image {name} ({w}x{h}) is smaller than the crop ({cw}x{ch}); padding it",
                DataWarning,
                stacklevel=3,
            )
        img = np.pad(img, ((0, max(ch - h, 0)), (0, max(cw - w, 0)), (0, 0)), mode="edge")
        h, w = img.shape[:2]
    if rng is None:
        y, x = (h - ch) // 2, (w - cw) // 2
    else:
        y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    crop = img[y : y + ch, x : x + cw]
    if flip and rng is not None and rng.random() < 0.5:  # left-right, as the original
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _collate(crops: list[np.ndarray]) -> torch.Tensor:
    # Runs in the workers, so the main process receives ready float32 NCHW batches.
    batch = np.stack(crops).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(batch)).float()


class _ImageFileDataset(Dataset):
    """Crops of image files; items are keyed by (index, epoch) to make crops reproducible."""

    def __init__(self, paths: list[Path], crop_hw: tuple[int, int], train: bool, seed: int,
                 flip: bool = False):
        self.paths = paths
        self.crop_hw = crop_hw
        self.train = train
        self.seed = seed
        self.flip = flip
        # Per process: every worker warns once about each bad or small file.
        self._bad: set[int] = set()
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int, int]) -> np.ndarray:
        index, epoch, repeat = key
        n = len(self.paths)
        # An unreadable file is replaced by the next readable one, so batches stay full.
        for candidate in ((index + k) % n for k in range(n)):
            if candidate in self._bad:
                continue
            try:
                img = read_image(self.paths[candidate])
            except ImageReadError as exc:
                self._bad.add(candidate)
                warnings.warn(f"{exc}; skipping it", DataWarning, stacklevel=2)
                continue
            seed = (self.seed, epoch, index) + ((repeat,) if repeat else ())
            rng = np.random.default_rng(seed) if self.train else None
            return _crop(img, self.crop_hw, rng, str(self.paths[candidate]), self._warned,
                         self.flip)
        raise DatasetError(f"none of the {n} image files can be read (first: {self.paths[0]})")


class _EpochSampler(Sampler[tuple[int, int, int]]):
    """Yields (index, epoch, repeat) keys for one rank.

    Train: a fresh permutation per epoch, cut to an equal share per rank (like
    DistributedSampler with drop_last) so that DDP ranks run the same number of steps. A set
    too small for `min_items` per rank is drawn again (repeat 1, 2, ...: other crops), as the
    original's input queue repeats images to fill a batch.
    Test: every world_size-th image in file order.
    """

    def __init__(self, num_items: int, *, shuffle: bool, seed: int, rank: int, world_size: int,
                 min_items: int = 0):
        self.num_items = num_items
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.min_items = min_items
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _keys(self) -> list[tuple[int, int, int]]:
        if not self.shuffle:
            return [(i, self.epoch, 0) for i in range(self.rank, self.num_items, self.world_size)]
        rng = np.random.default_rng((self.seed, self.epoch))
        orders = [rng.permutation(self.num_items)]
        while len(orders) * self.num_items // self.world_size < self.min_items:
            orders.append(rng.permutation(self.num_items))
        keys = [(int(i), self.epoch, r) for r, order in enumerate(orders) for i in order]
        share = len(keys) // self.world_size
        return keys[self.rank : share * self.world_size : self.world_size]

    def __len__(self) -> int:
        return len(self._keys())

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return iter(self._keys())


# A part of a TFRecord file: records whose index i satisfies i % step == offset.
_Shard = tuple[Path, int, int]


def _split(shards: list[_Shard], index: int, count: int) -> list[_Shard]:
    """Part `index` of `count` disjoint parts: whole files if there are enough, else records."""
    if len(shards) >= count:
        return shards[index::count]
    return [(path, step * count, offset + step * index) for path, step, offset in shards]


def _shuffle_buffer(items: Iterable, rng: np.random.Generator, size: int) -> Iterator:
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


class _RecordDataset(IterableDataset):
    """Crops of the images in TFRecord files, split across ranks and DataLoader workers."""

    def __init__(
        self,
        files: list[Path],
        crop_hw: tuple[int, int],
        *,
        train: bool,
        seed: int,
        rank: int,
        world_size: int,
        feature_key: str = FEATURE_KEY,
        flip: bool = False,
        min_items: int = 0,
    ):
        self.files = files
        self.crop_hw = crop_hw
        self.train = train
        self.flip = flip
        # Crops per epoch at least (passes repeat when the records are fewer), as the
        # original's input queue repeats images to fill a batch.
        self.min_items = min_items
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.feature_key = feature_key
        # In shared memory so that persistent workers see the epoch set by the main process.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        # Per process: every worker warns once about each bad or small record.
        self._bad: set[str] = set()
        self._warned: set[str] = set()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def _shards(self, epoch: int, worker_id: int, num_workers: int) -> list[_Shard]:
        files = self.files
        if self.train:
            # Same order on every rank and worker (seeded by epoch only), so parts stay disjoint.
            order = np.random.default_rng((self.seed, epoch)).permutation(len(files))
            files = [files[i] for i in order]
        shards = [(path, 1, 0) for path in files]
        shards = _split(shards, self.rank, self.world_size)
        return _split(shards, worker_id, num_workers)

    def _skip(self, name: str, reason: str) -> None:
        self._bad.add(name)
        warnings.warn(f"skipping record {name}: {reason}", DataWarning, stacklevel=3)

    def _records(self, shards: list[_Shard]) -> Iterator[tuple[str, bytes]]:
        for path, step, offset in shards:
            for i, raw in enumerate(tfrecord_iterator(str(path))):
                name = f"{path}#{i}"
                if i % step != offset or name in self._bad:
                    continue
                example = example_pb2.Example()
                try:
                    example.ParseFromString(raw)
                except DecodeError as exc:
                    self._skip(name, str(exc))
                    continue
                values = example.features.feature[self.feature_key].bytes_list.value
                if len(values) != 1:
                    self._skip(name, f"no single bytes feature {self.feature_key!r}")
                    continue
                yield name, values[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = int(self._epoch)
        rng = np.random.default_rng((self.seed, epoch, self.rank, worker_id))
        count = 0
        while True:
            records = self._records(self._shards(epoch, worker_id, num_workers))
            if self.train:
                records = _shuffle_buffer(records, rng, SHUFFLE_BUFFER_SIZE)
            for name, data in records:
                try:
                    img = read_image(data, name=name)
                except ImageReadError as exc:
                    self._skip(name, str(exc))
                    continue
                count += 1
                yield _crop(img, self.crop_hw, rng if self.train else None, name,
                            self._warned, self.flip)
            if count == 0 or count >= self.min_items:
                return


class EpochDataLoader(DataLoader):
    """A DataLoader whose every iteration is the next epoch (new order and crops).

    Call ``set_epoch(e)`` to make the next iteration epoch ``e`` (e.g. when resuming).
    """

    def __init__(self, dataset: Dataset, *, epoch_target: _EpochSampler | _RecordDataset, **kw):
        super().__init__(dataset, **kw)
        self._epoch_target = epoch_target
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        self._epoch_target.set_epoch(self._next_epoch)
        self._next_epoch += 1
        batches = super().__iter__()
        if isinstance(self.dataset, IterableDataset):
            # Workers skip unreadable records; without this check an all-corrupt record set
            # would give empty epochs and a training loop over epochs would spin forever.
            return self._nonempty(batches)
        return batches

    @staticmethod
    def _nonempty(batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise DatasetError(
                "an epoch gave no batch: too few readable images for one batch (see warnings)"
            )


def _record_files(spec: str) -> list[Path]:
    root = os.environ.get("RECORDS_ROOT")
    subdir = RECORDS_SPECS[spec]
    if not root:
        raise DatasetError(
            f"dataset {spec!r} needs the environment variable RECORDS_ROOT "
            f"(TFRecords are read from $RECORDS_ROOT/{subdir}/*.tfrecord)"
        )
    pattern = Path(os.path.expanduser(root), subdir, "*.tfrecord")
    # Hidden files are temporaries of a records write that was killed (imgcomp.base.atomic).
    files = sorted(p for p in pattern.parent.glob(pattern.name) if not p.name.startswith("."))
    if not files:
        raise DatasetError(f"dataset {spec!r}: no files match {pattern} (from RECORDS_ROOT)")
    return files


def make_loader(
    spec: str,
    crop_size: Sequence[int],
    batch_size: int,
    *,
    train: bool,
    num_workers: int = 2,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    flip: bool = False,
) -> tuple[EpochDataLoader, int]:
    """A loader of float32 N x 3 x H x W batches in [0, 255], and the number of images.

    crop_size is (H, W). train=True: random crops, shuffled, full batches only, a new epoch on
    every iteration (``loader.set_epoch(e)`` picks the next one, e.g. when resuming).
    train=False: centre crops in file order, last batch may be smaller.
    rank/world_size: this rank's disjoint part of the data. The image count is that of the
    whole dataset, not of this rank's part. flip: random left-right flips of training crops.
    A training set with fewer images than a batch per rank repeats them (other crops).
    """
    crop_hw = (int(crop_size[0]), int(crop_size[1]))
    if min(crop_hw) < 1 or batch_size < 1 or num_workers < 0 or seed < 0:
        raise ValueError(
            f"invalid loader arguments: crop_size={crop_hw}, batch_size={batch_size}, "
            f"num_workers={num_workers}, seed={seed}"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world_size {world_size}")

    dataset: Dataset
    if spec in RECORDS_SPECS:
        files = _record_files(spec)
        num_images = sum(count_tfrecords(f) for f in files)
        if num_images == 0:
            raise DatasetError(
                f"dataset {spec!r}: the files {files[0].parent}/*.tfrecord are empty"
            )
        dataset = _RecordDataset(
            files, crop_hw, train=train, seed=seed, rank=rank, world_size=world_size,
            flip=flip, min_items=batch_size if train else 0,
        )
        epoch_target: _EpochSampler | _RecordDataset = dataset
        sampler = None
        if train:
            # Each worker batches its own part of the records (drop_last): a worker with
            # fewer records than a batch would yield nothing.
            num_workers = min(num_workers, num_images // world_size // batch_size)
    else:
        paths = resolve_image_paths(spec)
        num_images = len(paths)
        dataset = _ImageFileDataset(paths, crop_hw, train, seed, flip)
        sampler = epoch_target = _EpochSampler(
            num_images, shuffle=train, seed=seed, rank=rank, world_size=world_size,
            min_items=batch_size if train else 0,
        )

    loader = EpochDataLoader(
        dataset,
        epoch_target=epoch_target,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        collate_fn=_collate,
        # Workers keep their once-per-file warnings and skip start-up at each epoch.
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        # Worker seeds (torch's base seed + worker id) then follow from seed and epoch, and
        # iterating does not draw from the global torch RNG.
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_ignore_sigterm if num_workers > 0 else None,
    )
    return loader, num_images


def _ignore_sigterm(worker_id: int) -> None:
    # A SIGTERM to the whole process group (kill -- -PGID, job schedulers) must not kill the
    # workers under the training loop: the main process stops, checkpoints and ends them.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
