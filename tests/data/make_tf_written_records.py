"""Generate tests/data/tf_written/{train,val}/tf_000.tfrecord with TensorFlow's own writer.

The fixture proves that imgcomp.data.loaders reads TFRecords written by TensorFlow. Run it with a
Python that has TensorFlow and Pillow (not a project dependency; the tests only read its
output):

    python tests/data/make_tf_written_records.py

Images are synthetic: `gradient` pixels follow the formula that tests/test_data.py checks.
"""

import io
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

OUT = Path(__file__).resolve().parent / "tf_written"


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 6, y * 7, (x + y) * 3], axis=-1).astype(np.uint8)


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write(path: Path, images: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for data in images:
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def main() -> None:
    write(
        OUT / "train" / "tf_000.tfrecord",
        [
            encode(gradient(32, 40), "PNG"),
            encode(noise(32, 40, seed=1), "JPEG"),
            encode(gradient(20, 24), "JPEG"),
            encode(gradient(20, 24)[..., 0], "PNG"),  # grayscale
        ],
    )
    write(
        OUT / "val" / "tf_000.tfrecord",
        [encode(gradient(32, 40), "PNG"), encode(noise(20, 24, seed=2), "PNG")],
    )
    for path in sorted(OUT.rglob("*.tfrecord")):
        print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
