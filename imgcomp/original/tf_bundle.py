"""Read TensorFlow 1 "V2" checkpoints (tensor bundles) without TensorFlow.

A checkpoint `PREFIX` (the original code saves `ckpts/ckpt-STEP`) is

* `PREFIX.index`: a LevelDB-format SSTable (what TF's `table_builder` writes) mapping each tensor
  name to a serialized `BundleEntryProto` (dtype, shape, shard, offset, size, crc32c, slices);
  the empty key "" holds the `BundleHeaderProto` (num_shards, endianness, version);
* `PREFIX.data-SSSSS-of-NNNNN`: the raw little-endian tensor bytes, one file per shard.

The protobuf messages are a handful of scalar fields, so they are decoded by hand from the wire
format; neither TensorFlow nor generated protobuf classes are needed. Checksums (table blocks and
tensor data) are verified with the `crc32c` package when it is installed (it comes with
`tfrecord`); without it only the small index blocks are checked, by a pure-Python CRC.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

try:  # C implementation, installed as a dependency of `tfrecord`
    from crc32c import crc32c as _fast_crc32c
except ImportError:  # pragma: no cover - depends on the environment
    _fast_crc32c = None

__all__ = [
    "TFCheckpointError",
    "list_tf_checkpoints",
    "read_tf_checkpoint",
    "read_var_names",
    "tf_checkpoint_entries",
]


class TFCheckpointError(ValueError):
    """A TF checkpoint (or `var_names.pkl`) is missing, corrupt or uses an unsupported feature.

    The message is one line: `<file>: <problem>`.
    """


# --- DataType enum (tensorflow/core/framework/types.proto) ---------------------------------------

# Types whose bundle encoding is the plain little-endian element array numpy reads directly.
_NUMPY_DTYPES: dict[int, str] = {
    1: "float32",  # DT_FLOAT
    2: "float64",  # DT_DOUBLE
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    8: "complex64",
    9: "int64",
    10: "bool",  # TF stores bools as one byte each, like numpy
    17: "uint16",
    18: "complex128",
    19: "float16",  # DT_HALF
    22: "uint32",
    23: "uint64",
}
# Types numpy has no equivalent for, or whose bundle encoding is not a flat array (strings are
# varint lengths + checksum + bytes; resources/variants are serialized protos).
_UNSUPPORTED_DTYPES: dict[int, str] = {
    0: "invalid",
    7: "string",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    14: "bfloat16",
    15: "qint16",
    16: "quint16",
    20: "resource",
    21: "variant",
    24: "float8_e5m2",
    25: "float8_e4m3fn",
    26: "float8_e4m3fnuz",
    27: "float8_e4m3b11fnuz",
    28: "float8_e5m2fnuz",
    29: "int4",
    30: "uint4",
}


def _dtype_name(enum: int) -> str:
    if enum in _NUMPY_DTYPES:
        return _NUMPY_DTYPES[enum]
    if enum in _UNSUPPORTED_DTYPES:
        return _UNSUPPORTED_DTYPES[enum]
    if 100 < enum < 200:  # DT_*_REF: reference types never hold checkpoint data
        return _dtype_name(enum - 100) + "_ref"
    return f"dtype_enum_{enum}"


# --- checksums -----------------------------------------------------------------------------------

def _make_crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_CRC_TABLE: list[int] | None = None


def crc32c(data: bytes | bytearray | memoryview) -> int:
    if _fast_crc32c is not None:
        return _fast_crc32c(data)
    global _CRC_TABLE
    if _CRC_TABLE is None:
        _CRC_TABLE = _make_crc_table()
    table, crc = _CRC_TABLE, 0xFFFFFFFF
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    # LevelDB/TF store CRCs "masked" (rotated + offset) so that a CRC of data containing CRCs
    # does not degenerate; this undoes crc32c::Mask.
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --- protobuf wire format ------------------------------------------------------------------------

class _Corrupt(Exception):
    """Internal: a decoding problem; turned into a TFCheckpointError naming the file."""


def _varint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Corrupt("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Corrupt("varint longer than 10 bytes")


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a serialized message: ints for varint/fixed, bytes for LEN."""
    out: list[tuple[int, int | bytes]] = []
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise _Corrupt("truncated fixed64 field")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 5:
            if pos + 4 > end:
                raise _Corrupt("truncated fixed32 field")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Corrupt("truncated length-delimited field")
            value, pos = bytes(buf[pos:pos + n]), pos + n
        else:  # groups (3, 4) are not used by these messages
            raise _Corrupt(f"unsupported protobuf wire type {wire}")
        out.append((field, value))
    return out


def _as_int64(v: int) -> int:
    # int32/int64 fields carry negative numbers as 64-bit two's complement varints
    return v - (1 << 64) if v >= 1 << 63 else v


class _Entry:
    """The fields of a BundleEntryProto this reader uses."""

    __slots__ = ("dtype_enum", "shape", "shard_id", "offset", "size", "crc32c", "n_slices")

    def __init__(self, value: bytes) -> None:
        self.dtype_enum = 0
        self.shape: tuple[int, ...] = ()
        self.shard_id = self.offset = self.size = self.n_slices = 0
        self.crc32c: int | None = None
        for field, v in _proto_fields(value):
            if field == 1 and isinstance(v, int):
                self.dtype_enum = v
            elif field == 2 and isinstance(v, bytes):
                self.shape = _parse_shape(v)
            elif field == 3 and isinstance(v, int):
                self.shard_id = _as_int64(v)
            elif field == 4 and isinstance(v, int):
                self.offset = _as_int64(v)
            elif field == 5 and isinstance(v, int):
                self.size = _as_int64(v)
            elif field == 6 and isinstance(v, int):
                self.crc32c = v
            elif field == 7:
                self.n_slices += 1
            elif field in (1, 2, 3, 4, 5, 6):
                raise _Corrupt(f"BundleEntryProto field {field} has the wrong wire type")


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    # TensorShapeProto: repeated Dim dim = 2 (Dim: int64 size = 1, string name = 2);
    # bool unknown_rank = 3. A scalar is an empty message.
    dims = []
    for field, v in _proto_fields(buf):
        if field == 2 and isinstance(v, bytes):
            size = 0  # proto3 omits a zero size
            for f2, v2 in _proto_fields(v):
                if f2 == 1 and isinstance(v2, int):
                    size = _as_int64(v2)
            if size < 0:
                raise _Corrupt(f"unknown dimension {size} in a stored shape")
            dims.append(size)
        elif field == 3 and v:
            raise _Corrupt("stored shape has unknown rank")
    return tuple(dims)


# --- SSTable (LevelDB table format) --------------------------------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48  # two BlockHandles (varint64 offset + size), zero padded to 40, 8-byte magic
_TRAILER_LEN = 5  # after each block: compression type byte + masked crc32c of block + type


def _handle(buf: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    """A BlockHandle (varint64 offset, varint64 size) at `pos`: offset, size, position after."""
    offset, pos = _varint(buf, pos, len(buf))
    size, pos = _varint(buf, pos, len(buf))
    return offset, size, pos


def _block(data: bytes, offset: int, size: int) -> memoryview:
    """Contents of the block at `offset`, its trailer (type, checksum) checked."""
    if offset + size + _TRAILER_LEN > len(data):
        raise _Corrupt(f"block at {offset} (+{size} bytes) runs past the end of the file")
    view = memoryview(data)
    ctype = data[offset + size]
    if ctype != 0:  # 1 = snappy: TF's bundle writer never compresses
        raise _Corrupt(f"block at {offset} is compressed (type {ctype}); only raw blocks are read")
    stored = int.from_bytes(data[offset + size + 1:offset + size + 5], "little")
    # The checksum covers the contents and the type byte.
    if unmask_crc(stored) != crc32c(view[offset:offset + size + 1]):
        raise _Corrupt(f"checksum mismatch in the block at {offset}")
    return view[offset:offset + size]


def _block_entries(block: memoryview) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of a block: prefix-compressed keys, then the restart point array."""
    n = len(block)
    if n < 4:
        raise _Corrupt("block shorter than its restart count")
    num_restarts = int.from_bytes(block[n - 4:], "little")
    limit = n - 4 - 4 * num_restarts  # entries end where the restart offsets begin
    if limit < 0 or (num_restarts == 0 and n > 4):
        raise _Corrupt(f"bad restart count {num_restarts} in a block of {n} bytes")
    out: list[tuple[bytes, bytes]] = []
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, limit)
        non_shared, pos = _varint(block, pos, limit)
        value_len, pos = _varint(block, pos, limit)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise _Corrupt("bad entry lengths in a block")
        key = key[:shared] + bytes(block[pos:pos + non_shared])
        pos += non_shared
        out.append((key, bytes(block[pos:pos + value_len])))
        pos += value_len
    return out


def _table_items(data: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of an SSTable, in key order."""
    if len(data) < _FOOTER_LEN:
        raise _Corrupt(f"{len(data)} bytes is too short for a table footer ({_FOOTER_LEN})")
    magic = int.from_bytes(data[-8:], "little")
    if magic != _TABLE_MAGIC:
        raise _Corrupt(f"bad table magic {magic:#018x} (truncated or not a checkpoint index?)")
    # The footer holds the metaindex handle (unused: TF writes no filter blocks) and the index
    # handle; the index block maps a separator key per data block to that block's handle.
    _, _, pos = _handle(data, len(data) - _FOOTER_LEN)
    offset, size, _ = _handle(data, pos)
    items: list[tuple[bytes, bytes]] = []
    for _, handle in _block_entries(_block(data, offset, size)):
        offset, size, _ = _handle(handle, 0)
        items.extend(_block_entries(_block(data, offset, size)))
    return items


# --- tensor bundle -------------------------------------------------------------------------------

_TENSOR_BUNDLE_VERSION = 1  # kTensorBundleVersion of the TF writer this format description matches


class _Bundle:
    """The parsed index of a checkpoint: header fields and the entry of every full tensor."""

    def __init__(self, prefix: Path, index_path: Path, num_shards: int,
                 entries: dict[str, _Entry]) -> None:
        self.prefix = prefix
        self.index_path = index_path
        self.num_shards = num_shards
        self.entries = entries

    def data_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")


def _error(path: str | os.PathLike, problem: str) -> TFCheckpointError:
    # One line even when a nested message (OS error, pickle error) would bring its own newlines.
    return TFCheckpointError(f"{os.fspath(path)}: {' '.join(problem.split())}")


def _prefix_path(prefix: str | os.PathLike) -> Path:
    p = Path(prefix)
    # Accept the index file's own name too: "ckpt-0.index" means the checkpoint "ckpt-0".
    if p.suffix == ".index" and not Path(f"{p}.index").exists():
        p = p.with_suffix("")
    return p


def load_bundle(prefix: str | os.PathLike) -> _Bundle:
    prefix = _prefix_path(prefix)
    index_path = Path(f"{prefix}.index")
    try:
        data = index_path.read_bytes()  # small: one entry of ~40 bytes per tensor
    except FileNotFoundError:
        raise _error(index_path, "checkpoint index not found") from None
    except OSError as e:
        raise _error(index_path, f"cannot read checkpoint index ({e.strerror or e})") from None
    try:
        items = _table_items(data)
        header: list[tuple[int, int | bytes]] | None = None
        entries: dict[str, _Entry] = {}
        prev: bytes | None = None
        for key, value in items:
            if prev is not None and key <= prev:
                raise _Corrupt(f"keys out of order at {key!r}")
            prev = key
            if key == b"":
                header = _proto_fields(value)
            elif key[:1] == b"\x00":
                # Data of one slice of a partitioned tensor (an OrderedCode-encoded name+slice
                # key); its full tensor has its own entry listing the slices.
                continue
            else:
                try:
                    name = key.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Corrupt(f"tensor name {key!r} is not UTF-8") from None
                entries[name] = _Entry(value)
    except _Corrupt as e:
        raise _error(index_path, f"corrupt checkpoint index: {e}") from None
    if header is None:
        raise _error(index_path, "no bundle header (empty key); not a TF V2 checkpoint index")

    num_shards, endianness = 1, 0
    for field, v in header:
        if field == 1 and isinstance(v, int):
            num_shards = _as_int64(v)
        elif field == 2 and isinstance(v, int):
            endianness = v
        elif field == 3 and isinstance(v, bytes):
            _check_version(index_path, v)
    if endianness != 0:
        raise _error(index_path, "big-endian tensor bundle; only little-endian ones are read")
    if num_shards < 1:
        raise _error(index_path, f"bad shard count {num_shards} in the bundle header")
    for name, e in entries.items():
        if not 0 <= e.shard_id < num_shards or e.offset < 0 or e.size < 0:
            raise _error(index_path, f"tensor {name!r} has a bad location: shard {e.shard_id} "
                                     f"of {num_shards}, offset {e.offset}, size {e.size}")
    return _Bundle(prefix, index_path, num_shards, entries)


def _check_version(index_path: Path, version_def: bytes) -> None:
    # VersionDef: producer = 1, min_consumer = 2, repeated bad_consumers = 3. A reader of
    # version 1 refuses bundles that need a newer reader, as TF's own reader does.
    try:
        fields = _proto_fields(version_def)
    except _Corrupt as e:
        raise _error(index_path, f"corrupt bundle version: {e}") from None
    for field, v in fields:
        if field == 2 and isinstance(v, int) and v > _TENSOR_BUNDLE_VERSION:
            raise _error(index_path, f"bundle needs a reader of version >= {v}; this one is "
                                     f"{_TENSOR_BUNDLE_VERSION}")
        if field == 3 and v == _TENSOR_BUNDLE_VERSION:
            raise _error(index_path, f"bundle marks reader version {v} as bad")


def tf_checkpoint_entries(prefix: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype name, shape) of every tensor of checkpoint `prefix`, reading no data.

    Dtype names are numpy's (`float32`, `int64`, `bool`, ...) for the types this module reads and
    TensorFlow's (`string`, `bfloat16`, `resource`, ...) for the others. Partitioned variables
    are listed with their full shape (reading them is not supported).
    """
    bundle = load_bundle(prefix)
    return {name: (_dtype_name(e.dtype_enum), e.shape) for name, e in bundle.entries.items()}


def read_tf_checkpoint(prefix: str | os.PathLike, names: Iterable[str] | None = None, *,
                       verify: bool = True) -> dict[str, np.ndarray]:
    """The tensors of TF checkpoint `prefix` (e.g. `.../ckpts/ckpt-0`): all, or only `names`.

    Arrays have the stored dtype and shape. Only the requested tensors' bytes are read. With
    `verify` (and the `crc32c` package installed) each tensor's checksum is checked.
    Raises TFCheckpointError for a missing or corrupt file, an unknown name, an unsupported dtype
    or a partitioned (sliced) tensor.
    """
    bundle = load_bundle(prefix)
    if isinstance(names, str):  # a lone name would be iterated character by character
        names = [names]
    wanted = list(bundle.entries) if names is None else list(dict.fromkeys(names))

    # Check everything that only needs the index before opening any data file.
    plan: dict[int, list[tuple[str, _Entry, np.dtype]]] = {}
    for name in wanted:
        entry = bundle.entries.get(name)
        if entry is None:
            hint = ""
            if name.endswith(":0") and name[:-2] in bundle.entries:
                hint = f" (checkpoint keys have no ':0': use {name[:-2]!r})"
            raise _error(bundle.index_path, f"no tensor {name!r} in the checkpoint{hint}")
        if entry.n_slices:
            raise _error(bundle.index_path, f"tensor {name!r} is partitioned into "
                                            f"{entry.n_slices} slices; sliced tensors are not "
                                            "supported")
        if entry.dtype_enum not in _NUMPY_DTYPES:
            raise _error(bundle.index_path, f"tensor {name!r} has unsupported dtype "
                                            f"{_dtype_name(entry.dtype_enum)}")
        # Stored bytes are little-endian whatever the machine (header checked above).
        dtype = np.dtype(_NUMPY_DTYPES[entry.dtype_enum]).newbyteorder("<")
        expected = int(np.prod(entry.shape, dtype=np.int64)) * dtype.itemsize
        if entry.size != expected:
            raise _error(bundle.index_path, f"tensor {name!r} of shape {list(entry.shape)} "
                                            f"{dtype.name} has {entry.size} bytes, not {expected}")
        plan.setdefault(entry.shard_id, []).append((name, entry, dtype))

    arrays: dict[str, np.ndarray] = {}
    for shard, todo in sorted(plan.items()):
        path = bundle.data_path(shard)
        try:
            f = open(path, "rb")  # closed by the `with f` below
        except FileNotFoundError:
            raise _error(path, "checkpoint data shard not found") from None
        except OSError as e:
            raise _error(path, f"cannot open checkpoint data shard ({e.strerror or e})") from None
        with f:
            file_size = os.fstat(f.fileno()).st_size
            for name, entry, dtype in sorted(todo, key=lambda t: t[1].offset):  # sequential I/O
                end = entry.offset + entry.size
                if end > file_size:
                    raise _error(path, f"tensor {name!r} spans bytes {entry.offset}..{end} but "
                                       f"the file has {file_size} (truncated?)")
                f.seek(entry.offset)
                buf = bytearray(entry.size)  # writable, so the array is too
                if f.readinto(buf) != entry.size:
                    raise _error(path, f"short read of tensor {name!r}")
                if (verify and _fast_crc32c is not None and entry.crc32c is not None
                        and _fast_crc32c(buf) != unmask_crc(entry.crc32c)):
                    raise _error(path, f"checksum mismatch in tensor {name!r}")
                arr = np.frombuffer(buf, dtype=dtype).reshape(entry.shape)
                arrays[name] = arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))
    return {name: arrays[name] for name in wanted}


# --- the original code's ckpts/ dir --------------------------------------------------------------

_INDEX_RE = re.compile(r"^ckpt-(\d+)\.index$")
_DATA_RE = re.compile(r"^(ckpt-\d+)\.data-(\d{5})-of-(\d{5})$")


def list_tf_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, prefix) of every complete `ckpt-STEP` checkpoint in `ckpt_dir`, by increasing step.

    Complete means `ckpt-STEP.index` and all shards `ckpt-STEP.data-SSSSS-of-NNNNN` exist (a save
    interrupted or half-deleted by `max_to_keep` is skipped). TF's `checkpoint` text file names
    only the latest checkpoint and may be stale, so the directory listing is what counts.
    """
    ckpt_dir = Path(ckpt_dir)
    try:
        files = os.listdir(ckpt_dir)
    except OSError as e:
        raise _error(ckpt_dir, f"cannot list checkpoint dir ({e.strerror or e})") from None
    shards: dict[str, dict[int, set[int]]] = {}  # prefix name -> num_shards -> shard ids
    for f in files:
        m = _DATA_RE.match(f)
        if m:
            shards.setdefault(m[1], {}).setdefault(int(m[3]), set()).add(int(m[2]))
    out = []
    for f in files:
        m = _INDEX_RE.match(f)
        if not m:
            continue
        name = f[: -len(".index")]
        if any(ids == set(range(n)) for n, ids in shards.get(name, {}).items()):
            out.append((int(m[1]), ckpt_dir / name))
    return sorted(out)


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickles plain data only: every class/function lookup is refused.

    A list of str needs no globals, while a hostile pickle needs one (os.system, eval, ...) to
    run code, so refusing find_class makes loading untrusted `var_names.pkl` files safe.
    """

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_var_names(ckpt_dir: str | os.PathLike) -> list[str]:
    """The variable names (with `:0`) the original code pickled to `ckpt_dir/var_names.pkl`.

    `ckpt_dir` may also be the pickle file itself.
    """
    path = Path(ckpt_dir)
    if not path.is_file():
        path = path / "var_names.pkl"
    try:
        with open(path, "rb") as f:
            names = _NoGlobalsUnpickler(f).load()
    except FileNotFoundError:
        raise _error(path, "var_names.pkl not found") from None
    except OSError as e:
        raise _error(path, f"cannot read ({e.strerror or e})") from None
    except Exception as e:  # any unpickling failure: corrupt, truncated or hostile
        raise _error(path, f"not a pickled list of names ({type(e).__name__}: {e})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _error(path, f"expected a pickled list of str, got {type(names).__name__}")
    return names
