"""Tests of imgcomp.base.image_files (finding and reading images), imgcomp.data.loaders (dataset
specs,
loaders) and imgcomp.data.records (TFRecord writer)."""

import importlib.util
import io
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tfrecord.reader import tfrecord_loader
from tfrecord.writer import TFRecordWriter

from imgcomp.base.image_files import (
    DatasetError,
    ImageReadError,
    read_image,
    resolve_image_paths,
    write_image,
)
from imgcomp.data.loaders import make_loader
from imgcomp.data.records import main as records_main
from imgcomp.data.records import write_image_records
from imgcomp.data.tfrecord_files import FEATURE_KEY, DataWarning, count_tfrecords

TF_WRITTEN = Path(__file__).parent / "data" / "tf_written"
REPO = Path(__file__).resolve().parents[1]


def gradient(h: int, w: int) -> np.ndarray:
    """The synthetic image of tests/data/make_tf_written_records.py."""
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 6, y * 7, (x + y) * 3], axis=-1).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def noise_images(folder: Path, n: int, h: int = 40, w: int = 48, ext: str = "png") -> list[Path]:
    rng = np.random.default_rng(0)
    return [
        save(folder / f"img{i:02d}.{ext}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for i in range(n)
    ]


def flat_images(folder: Path, n: int) -> list[Path]:
    """Images of constant value 10 * (i + 1): any crop tells which file it came from."""
    return [
        save(folder / f"flat{i:02d}.png", np.full((24, 24, 3), 10 * (i + 1), np.uint8))
        for i in range(n)
    ]


def ids(batches: list[torch.Tensor]) -> list[int]:
    return [int(img[0, 0, 0]) // 10 - 1 for batch in batches for img in batch]


def check_batch(batch: torch.Tensor, n: int, h: int, w: int) -> None:
    assert batch.shape == (n, 3, h, w)
    assert batch.dtype == torch.float32
    assert 0 <= batch.min() and batch.max() <= 255
    assert torch.equal(batch, batch.round())


def centre(img: np.ndarray, h: int, w: int) -> np.ndarray:
    y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[y : y + h, x : x + w]


def as_hwc(img: torch.Tensor) -> np.ndarray:
    return img.permute(1, 2, 0).numpy().astype(np.uint8)


# Dataset specs


def test_glob_spec(tmp_path: Path) -> None:
    noise_images(tmp_path, 5)
    loader, n = make_loader(str(tmp_path / "*.png"), (16, 24), 2, train=True, num_workers=0)
    batches = list(loader)
    assert n == 5 and len(batches) == 2 == len(loader)  # drop_last
    for batch in batches:
        check_batch(batch, 2, 16, 24)


def test_recursive_glob_and_directory(tmp_path: Path) -> None:
    a = save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    b = save(tmp_path / "b.JPG", np.zeros((8, 8, 3), np.uint8))
    c = save(tmp_path / "sub" / "c.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    assert resolve_image_paths(str(tmp_path)) == [a, b]  # not recursive, images only
    assert resolve_image_paths(str(tmp_path / "**" / "*.png")) == [a, c]

    loader, n = make_loader(str(tmp_path), (8, 8), 3, train=False, num_workers=0)
    assert n == 2
    (batch,) = list(loader)
    check_batch(batch, 2, 8, 8)  # test loaders keep the last, partial batch


def test_tf_written_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECORDS_ROOT", str(TF_WRITTEN))
    loader, n = make_loader("imgnet_train", (16, 16), 2, train=True, num_workers=0)
    batches = list(loader)
    assert n == 4 and len(batches) == 2
    for batch in batches:
        check_batch(batch, 2, 16, 16)

    loader, n = make_loader("imgnet_test", (16, 16), 4, train=False, num_workers=0)
    (batch,) = list(loader)
    assert n == 2
    check_batch(batch, 2, 16, 16)
    # The first val record is a lossless PNG of gradient(32, 40).
    np.testing.assert_array_equal(as_hwc(batch[0]), centre(gradient(32, 40), 16, 16))


def test_multiworker_loaders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    noise_images(tmp_path, 8)
    loader, _ = make_loader(str(tmp_path), (16, 16), 2, train=True, num_workers=2)
    for _epoch in range(2):
        assert len(list(loader)) == 4

    monkeypatch.setenv("RECORDS_ROOT", str(TF_WRITTEN))
    loader, _ = make_loader("imgnet_train", (16, 16), 2, train=True, num_workers=2)
    for _epoch in range(2):
        batches = list(loader)
        assert len(batches) == 2  # one record file: each worker reads every other record
        for batch in batches:
            check_batch(batch, 2, 16, 16)

    # 4 records, batches of 3: two workers would hold 2 records each and yield nothing.
    loader, _ = make_loader("imgnet_train", (16, 16), 3, train=True, num_workers=2)
    for _epoch in range(2):
        batches = list(loader)
        assert len(batches) == 1
        check_batch(batches[0], 3, 16, 16)


# TFRecord writer


def test_write_image_records_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    sources = [rng.integers(0, 256, (30 + i, 36, 3), dtype=np.uint8) for i in range(5)]
    paths = [save(tmp_path / "src" / f"{i}.png", a) for i, a in enumerate(sources)]
    shards = write_image_records(paths, tmp_path / "rec" / "train", num_per_shard=2)
    assert [s.name for s in shards] == [f"shard_0000{i}.tfrecord" for i in range(3)]
    assert [count_tfrecords(s) for s in shards] == [2, 2, 1]

    # A hidden temporary of a killed records write is not a shard.
    (tmp_path / "rec" / "train" / ".shard_00003.x1y2.tfrecord").write_bytes(b"\x00" * 7)
    monkeypatch.setenv("RECORDS_ROOT", str(tmp_path / "rec"))
    loader, n = make_loader("imgnet_train", (20, 24), 5, train=False, num_workers=0)
    (batch,) = list(loader)
    assert n == 5
    for img, src in zip(batch, sources, strict=True):
        np.testing.assert_array_equal(as_hwc(img), centre(src, 20, 24))

    loader, _ = make_loader("imgnet_train", (20, 24), 2, train=True, num_workers=0)
    assert len(list(loader)) == 2


def test_write_image_records_refuses_stale_shards(tmp_path: Path) -> None:
    paths = noise_images(tmp_path / "src", 2)
    write_image_records(paths, tmp_path / "out")
    with pytest.raises(FileExistsError, match="shard_"):
        write_image_records(paths, tmp_path / "out")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgcomp.data.records", "mk_img_rec", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_cli_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [gradient(24, 32), np.full((24, 32, 3), 77, np.uint8)]
    paths = [save(tmp_path / "src" / f"{i}.png", a) for i, a in enumerate(sources)]
    bad = tmp_path / "src" / "bad.png"
    bad.write_bytes(b"garbage")
    out = tmp_path / "rec" / "val"
    result = run_cli(*map(str, [*paths, bad]), "-o", str(out), "--num_per_shard", "1")
    assert result.returncode == 0, result.stderr
    assert "2 images -> 2 files" in result.stdout
    assert str(bad) in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["shard_00000.tfrecord", "shard_00001.tfrecord"]

    monkeypatch.setenv("RECORDS_ROOT", str(tmp_path / "rec"))
    loader, n = make_loader("imgnet_test", (16, 16), 2, train=False, num_workers=0)
    (batch,) = list(loader)
    assert n == 2
    for img, src in zip(batch, sources, strict=True):
        np.testing.assert_array_equal(as_hwc(img), centre(src, 16, 16))


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # In-process: the subprocess test above already covers `python -m`; torch's import is slow.
    assert records_main(["mk_img_rec", str(tmp_path / "nothing*.png"), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nothing*.png" in err

    paths = noise_images(tmp_path / "src", 1)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    assert records_main(["mk_img_rec", str(paths[0]), "-o", str(blocker / "out")]) == 1
    assert capsys.readouterr().err.startswith("error:")


def stored_images(record_file: Path) -> list[Image.Image]:
    return [Image.open(io.BytesIO(bytes(r[FEATURE_KEY])))
            for r in tfrecord_loader(str(record_file), None, {FEATURE_KEY: "byte"})]


def test_shard_size_resize_short_side_and_workers(tmp_path: Path, capsys) -> None:
    """The original README's "Prepare ImageNET" in one call: original shard names, the
    ImageMagick `-resize "32x32^"` step, two worker processes."""
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    big_jpeg = save(src / "a_big.JPEG", gradient(48, 80), quality=80)  # shrunk
    small_png = save(src / "b_small.png", rng.integers(0, 256, (20, 16, 3), dtype=np.uint8))
    exact = save(src / "c_exact.JPEG", gradient(32, 50))  # kept byte for byte
    cmyk = src / "d_cmyk.jpg"
    Image.fromarray(gradient(64, 40)).convert("CMYK").save(cmyk)
    (src / "e_bad.jpg").write_bytes(b"not an image")
    out = tmp_path / "records" / "train"
    assert records_main(["mk_img_rec", f"{src}/*", "-o", str(out), "--shard_size", "3",
                         "--resize_short_side", "32", "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "4 images -> 2 files" in captured.out and "e_bad.jpg" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["train-00001.tfrecord",
                                                     "train-00002.tfrecord"]
    images = stored_images(out / "train-00001.tfrecord") + stored_images(
        out / "train-00002.tfrecord")
    # Shorter side 32, aspect kept (rounded half up); each in its own kind; CMYK made RGB.
    assert [(im.size, im.format, im.mode) for im in images] == [
        ((53, 32), "JPEG", "RGB"), ((32, 40), "PNG", "RGB"), ((50, 32), "JPEG", "RGB"),
        ((32, 51), "JPEG", "RGB")]
    with Image.open(big_jpeg) as source:
        assert images[0].quantization == source.quantization  # the source's quality
    assert images[0].fp.getvalue() != big_jpeg.read_bytes()
    assert images[2].fp.getvalue() == exact.read_bytes()
    assert abs(np.asarray(images[1].resize((16, 20)), float)
               - np.asarray(Image.open(small_png), float)).mean() < 40  # enlarged, same picture

    # Stale shards of the prefix, either naming, are refused; --prefix names others.
    assert records_main(["mk_img_rec", str(exact), "-o", str(out), "--shard_size", "3"]) == 1
    assert "train-00001.tfrecord" in capsys.readouterr().err
    assert records_main(["mk_img_rec", str(exact), "-o", str(out), "--shard_size", "3",
                         "--prefix", "more"]) == 0
    assert (out / "more-00001.tfrecord").is_file()
    for conflict in (["--shard_size", "2", "--num_per_shard", "2"], ["--workers", "0"]):
        assert records_main(["mk_img_rec", str(exact), "-o", str(tmp_path / "x"),
                             *conflict]) == 1
    assert records_main(["mk_img_rec", str(exact), "-o", str(tmp_path / "x.tfrecord"),
                         "--shard_size", "2"]) == 1
    assert "one record file" in capsys.readouterr().err
    # --assert_size sees a JPEG's full size (not its reduced check decode's), from a worker.
    for min_size, code in ((49, 1), (48, 0)):
        assert records_main(["mk_img_rec", str(big_jpeg), "-o", str(tmp_path / f"y{min_size}"),
                             "--shard_size", "1", "--workers", "2", "--assert_size",
                             str(min_size)]) == code
    assert "a_big.JPEG is 80x48, below --assert_size 49" in capsys.readouterr().err


IMAGENET_SAMPLE = (Path(os.environ.get("IMGCOMP_SHARED", REPO.parent / "shared"))
                   / "data" / "imagenet_sample" / "train")


def test_records_of_the_imagenet_sample(tmp_path: Path, capsys) -> None:
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip("ImageNet sample not available (set IMGCOMP_SHARED)")
    sources = sorted(IMAGENET_SAMPLE.glob("*.jpg"))[:5]
    for side, expect_same in ((256, True), (160, False)):  # the sample is at 256 already
        out = tmp_path / f"side{side}" / "train"
        assert records_main(["mk_img_rec", *map(str, sources), "-o", str(out), "--shard_size",
                             "4", "--resize_short_side", str(side), "--workers", "2",
                             "--feature_key", "image/encoded"]) == 0
        images = [im for f in sorted(out.iterdir()) for im in stored_images(f)]
        assert [f.name for f in sorted(out.iterdir())] == ["train-00001.tfrecord",
                                                           "train-00002.tfrecord"]
        for im, path in zip(images, sources, strict=True):
            with Image.open(path) as source:
                w, h = source.size
                assert min(im.size) == side and im.format == "JPEG"
                assert abs(im.size[0] / im.size[1] - w / h) < 0.01
                assert (im.fp.getvalue() == path.read_bytes()) == expect_same
    capsys.readouterr()


# Run apart: TensorFlow and the tfrecord package both register tensorflow.Example's protos in
# protobuf's default pool, so one process cannot import both (and where TensorFlow is
# installed, tensorboard imports it), hence a TensorFlow of its own venv:
# IMGCOMP_TF_PYTHON=/path/to/tf_venv/bin/python, else this interpreter's if it has one.
TF_PYTHON = os.environ.get("IMGCOMP_TF_PYTHON")
TF_READ_RECORDS = """
import sys
import numpy as np
import tensorflow as tf
feature = {sys.argv[2]: tf.io.FixedLenFeature([], tf.string)}
np.savez(sys.argv[1], *[
    tf.io.decode_image(tf.io.parse_single_example(r, feature)[sys.argv[2]], channels=3).numpy()
    for r in tf.data.TFRecordDataset(sys.argv[3:])])
"""


def test_tensorflow_reads_the_records(tmp_path: Path) -> None:
    if TF_PYTHON is None and importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow not installed (or set IMGCOMP_TF_PYTHON)")
    src = tmp_path / "src"
    save(src / "a.jpg", gradient(48, 80), quality=90)
    save(src / "b.png", gradient(20, 16))
    out = tmp_path / "records" / "val"
    assert records_main(["mk_img_rec", str(src), "-o", str(out), "--shard_size", "1",
                         "--resize_short_side", "32", "--workers", "2"]) == 0
    files = sorted(str(f) for f in out.iterdir())
    assert [Path(f).name for f in files] == ["val-00001.tfrecord", "val-00002.tfrecord"]
    arrays = tmp_path / "tf.npz"
    subprocess.run([TF_PYTHON or sys.executable, "-c", TF_READ_RECORDS, str(arrays), FEATURE_KEY,
                    *files], check=True, timeout=300)
    with np.load(arrays) as by_tf:
        decoded = [by_tf[f"arr_{i}"] for i in range(len(by_tf.files))]
    assert [d.shape for d in decoded] == [(32, 53, 3), (40, 32, 3)]
    ours = [np.asarray(im.convert("RGB"), int) for f in files for im in stored_images(Path(f))]
    # TensorFlow's JPEG decoding (its IDCT and chroma upsampling) differs from Pillow's by a
    # few levels; PNG decodes alike.
    mse = np.mean((decoded[0] - ours[0]) ** 2.0)
    assert np.abs(decoded[0] - ours[0]).max() <= 8 and 10 * np.log10(255**2 / mse) > 40
    np.testing.assert_array_equal(decoded[1], ours[1])


# Problem images


def test_small_image_is_padded_with_warning(tmp_path: Path) -> None:
    small = gradient(10, 12)
    path = save(tmp_path / "small.png", small)
    loader, _ = make_loader(str(path), (16, 16), 1, train=False, num_workers=0)
    with pytest.warns(DataWarning, match=re.escape(f"{path} (12x10)")):
        (batch,) = list(loader)
    np.testing.assert_array_equal(as_hwc(batch[0]), np.pad(small, ((0, 6), (0, 4), (0, 0)), "edge"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file, not once per epoch
        list(loader)


def test_corrupt_images_are_skipped(tmp_path: Path) -> None:
    noise_images(tmp_path, 3)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG not really")
    truncated = tmp_path / "truncated.jpg"
    save(truncated, np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:500])

    loader, n = make_loader(str(tmp_path), (16, 16), 5, train=False, num_workers=0)
    with pytest.warns(DataWarning) as record:
        (batch,) = list(loader)
    assert n == 5
    check_batch(batch, 5, 16, 16)  # unreadable files were replaced by readable ones
    messages = " ".join(str(w.message) for w in record)
    assert str(garbage) in messages and str(truncated) in messages

    loader, _ = make_loader(str(tmp_path), (16, 16), 4, train=True, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        (batch,) = list(loader)
    check_batch(batch, 4, 16, 16)


def test_bad_record_warned_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "val").mkdir()
    writer = TFRecordWriter(str(tmp_path / "val" / "rec.tfrecord"))
    for value in (50, 100, 150):
        writer.write({"image/encoded": (encode_png(np.full((20, 20, 3), value, np.uint8)), "byte")})
    writer.write({"image/encoded": (b"garbage", "byte")})
    writer.close()
    monkeypatch.setenv("RECORDS_ROOT", str(tmp_path))
    loader, n = make_loader("imgnet_test", (8, 8), 4, train=False, num_workers=0)
    assert n == 4
    with pytest.warns(DataWarning, match=re.escape("rec.tfrecord#3")) as record:
        (batch,) = list(loader)
    assert len(record) == 1
    assert batch[:, 0, 0, 0].tolist() == [50, 100, 150]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning about the same record
        assert len(list(loader)) == 1


def test_all_corrupt_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        for train in (True, False):
            loader, _ = make_loader(str(tmp_path), (8, 8), 2, train=train, num_workers=0)
            with pytest.raises(DatasetError, match="can be read"):
                list(loader)

        (tmp_path / "train").mkdir()
        writer = TFRecordWriter(str(tmp_path / "train" / "bad.tfrecord"))
        for _ in range(3):
            writer.write({"image/encoded": (b"garbage", "byte")})
        writer.close()
        monkeypatch.setenv("RECORDS_ROOT", str(tmp_path))
        loader, _ = make_loader("imgnet_train", (8, 8), 2, train=True, num_workers=0)
        with pytest.raises(DatasetError, match="no batch"):
            list(loader)


def test_image_modes_become_rgb(tmp_path: Path) -> None:
    gray = gradient(6, 8)[..., 0]
    rgba = np.dstack([gradient(6, 8), np.full((6, 8), 7, np.uint8)])
    cases = {
        "gray.png": (Image.fromarray(gray), np.dstack([gray] * 3)),
        "rgba.png": (Image.fromarray(rgba), gradient(6, 8)),
        "palette.png": (Image.fromarray(gray).convert("P"), np.dstack([gray] * 3)),
        "gray16.png": (Image.fromarray(gray.astype(np.uint16) * 257), np.dstack([gray] * 3)),
        "cmyk.jpg": (Image.new("CMYK", (8, 6), (0, 0, 0, 0)), None),
    }
    for name, (img, expected) in cases.items():
        img.save(tmp_path / name)
        array = read_image(tmp_path / name)
        assert array.shape == (6, 8, 3) and array.dtype == np.uint8, name
        if expected is not None:
            np.testing.assert_array_equal(array, expected, err_msg=name)
    assert read_image((tmp_path / "gray.png").read_bytes()).shape == (6, 8, 3)
    for name in ("gray.png", "rgba.png", "palette.png", "gray16.png"):  # in memory: the same
        with Image.open(tmp_path / name) as img:
            np.testing.assert_array_equal(read_image(img), read_image(tmp_path / name), name)

    loader, _ = make_loader(str(tmp_path / "*.png"), (6, 8), 4, train=False, num_workers=0)
    (batch,) = list(loader)
    check_batch(batch, 4, 6, 8)


def test_read_image_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 nonsense")
    with pytest.raises(ImageReadError, match=re.escape(str(bad))):
        read_image(bad)
    with pytest.raises(ImageReadError, match="rec#3"):
        read_image(b"nonsense", name="rec#3")


def test_read_image_max_pixels_replaces_pillows_bomb_limit(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    path = tmp_path / "wide.png"
    write_image(path, gradient(10, 20))  # 200 pixels
    with Image.open(path) as img, pytest.raises(ImageReadError, match="over the limit of 199"):
        read_image(img, max_pixels=199)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # Pillow refuses > 80 pixels
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(path)
    assert read_image(path, max_pixels=200).shape == (10, 20, 3)
    assert read_image(path.read_bytes(), max_pixels=200).shape == (10, 20, 3)
    assert Image.MAX_IMAGE_PIXELS == 40  # Pillow's global is restored
    message = f"cannot read image {path}: 20x10 is over the limit of 199 pixels"
    with pytest.raises(ImageReadError, match=re.escape(message)):
        read_image(path, max_pixels=199)
    with pytest.raises(ImageReadError, match="20x10 is over the limit of 199"):
        read_image(gradient(10, 20), max_pixels=199)


def test_read_image_arrays_and_write_image(tmp_path: Path) -> None:
    rgb = gradient(6, 8)
    assert read_image(rgb) is rgb
    np.testing.assert_array_equal(read_image(rgb[..., 0]), np.dstack([rgb[..., 0]] * 3))
    for bad in (rgb.astype(np.float32), rgb[..., :2], np.zeros(3, np.uint8)):
        with pytest.raises(ValueError, match="H x W x 3 uint8"):
            read_image(bad)
    write_image(tmp_path / "out.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "out.png"), rgb)


# Seeds, epochs and ranks


def test_seeds_and_epochs(tmp_path: Path) -> None:
    noise_images(tmp_path, 6, h=64, w=64)
    spec = str(tmp_path)

    def first_batches(seed: int, epochs: int) -> list[torch.Tensor]:
        loader, _ = make_loader(spec, (16, 16), 3, train=True, num_workers=0, seed=seed)
        return [next(iter(loader)) for _ in range(epochs)]

    a0, a1 = first_batches(seed=5, epochs=2)
    b0, b1 = first_batches(seed=5, epochs=2)
    assert torch.equal(a0, b0) and torch.equal(a1, b1)
    assert not torch.equal(a0, a1)
    assert not torch.equal(a0, first_batches(seed=6, epochs=1)[0])

    # Resuming at epoch 1 reproduces epoch 1.
    loader, _ = make_loader(spec, (16, 16), 3, train=True, num_workers=0, seed=5)
    loader.set_epoch(1)
    assert torch.equal(next(iter(loader)), a1)


def test_different_epochs_give_different_crops(tmp_path: Path) -> None:
    save(tmp_path / "one.png", np.random.default_rng(3).integers(0, 256, (64, 64, 3), np.uint8))
    loader, _ = make_loader(str(tmp_path), (16, 16), 1, train=True, num_workers=0)
    crops = [next(iter(loader)) for _ in range(3)]
    assert not torch.equal(crops[0], crops[1]) and not torch.equal(crops[1], crops[2])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_tf_records_seeds_and_epochs(monkeypatch: pytest.MonkeyPatch, num_workers: int) -> None:
    monkeypatch.setenv("RECORDS_ROOT", str(TF_WRITTEN))

    def epochs() -> list[torch.Tensor]:
        loader, _ = make_loader(
            "imgnet_train", (16, 16), 2, train=True, num_workers=num_workers, seed=3
        )
        return [torch.cat(list(loader)) for _ in range(3)]

    a, b = epochs(), epochs()
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # Persistent workers must see each new epoch.
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])


@pytest.mark.parametrize("train", [True, False])
def test_ranks_see_disjoint_files(tmp_path: Path, train: bool) -> None:
    flat_images(tmp_path, 9)
    seen = []
    for rank in range(2):
        loader, n = make_loader(
            str(tmp_path), (8, 8), 2, train=train, num_workers=0, rank=rank, world_size=2
        )
        assert n == 9
        seen.append(ids(list(loader)))
    assert not set(seen[0]) & set(seen[1])
    if train:
        assert len(seen[0]) == len(seen[1]) == 4  # equal shares keep DDP ranks in step
    else:
        assert sorted(seen[0] + seen[1]) == list(range(9))


@pytest.mark.parametrize("num_files", [1, 3])
def test_record_ranks_see_disjoint_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, num_files: int
) -> None:
    paths = flat_images(tmp_path / "src", 6)
    write_image_records(paths, tmp_path / "rec" / "val", num_per_shard=6 // num_files)
    monkeypatch.setenv("RECORDS_ROOT", str(tmp_path / "rec"))
    seen = []
    for rank in range(2):
        loader, n = make_loader(
            "imgnet_test", (8, 8), 2, train=False, num_workers=0, rank=rank, world_size=2
        )
        assert n == 6
        seen.append(ids(list(loader)))
    assert sorted(seen[0] + seen[1]) == list(range(6))


# Errors


def test_no_matching_files(tmp_path: Path) -> None:
    spec = str(tmp_path / "missing" / "*.png")
    with pytest.raises(DatasetError, match=re.escape(spec)):
        make_loader(spec, (8, 8), 1, train=True, num_workers=0)
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path))):
        resolve_image_paths(str(tmp_path))  # an empty directory


def test_records_root_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECORDS_ROOT", raising=False)
    with pytest.raises(DatasetError, match="RECORDS_ROOT"):
        make_loader("imgnet_train", (8, 8), 1, train=True, num_workers=0)
    monkeypatch.setenv("RECORDS_ROOT", str(tmp_path))
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "val" / "*.tfrecord"))):
        make_loader("imgnet_test", (8, 8), 1, train=False, num_workers=0)


def test_truncated_record_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = (TF_WRITTEN / "train" / "tf_000.tfrecord").read_bytes()
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "cut.tfrecord").write_bytes(data[:-10])
    monkeypatch.setenv("RECORDS_ROOT", str(tmp_path))
    with pytest.raises(DatasetError, match="cut.tfrecord is truncated"):
        make_loader("imgnet_train", (8, 8), 1, train=True, num_workers=0)


def _crop_positions(image: np.ndarray, crop: np.ndarray) -> list[tuple[int, int, bool]]:
    """(y, x, flipped) of every place where `crop` (H x W x 3) occurs in `image`."""
    ch, cw = crop.shape[:2]
    found = []
    for y in range(image.shape[0] - ch + 1):
        for x in range(image.shape[1] - cw + 1):
            window = image[y:y + ch, x:x + cw]
            for flipped, candidate in ((False, window), (True, window[:, ::-1])):
                if np.array_equal(candidate, crop):
                    found.append((y, x, flipped))
    return found


def _crops(loader) -> np.ndarray:
    batches = [b.numpy().transpose(0, 2, 3, 1).astype(np.uint8) for b in loader]
    return np.concatenate(batches)


def test_too_few_images_for_a_batch_are_repeated_with_other_crops(tmp_path: Path) -> None:
    # The original's input queue repeats images to fill a batch; so does ours.
    (path,) = noise_images(tmp_path, 1, h=16, w=16)
    image = np.asarray(Image.open(path))
    loader, count = make_loader(str(tmp_path), (8, 8), 4, train=True, num_workers=0)
    assert count == 1
    crops = _crops(loader)
    assert crops.shape == (4, 8, 8, 3)  # one full batch per epoch
    positions = [_crop_positions(image, c) for c in crops]
    assert all(p and not p[0][2] for p in positions)  # crops of the image, not flipped
    assert len({p[0] for p in positions}) > 1  # repeats are other crops


def test_random_flip_mirrors_about_half_of_the_crops(tmp_path: Path) -> None:
    (path,) = noise_images(tmp_path, 1, h=16, w=16)
    image = np.asarray(Image.open(path))
    flips = []
    for flip in (False, True):
        loader, _ = make_loader(str(tmp_path), (16, 16), 1, train=True, num_workers=0,
                                flip=flip)
        crops = np.concatenate([_crops(loader) for _ in range(40)])
        for crop in crops:
            assert np.array_equal(crop, image) or np.array_equal(crop, image[:, ::-1])
        flips.append(sum(np.array_equal(c, image[:, ::-1]) for c in crops))
    assert flips[0] == 0 and 10 <= flips[1] <= 30
