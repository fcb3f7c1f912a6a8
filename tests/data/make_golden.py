"""Make the golden compressed file that tests/test_bitstream.py decodes:

    python tests/data/make_golden.py

golden.png is a 64 x 48 crop of scikit-image's chelsea.png (written once, then kept);
golden_v<FORMAT_VERSION>.imgc is it compressed by the default shipped model, and
golden_v<FORMAT_VERSION>.json the SHA-256 of its decoded symbols (exact integers: the format
and the coder) and pixels (also the autoencoder's float decoder). Run it only for a new
FORMAT_VERSION, and keep the files of the old versions: the test checks that each old version
is still decoded to its pixels, or refused by name.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from imgcomp.api import DEFAULT_JOB, default_model_dir, load_model
from imgcomp.base.atomic import atomic_write_bytes, atomic_write_text
from imgcomp.base.image_files import read_image, sample_photos, write_image
from imgcomp.entropy_coding.bitstream import FORMAT_VERSION

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "golden.png"


def sha256_of(array: np.ndarray) -> str:
    """SHA-256 of a uint8 array's values in row-major order (symbols (C, h, w) are centre
    indices, pixels H x W x 3 RGB)."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).hexdigest()


def main() -> None:
    if not SOURCE.is_file():
        chelsea = next(p for p in sample_photos() if p.name == "chelsea.png")
        write_image(SOURCE, read_image(chelsea)[100:148, 200:264])
    model = load_model(default_model_dir())
    data = model.compress(SOURCE)
    header, symbols = model.decode_symbols(data)
    decoded = model.reconstruct(symbols, header.height, header.width)
    atomic_write_bytes(HERE / f"golden_v{FORMAT_VERSION}.imgc", data)
    atomic_write_text(HERE / f"golden_v{FORMAT_VERSION}.json", json.dumps({
        "model": DEFAULT_JOB, "source": SOURCE.name, "decoded_shape": list(decoded.shape),
        "symbols_sha256": sha256_of(symbols.numpy()), "decoded_sha256": sha256_of(decoded)},
        indent=1) + "\n")
    print(f"golden_v{FORMAT_VERSION}.imgc: {len(data)} bytes, decoded {decoded.shape}")


if __name__ == "__main__":
    main()
