"""The test sets the README's results are measured on, one command away
(`imgcomp data --download kodak bsds500`), into the data folder (imgcomp.base.user_dirs:
$IMGCOMP_DATA, else `imgcomp/data` in the user's cache dir), where the dataset names `kodak`
and `bsds500_val` of val.py and other_codecs.py find them (imgcomp.base.image_files).

- Kodak: the 24 PNGs from their usual home (r0k.us), `kodak/kodimNN.png`. Each is checked
  against the SHA-256 of its pixels recorded below (of the decoded H x W x 3 uint8 RGB array,
  computed from a copy of the set): copies of the set differ in their PNG encoding and
  metadata, not in their pixels, and the pixels are what the results measure.
- BSDS500: the Berkeley archive BSR_bsds500.tgz, checked against its SHA-256 (as several
  projects record it: 70,763,455 bytes), of which the images are kept:
  `bsds500/{train,val,test}/*.jpg` (200, 100, 200).

Files are fetched into a hidden folder beside their destination and renamed into place when
all are there and checked: an interrupted download resumes, and never leaves half a set.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from imgcomp.base.download import DownloadError, download, extract_tar, staging_dir
from imgcomp.base.image_files import ImageReadError, read_image
from imgcomp.base.user_dirs import data_dir

KODAK_URL = "http://r0k.us/graphics/kodak/kodak/"
KODAK_URL_ENV = "IMGCOMP_KODAK_URL"  # a mirror's folder of kodimNN.png, or a test's
KODAK_PIXELS_SHA256 = {
    "kodim01": "c6b8532d68287c92607604bb1d04e0e61f8b5bb30ebdaa9c2126d9d015137ffd",
    "kodim02": "2f10b933fe3179739fdb69d760969360a9a5dc73d4fba3c905e51a2442ee1616",
    "kodim03": "0c33cfae450e80e64c872cc24375ebd19777fddeaebedaf529b877171548e35c",
    "kodim04": "2288d2126c561c90efd45741875dd394e835f2766074a5ca2f22ac4f8fb30312",
    "kodim05": "bf61d7623ee007e07d5391a2b8dd78be328e14a99f0dbbd36d8c8de95b088628",
    "kodim06": "e405c11472afbbbae25e020d1e3273248669ed443b6208584316cca8b59e6deb",
    "kodim07": "8fdbfe9328aafcd28684c308596cc27088700d265db62fc46d97d4c29cbda85b",
    "kodim08": "872070d80232c3239fa1d9bed100929e958b752480ca6217959bc92baefb9bb7",
    "kodim09": "187ce39cc4b4ec5c0677a62a74f6da623a09227aa428c04777b8db8495b55b0b",
    "kodim10": "dc7fdabb4387f0de65c920916a71fcbdccc176178bb5142e71611ddcf3686267",
    "kodim11": "2b15abd46de7b93b6b838e4366314f18f988b538ed23e9b498f51f8373103376",
    "kodim12": "179316ecd1ab68e3614ce2b5f023c540d521912c81b7a87fc21de7747291c8b1",
    "kodim13": "d0288d0fb9b91fe2f73371a535d96754e623cdac75b65508e2127c518a9b2494",
    "kodim14": "b148f757ea0507380f56f7bd80a566bfc75a1f31b77110f8c2ec9fbe7f35bcea",
    "kodim15": "359cce06b42f15e648999d60da68d478e56ead8ddd0b4517bd19cfe467450c9d",
    "kodim16": "9f363a5b302a0bb08a235a587ee8b88c67cc5bb4b4dbc693df3b9159510756d2",
    "kodim17": "a788e54c175bc92149f8675297cc1172906e07d41b293b3aeee640c6c2e52be5",
    "kodim18": "347e702c02a7e4f53eb8868d65e1dc3c99719b26894b8591c835f5927e42f1a2",
    "kodim19": "d3c204e212b9ca9a33abd0d0db7e74fa81c72ec17198b77efdb091179066bf00",
    "kodim20": "becda56d186f5fd1c2f79fe6656732bc3f34e0909ec0f4571f0ea579502f3249",
    "kodim21": "da3e9df42ca79ec3869ed5e349de12c402b6a7d31405e4714183df4049782cd5",
    "kodim22": "cce4c6f4fac86989adff4de7e56501440809f72524604be806d8716e0511c798",
    "kodim23": "996ce4847df07133d627b2835f50c9f9e5cdf102fc77800bc021204f92b378bb",
    "kodim24": "5928a027f0ba2e2a6964122c62e0b0a20bdb86e5bb3d9991978a5e5a35b29f91",
}
BSDS500_URL = ("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/"
               "BSR_bsds500.tgz")
BSDS500_URL_ENV = "IMGCOMP_BSDS500_URL"
BSDS500_SHA256 = "97e49d31764f3912f0c4122707d53062ac9e783ba0f095e447a4d53c1a41af8e"
BSDS500_IMAGES = PurePosixPath("BSR/BSDS500/data/images")  # in the archive
BSDS500_SPLITS = {"train": 200, "val": 100, "test": 200}
BSDS500_MAX_UNPACKED_BYTES = 1 << 30  # the images are ~50 MB


def pixels_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of an image's pixels: its size `HxW:`, then its H x W x 3 uint8 RGB bytes."""
    image = read_image(path)
    return hashlib.sha256(f"{image.shape[0]}x{image.shape[1]}:".encode()
                          + image.tobytes()).hexdigest()


def _check_kodak_image(path: Path, url: str) -> None:
    name = path.stem
    try:
        digest = pixels_sha256(path)
    except ImageReadError as e:
        path.unlink()
        raise DownloadError(f"{url}: not a readable image ({e}); deleted") from None
    if digest != KODAK_PIXELS_SHA256[name]:
        path.unlink()
        raise DownloadError(f"{url}: its pixels' SHA-256 is {digest}, not Kodak's "
                            f"{KODAK_PIXELS_SHA256[name]}; deleted")


def download_kodak(data: Path | None = None) -> Path:
    """The 24 Kodak PNGs in `data`/kodak (default: data_dir()), fetched from $IMGCOMP_KODAK_URL
    or KODAK_URL and checked, if not there already; returns the folder."""
    folder = (data or data_dir()) / "kodak"
    names = [f"{name}.png" for name in KODAK_PIXELS_SHA256]
    if folder.is_dir():
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DownloadError(f"{folder} exists but lacks {', '.join(missing[:3])}"
                                f"{' ...' if len(missing) > 3 else ''}; move it away to "
                                "download the set")
        print(f"Kodak is in {folder} already", file=sys.stderr)
        return folder
    base = (os.environ.get(KODAK_URL_ENV) or KODAK_URL).rstrip("/") + "/"
    partial = folder.with_name(".kodak.download")  # kept between runs: a rerun goes on
    for name in tqdm(names, desc="Kodak", unit="image"):
        path, url = partial / name, base + name
        if path.is_file():
            if pixels_sha256(path) == KODAK_PIXELS_SHA256[path.stem]:
                continue
            path.unlink()
        try:
            download(url, path, progress=False)
        except DownloadError as e:
            raise DownloadError(f"{e}. To install by hand: download kodim01.png ... "
                                f"kodim24.png from {base} into {folder}") from None
        _check_kodak_image(path, url)
    os.rename(partial, folder)
    return folder


def download_bsds500(data: Path | None = None) -> Path:
    """BSDS500's images in `data`/bsds500/{train,val,test} (default: data_dir()), from
    $IMGCOMP_BSDS500_URL or BSDS500_URL, the archive checked against BSDS500_SHA256, if not
    there already; returns the folder."""
    folder = (data or data_dir()) / "bsds500"
    if folder.is_dir():
        print(f"BSDS500 is in {folder} already", file=sys.stderr)
        return folder
    url = os.environ.get(BSDS500_URL_ENV) or BSDS500_URL
    archive = folder.with_name("BSR_bsds500.tgz")  # removed below
    try:
        download(url, archive, sha256=BSDS500_SHA256)
    except DownloadError as e:
        raise DownloadError(f"{e}. To install by hand: download {url}, extract it and move "
                            f"its {BSDS500_IMAGES} to {folder}") from None
    try:
        with staging_dir(folder.parent) as stage:
            extract_tar(archive, stage, max_bytes=BSDS500_MAX_UNPACKED_BYTES, label=url,
                        select=lambda p: p.is_relative_to(BSDS500_IMAGES))
            images = stage.joinpath(*BSDS500_IMAGES.parts)
            for split, count in BSDS500_SPLITS.items():
                found = len(list((images / split).glob("*.jpg")))
                if found != count:
                    raise DownloadError(f"{url}: {BSDS500_IMAGES}/{split} holds {found} JPEGs, "
                                        f"not {count}; nothing was installed")
            os.rename(images, folder)
    finally:
        archive.unlink(missing_ok=True)
    return folder


@dataclass(frozen=True)
class KnownSet:
    """A test set `imgcomp data` lists and downloads."""
    folder: str  # in the data folder
    dataset_name: str  # what val.py and other_codecs.py call (a part of) it
    what: str
    download: Callable[[Path | None], Path]  # (data folder | None) -> the folder installed


KNOWN_SETS = {
    "kodak": KnownSet("kodak", "kodak", "the 24 Kodak PhotoCD PNGs (768x512)", download_kodak),
    "bsds500": KnownSet("bsds500", "bsds500_val", "BSDS500 JPEGs (481x321): train 200, val 100, "
                        "test 200", download_bsds500),
}
