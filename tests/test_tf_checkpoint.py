"""imgcomp.original.tf_bundle: TF1 tensor-bundle checkpoints read without TensorFlow.

The first half runs anywhere, on bundles written by a small writer below (LevelDB table + raw
data shards, as TF's BundleWriter lays them out). The second half reads the checkpoint the
original TF code wrote (`$IMGCOMP_SHARED/fixtures/original_tf1`) and compares it with the values
the original dumped from the running graph.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from imgcomp.original import tf_bundle as tfc
from imgcomp.original.tf_bundle import (
    TFCheckpointError,
    list_tf_checkpoints,
    read_tf_checkpoint,
    read_var_names,
    tf_checkpoint_entries,
)

# --- a minimal tensor-bundle writer --------------------------------------------------------------

_DT = {"float32": 1, "float64": 2, "int32": 3, "uint8": 4, "int64": 9, "bool": 10, "float16": 19}
_MAGIC = 0xDB4775248B80FB57


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as two's complement, like protobuf
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _f_varint(field: int, v: int) -> bytes:
    return _varint(field << 3) + _varint(v) if v else b""  # proto3 leaves out zeros


def _f_bytes(field: int, v: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(v)) + v


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _entry_proto(dtype: int, shape: tuple[int, ...], shard: int, offset: int, size: int,
                 crc: int, n_slices: int = 0) -> bytes:
    shape_msg = b"".join(_f_bytes(2, _f_varint(1, d)) for d in shape)
    return (_f_varint(1, dtype) + _f_bytes(2, shape_msg) + _f_varint(3, shard)
            + _f_varint(4, offset) + _f_varint(5, size)
            + _varint(6 << 3 | 5) + _mask(crc).to_bytes(4, "little")
            + _f_bytes(7, b"") * n_slices)


def _block(items: list[tuple[bytes, bytes]], restart_interval: int = 2) -> bytes:
    out, restarts, prev = bytearray(), [], b""
    for i, (k, v) in enumerate(items):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(k), len(prev)) and k[shared] == prev[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(k) - shared) + _varint(len(v)) + k[shared:] + v
        prev = k
    for r in restarts or [0]:
        out += r.to_bytes(4, "little")
    return bytes(out + len(restarts or [0]).to_bytes(4, "little"))


def _table(items: list[tuple[bytes, bytes]], per_block: int = 3) -> bytes:
    out = bytearray()

    def put(block: bytes) -> bytes:  # appends block + trailer, returns its handle
        handle = _varint(len(out)) + _varint(len(block))
        out.extend(block + b"\x00" + _mask(tfc.crc32c(block + b"\x00")).to_bytes(4, "little"))
        return handle

    index = []
    for i in range(0, len(items), per_block):
        chunk = items[i:i + per_block]
        index.append((chunk[-1][0], put(_block(chunk))))  # last key separates the blocks
    meta = put(_block([]))
    footer = meta + put(_block(index, restart_interval=1))
    out += footer.ljust(40, b"\x00") + _MAGIC.to_bytes(8, "little")
    return bytes(out)


def write_bundle(prefix: Path, tensors: dict[str, np.ndarray], *, num_shards: int = 1,
                 endianness: int = 0, extra: dict[str, bytes] | None = None) -> None:
    """Write `tensors` as a TF V2 checkpoint (tensor i goes to shard i % num_shards).

    `extra`: raw BundleEntryProto values added to the index as they are.
    """
    shards = [bytearray() for _ in range(num_shards)]
    items = {b"": _f_varint(1, num_shards) + _f_varint(2, endianness) + _f_bytes(3, b"\x08\x01")}
    for i, (name, arr) in enumerate(tensors.items()):
        data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        shard = shards[i % num_shards]
        items[name.encode()] = _entry_proto(_DT[arr.dtype.name], arr.shape, i % num_shards,
                                            len(shard), len(data), tfc.crc32c(data))
        shard += data
    for name, value in (extra or {}).items():
        items[name.encode()] = value
    Path(f"{prefix}.index").write_bytes(_table(sorted(items.items())))
    for s, data in enumerate(shards):
        Path(f"{prefix}.data-{s:05d}-of-{num_shards:05d}").write_bytes(bytes(data))


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "global_step": np.array(7, np.int64),
        "enc/h1/weights": rng.normal(size=(5, 5, 3, 8)).astype(np.float32),
        "enc/h1/BatchNorm/beta": rng.normal(size=8).astype(np.float32),
        "enc/h1/BatchNorm/gamma": rng.normal(size=8).astype(np.float64),
        "enc/centers": np.array([-2.0, -1, 0, 1, 2], np.float32),
        "counts": np.array([[1, -2, 3]], np.int32),
        "mask": np.array([True, False, True]),
        "bytes": np.arange(250, dtype=np.uint8),
        "half": np.array([0.5, -1.25], np.float16),
        "empty": np.zeros((0, 3), np.float32),
    }


def _assert_names(exc: pytest.ExceptionInfo[TFCheckpointError], path: Path, pattern: str) -> None:
    msg = str(exc.value)
    assert msg.startswith(f"{path}: "), msg
    assert "\n" not in msg
    assert re.search(pattern, msg), msg


# --- runs anywhere -------------------------------------------------------------------------------

@pytest.mark.parametrize("num_shards", [1, 3])
def test_roundtrip(tmp_path, num_shards):
    tensors = _tensors()
    write_bundle(tmp_path / "ckpt-3", tensors, num_shards=num_shards)
    out = read_tf_checkpoint(tmp_path / "ckpt-3")
    assert list(out) == sorted(tensors)  # all of them, in index (= key) order
    for name, arr in tensors.items():
        assert out[name].dtype == arr.dtype and out[name].shape == arr.shape, name
        assert np.array_equal(out[name], arr), name
    out["enc/centers"][0] = 5  # writable, not a view of a read-only buffer
    entries = tf_checkpoint_entries(tmp_path / "ckpt-3")
    assert entries == {n: (a.dtype.name, a.shape) for n, a in tensors.items()}
    # The index file's own name works as the prefix too.
    assert tf_checkpoint_entries(tmp_path / "ckpt-3.index") == entries


def test_read_some_names(tmp_path):
    tensors = _tensors()
    write_bundle(tmp_path / "ckpt-0", tensors)
    out = read_tf_checkpoint(tmp_path / "ckpt-0", ["mask", "enc/centers"])
    assert list(out) == ["mask", "enc/centers"]
    assert np.array_equal(out["enc/centers"], tensors["enc/centers"])
    assert list(read_tf_checkpoint(str(tmp_path / "ckpt-0"), "global_step")) == ["global_step"]
    with pytest.raises(TFCheckpointError) as exc:
        read_tf_checkpoint(tmp_path / "ckpt-0", ["enc/centers:0"])
    _assert_names(exc, tmp_path / "ckpt-0.index", r"no tensor 'enc/centers:0'.*use 'enc/centers'")


def test_unsupported_entries(tmp_path):
    string_entry = _entry_proto(7, (2,), 0, 0, 0, 0)  # DT_STRING
    sliced = _entry_proto(1, (4, 4), 0, 0, 0, 0, n_slices=2)
    write_bundle(tmp_path / "c", {"x": np.ones(2, np.float32)},
                 extra={"names": string_entry, "part": sliced, "\x00slice-data": b""})
    entries = tf_checkpoint_entries(tmp_path / "c")
    assert entries == {"names": ("string", (2,)), "part": ("float32", (4, 4)),
                       "x": ("float32", (2,))}  # the slice-data key is not a tensor
    assert list(read_tf_checkpoint(tmp_path / "c", ["x"])) == ["x"]
    index = tmp_path / "c.index"
    with pytest.raises(TFCheckpointError) as exc:
        read_tf_checkpoint(tmp_path / "c")
    _assert_names(exc, index, "'names' has unsupported dtype string")
    with pytest.raises(TFCheckpointError) as exc:
        read_tf_checkpoint(tmp_path / "c", ["part"])
    _assert_names(exc, index, "'part' is partitioned into 2 slices")


def test_big_endian_bundle(tmp_path):
    write_bundle(tmp_path / "c", {"x": np.ones(2, np.float32)}, endianness=1)
    with pytest.raises(TFCheckpointError) as exc:
        tf_checkpoint_entries(tmp_path / "c")
    _assert_names(exc, tmp_path / "c.index", "big-endian")


def test_bad_index_files(tmp_path):
    index = tmp_path / "c.index"
    with pytest.raises(TFCheckpointError) as exc:
        read_tf_checkpoint(tmp_path / "c")
    _assert_names(exc, index, "not found")

    index.write_bytes(os.urandom(1000))
    with pytest.raises(TFCheckpointError) as exc:
        tf_checkpoint_entries(tmp_path / "c")
    _assert_names(exc, index, "bad table magic")

    index.write_bytes(b"short")
    with pytest.raises(TFCheckpointError) as exc:
        tf_checkpoint_entries(tmp_path / "c")
    _assert_names(exc, index, "too short")

    write_bundle(tmp_path / "c", _tensors())
    good = index.read_bytes()
    index.write_bytes(good[: len(good) // 2])
    with pytest.raises(TFCheckpointError) as exc:
        tf_checkpoint_entries(tmp_path / "c")
    _assert_names(exc, index, "corrupt|magic")

    # A flipped byte inside a data block fails its checksum; a footer pointing past the end of
    # the file is caught before any slicing.
    index.write_bytes(good[:20] + bytes([good[20] ^ 1]) + good[21:])
    with pytest.raises(TFCheckpointError) as exc:
        tf_checkpoint_entries(tmp_path / "c")
    _assert_names(exc, index, "checksum mismatch")
    footer = _varint(0) + _varint(10) + _varint(len(good)) + _varint(100)
    index.write_bytes(good[:-48] + footer.ljust(40, b"\x00") + good[-8:])
    with pytest.raises(TFCheckpointError) as exc:
        tf_checkpoint_entries(tmp_path / "c")
    _assert_names(exc, index, "past the end")

    # A table without the bundle header (empty key) is some other SSTable.
    index.write_bytes(_table([(b"a", b"")]))
    with pytest.raises(TFCheckpointError) as exc:
        tf_checkpoint_entries(tmp_path / "c")
    _assert_names(exc, index, "no bundle header")


def test_bad_data_files(tmp_path):
    tensors = _tensors()
    write_bundle(tmp_path / "c", tensors, num_shards=2)
    shard1 = tmp_path / "c.data-00001-of-00002"
    data = shard1.read_bytes()
    # Shard 1 holds tensors 1, 3, 5, 7, 9: its last bytes are those of "bytes" (then "empty",
    # 0 bytes at the end), so cutting one byte off breaks those two only.
    shard1.write_bytes(data[:-1])
    with pytest.raises(TFCheckpointError) as exc:
        read_tf_checkpoint(tmp_path / "c")
    _assert_names(exc, shard1, r"tensor 'bytes' spans bytes \d+\.\.\d+ but the file has \d+")
    out = read_tf_checkpoint(tmp_path / "c", ["counts", "mask"])  # the others still read
    assert np.array_equal(out["counts"], tensors["counts"])

    flipped = bytearray(data)
    flipped[-1] ^= 0x40
    shard1.write_bytes(bytes(flipped))
    with pytest.raises(TFCheckpointError) as exc:
        read_tf_checkpoint(tmp_path / "c", ["bytes"])
    _assert_names(exc, shard1, "checksum mismatch in tensor 'bytes'")
    assert read_tf_checkpoint(tmp_path / "c", ["bytes"], verify=False)["bytes"][-1] == 249 ^ 0x40

    shard1.unlink()
    with pytest.raises(TFCheckpointError) as exc:
        read_tf_checkpoint(tmp_path / "c")
    _assert_names(exc, shard1, "data shard not found")


def test_list_tf_checkpoints(tmp_path):
    for step in (10, 2, 5, 100):
        write_bundle(tmp_path / f"ckpt-{step}", {"x": np.ones(1, np.float32)},
                     num_shards=2 if step == 100 else 1)
    Path(f"{tmp_path}/ckpt-5.data-00000-of-00001").unlink()  # interrupted / half-deleted save
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n')  # stale
    (tmp_path / "ckpt-7.data-00000-of-00001").write_bytes(b"")  # shard without index
    (tmp_path / "ckpt-3.pt").write_bytes(b"")
    (tmp_path / "var_names.pkl").write_bytes(pickle.dumps(["x:0"]))
    assert list_tf_checkpoints(tmp_path) == [
        (2, tmp_path / "ckpt-2"), (10, tmp_path / "ckpt-10"), (100, tmp_path / "ckpt-100")]
    with pytest.raises(TFCheckpointError) as exc:
        list_tf_checkpoints(tmp_path / "nope")
    _assert_names(exc, tmp_path / "nope", "cannot list")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_read_var_names(tmp_path):
    names = ["enc/h1/weights:0", "global_step:0"]
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        (tmp_path / "var_names.pkl").write_bytes(pickle.dumps(names, protocol=protocol))
        assert read_var_names(tmp_path) == names
    assert read_var_names(tmp_path / "var_names.pkl") == names

    pkl = tmp_path / "var_names.pkl"
    marker = tmp_path / "pwned"
    pkl.write_bytes(pickle.dumps(["a:0", _Evil(marker)]))
    with pytest.raises(TFCheckpointError) as exc:
        read_var_names(tmp_path)
    _assert_names(exc, pkl, r"refusing to load global (posix|nt)\.system")
    assert not marker.exists()

    for bad, pattern in [(pickle.dumps({"a": 1}), "got dict"), (pickle.dumps(["a", 1]), "got list"),
                         (pickle.dumps(names)[:-5], "not a pickled list"), (b"", "not a pickled")]:
        pkl.write_bytes(bad)
        with pytest.raises(TFCheckpointError) as exc:
            read_var_names(tmp_path)
        _assert_names(exc, pkl, pattern)
    pkl.unlink()
    with pytest.raises(TFCheckpointError) as exc:
        read_var_names(tmp_path)
    _assert_names(exc, pkl, "not found")


def test_crc32c_fallback(monkeypatch):
    assert tfc.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    data = os.urandom(1000)
    expected = tfc.crc32c(data)
    monkeypatch.setattr(tfc, "_fast_crc32c", None)
    assert tfc.crc32c(b"123456789") == 0xE3069283
    assert tfc.crc32c(data) == expected
    assert tfc.unmask_crc(_mask(expected)) == expected


# --- the original TF code's checkpoint -----------------------------------------------------------

SHARED = Path(os.environ.get("IMGCOMP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
LOG_DIR = SHARED / "fixtures/original_tf1/0101_0001 cvpr@med cvpr@res_shallow"
CKPTS = LOG_DIR / "ckpts"
PREFIX = CKPTS / "ckpt-0"
DATA = CKPTS / "ckpt-0.data-00000-of-00001"
needs_fixture = pytest.mark.skipif(not PREFIX.with_suffix(".index").exists(),
                                   reason="original TF checkpoint not available "
                                          "(set IMGCOMP_SHARED)")


@pytest.fixture(scope="module")
def ckpt() -> dict[str, np.ndarray]:
    return read_tf_checkpoint(PREFIX)


@needs_fixture
def test_fixture_values(ckpt):
    assert len(ckpt) == 380
    assert ckpt["global_step"].dtype == np.int64 and ckpt["global_step"].shape == ()
    assert ckpt["global_step"] == 0
    step = np.load(LOG_DIR / "oracle/step.npz")
    checked = 0
    for key in step.files:
        group, _, name = key.partition("/")
        if group in ("before", "bn_before", "adam_before"):
            assert name in ckpt, key
            assert ckpt[name].dtype == step[key].dtype and ckpt[name].shape == step[key].shape
            assert np.array_equal(ckpt[name], step[key]), key
            checked += 1
    assert checked == 297  # 235 before/ + 58 bn_before/ + 4 beta powers
    assert ckpt["probclass3d/logits/conv3d_conv0_mask/weights"].ndim == 5
    slots = [n for n in ckpt if n.endswith(("/Adam_PC", "/Adam_PC_1"))]
    assert slots and all(n.startswith("probclass3d/") for n in slots)
    assert not any(ckpt[n].any() for n in slots)  # Adam slots start at zero


@needs_fixture
def test_fixture_entries_match_variables_txt(ckpt):
    variables = {}
    for line in (LOG_DIR / "oracle/variables.txt").read_text().splitlines():
        m = re.fullmatch(r"(\S+) \[([\d, ]*)\] (\w+) (trainable|non-trainable)", line)
        assert m, line
        shape = tuple(int(d) for d in m[2].split(",")) if m[2] else ()
        variables[m[1]] = (m[3], shape)
    entries = tf_checkpoint_entries(PREFIX)
    assert len(entries) == 380 and set(entries) <= set(variables)
    assert entries == {name: variables[name] for name in entries}
    assert {n: (a.dtype.name, a.shape) for n, a in ckpt.items()} == entries
    assert sorted(n[:-2] for n in read_var_names(CKPTS)) == sorted(entries)
    assert list_tf_checkpoints(CKPTS) == [(0, PREFIX)]


@needs_fixture
def test_fixture_corrupt_copies(tmp_path, ckpt):
    index = PREFIX.with_suffix(".index").read_bytes()
    bad = tmp_path / "ckpt-0"
    bad_index, bad_data = tmp_path / "ckpt-0.index", tmp_path / DATA.name

    bad_index.write_bytes(index[: len(index) // 2])  # truncated index
    bad_data.symlink_to(DATA)
    with pytest.raises(TFCheckpointError) as exc:
        read_tf_checkpoint(bad)
    _assert_names(exc, bad_index, "magic")
    bad_data.unlink()

    bad_index.write_bytes(index)  # missing data shard
    with pytest.raises(TFCheckpointError) as exc:
        read_tf_checkpoint(bad, ["global_step"])
    _assert_names(exc, bad_data, "data shard not found")
    assert list_tf_checkpoints(tmp_path) == []

    with open(DATA, "rb") as f:  # a data file cut after 1 MB
        bad_data.write_bytes(f.read(1 << 20))
    entries = tfc.load_bundle(PREFIX).entries
    inside = [n for n, e in entries.items() if e.offset + e.size <= 1 << 20]
    past = [n for n, e in entries.items() if e.offset + e.size > 1 << 20]
    assert inside and past
    part = read_tf_checkpoint(bad, inside)  # reads only the bytes it needs
    assert all(np.array_equal(part[n], ckpt[n]) for n in inside)
    with pytest.raises(TFCheckpointError) as exc:
        read_tf_checkpoint(bad, past[-1:])
    _assert_names(exc, bad_data, rf"tensor '{re.escape(past[-1])}' spans bytes .* \(truncated\?\)")

    pkl = tmp_path / "var_names.pkl"  # a truncated copy of the original's var_names.pkl
    pkl.write_bytes((CKPTS / "var_names.pkl").read_bytes()[:-100])
    with pytest.raises(TFCheckpointError) as exc:
        read_var_names(tmp_path)
    _assert_names(exc, pkl, "not a pickled list")
