"""Downloads (imgcomp.base.download, imgcomp.checkpoints.download, imgcomp.data.test_sets,
`imgcomp models --download authors`, `imgcomp data --download`), against an HTTP server on the
loopback address that serves what each test gives it, with Range support, and can drop a
connection midway.

The authors' archive is built from the original TF log dir of
$IMGCOMP_SHARED/fixtures/original_tf1, as three log dirs named after the authors' job ids (the
fixture's weights, each copy with one bias shifted so that their fingerprints differ), under
one folder `ckpts/` as in the release.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_tf_checkpoint import write_bundle

from imgcomp import cli
from imgcomp.base.download import DownloadError, download
from imgcomp.base.image_files import resolve_images
from imgcomp.checkpoints import download as models_download
from imgcomp.checkpoints import zoo
from imgcomp.data import test_sets
from imgcomp.evaluation import validation
from imgcomp.original.tf_bundle import read_tf_checkpoint
from imgcomp.original.tf_log_dirs import configs_from_log_dir_name, tf_variable_map

SHARED = os.environ.get("IMGCOMP_SHARED")
FIXTURE = Path(SHARED or "", "fixtures", "original_tf1", "0101_0001 cvpr@med cvpr@res_shallow")
KODAK = Path(SHARED or "", "data", "kodak")
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason="needs $IMGCOMP_SHARED")
needs_kodak = pytest.mark.skipif(not KODAK.is_dir(), reason="needs $IMGCOMP_SHARED")
# The authors' job ids; the fixture's weights are those of the C = 32 configs (cvpr/low, med).
AUTHORS_DIRS = ("0515_1103 cvpr@low cvpr@res_shallow", "0515_1309 cvpr@med cvpr@res_shallow",
                "0515_1310 cvpr@med cvpr@res_shallow")


# --- the server ----------------------------------------------------------------------------------

@dataclass
class Site:
    """What the server serves (name -> bytes), the (name, Range header) of each request, and
    the names whose next whole-file request is cut after half the body."""
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    if_ranges: list[str | None] = field(default_factory=list)  # their If-Range headers
    drop_once: set[str] = field(default_factory=set)
    ranges: bool = True  # False: Range headers are ignored, the whole file sent
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        site: Site = self.server.site
        name, wanted = self.path.lstrip("/"), self.headers.get("Range")
        site.requests.append((name, wanted))
        site.if_ranges.append(self.headers.get("If-Range"))
        wanted = wanted if site.ranges else None
        data = site.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted else 0
        if start >= len(data) > 0:
            self.send_error(416)
            return
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", '"1"')
        self.end_headers()
        body = data[start:]
        if name in site.drop_once and not wanted:
            site.drop_once.discard(name)
            body = body[:len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(files: dict[str, bytes]):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.site = Site(dict(files), port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server.site
    finally:
        server.shutdown()
        server.server_close()


# --- archives ------------------------------------------------------------------------------------

def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


@pytest.fixture(scope="module")
def authors_tar(tmp_path_factory) -> bytes:
    """The release as the tests serve it: ckpts/<the three log dirs>/ckpts/ckpt-0.* and the
    original's `lock` file, an uncompressed tar (the downloader reads any tar; gzip would take
    seconds here)."""
    if not FIXTURE.is_dir():
        pytest.skip("needs $IMGCOMP_SHARED")
    ae_cfg, _ = configs_from_log_dir_name(FIXTURE)
    names = [tf for _, tf, _ in tf_variable_map(ae_cfg.arch_param_B)] + ["global_step"]
    tensors = read_tf_checkpoint(FIXTURE / "ckpts" / "ckpt-0", names)
    root = tmp_path_factory.mktemp("release") / "ckpts"
    for i, name in enumerate(AUTHORS_DIRS):
        ckpts = root / name / "ckpts"
        ckpts.mkdir(parents=True)
        bias = "probclass3d/logits/conv3d_conv2_mask/biases"
        write_bundle(ckpts / "ckpt-0", {**tensors, bias: tensors[bias] + np.float32(0.01 * i)})
        shutil.copy(FIXTURE / "ckpts" / "checkpoint", ckpts)
    (root / "lock").touch()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(root, "ckpts")
    return buffer.getvalue()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@dataclass
class Install:
    code: int
    out: str
    err: str
    requests: list[tuple[str, str | None]]
    cache: Path  # $XDG_CACHE_HOME of the install


@pytest.fixture(scope="module")
def authors_install(authors_tar, tmp_path_factory) -> Install:
    """`imgcomp models --download authors` run once, from a folder outside the checkout, with
    $IMGCOMP_MODELS unset (so into the user's cache dir), the first transfer cut halfway."""
    cache = tmp_path_factory.mktemp("cache")
    with serve({"ckpts.tar.gz": authors_tar}) as site, pytest.MonkeyPatch.context() as mp:
        site.drop_once.add("ckpts.tar.gz")
        mp.setenv("XDG_CACHE_HOME", str(cache))
        mp.delenv(zoo.MODELS_PATH_ENV, raising=False)
        mp.setenv(models_download.AUTHORS_URL_ENV, site.url("ckpts.tar.gz"))
        mp.chdir(tmp_path_factory.mktemp("elsewhere"))
        code, out, err = run_cli(["models", "--download", "authors"])
        return Install(code, out, err, list(site.requests), cache)


def test_download_resumes_checks_and_lists_the_authors_models(authors_install, authors_tar):
    assert authors_install.code == 0, authors_install.err
    # The first transfer was cut halfway; the second asked for the rest only.
    half = len(authors_tar) // 2
    assert authors_install.requests == [("ckpts.tar.gz", None),
                                         ("ckpts.tar.gz", f"bytes={half}-")]
    assert f"sha256 {hashlib.sha256(authors_tar).hexdigest()}" in authors_install.err
    models = authors_install.cache / "imgcomp" / "models"
    assert sorted(os.listdir(models)) == sorted(AUTHORS_DIRS)  # no archive, staging, part
    lines = {line.split()[0]: line for line in authors_install.out.splitlines()}
    fingerprints = set()
    for paper, name in zip(zoo.AUTHORS, AUTHORS_DIRS, strict=True):
        row = lines[paper.label].split()
        assert row[1] == paper.job_id == name.split()[0]
        assert row[3:7] == [f"{paper.kodak_bpp:.3f}", "/", f"{paper.kodak_ms_ssim:.3f}",
                            "(paper)"]
        assert lines[paper.label].endswith(str(models / name))
        fingerprints.add(row[2])
    assert len(fingerprints) == 3 and all(len(f) == 16 for f in fingerprints)


def test_downloaded_models_encode_decode_and_validate(authors_install, tmp_path, monkeypatch,
                                                      capsys):
    """From the user's models folder: encode -m JOB_ID, decode and info by fingerprint, -m A,
    and val.py ROOT JOB_ID kodak --real_bpp with the downloaded Kodak folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(authors_install.cache))
    monkeypatch.delenv(zoo.MODELS_PATH_ENV, raising=False)
    monkeypatch.delenv("VAL_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    kodak = authors_install.cache / "imgcomp" / "data" / "kodak"
    kodak.mkdir(parents=True, exist_ok=True)
    with Image.open(KODAK / "kodim19.png") as img:
        img.crop((0, 0, 48, 32)).save(kodak / "kodim19.png")
    assert zoo.find("A") == zoo.find("0515_1103")
    photo = tmp_path / "photo.png"
    shutil.copy(kodak / "kodim19.png", photo)
    assert cli.main(["encode", "-m", "0515_1103", str(photo), "-o", "photo.imgc"]) == 0
    assert cli.main(["decode", "photo.imgc", "-o", "out.png"]) == 0
    assert cli.main(["info", "photo.imgc"]) == 0
    out = capsys.readouterr().out
    fingerprint = zoo.find("A").fingerprint
    assert "model A)" in out and f"model: A ({fingerprint})" in out
    assert np.asarray(Image.open("out.png")).shape == (32, 48, 3)

    models = authors_install.cache / "imgcomp" / "models"
    assert validation.main([str(models), "0515_1103", "kodak", "--real_bpp"]) == 0
    results = models / "0515_1103 kodak"
    assert (results / "measures.csv").is_file() and (results / "real_bpp.csv").is_file()


def test_original_log_dir_on_the_search_path(monkeypatch, tmp_path):
    """$IMGCOMP_MODELS holding an original TF log dir: listed with its fingerprint, and
    `imgcomp info` names it (it used to end in a traceback: no file ckpts/ckpt-0)."""
    if not FIXTURE.is_dir():
        pytest.skip("needs $IMGCOMP_SHARED")
    monkeypatch.setenv(zoo.MODELS_PATH_ENV, str(FIXTURE.parent))
    code, out, err = run_cli(["models"])
    assert code == 0, err
    (row,) = [line.split() for line in out.splitlines() if line.startswith("0101_0001")]
    fingerprint = zoo.fingerprint_of(FIXTURE)
    assert row[:3] == ["0101_0001", "0101_0001", fingerprint]
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(photo)
    assert run_cli(["encode", "-m", str(FIXTURE), str(photo), "-o",
                    str(tmp_path / "p.imgc")])[0] == 0
    code, out, err = run_cli(["info", str(tmp_path / "p.imgc")])
    assert code == 0 and f"model: 0101_0001 ({fingerprint})" in out


def test_second_download_fetches_nothing(authors_install, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(authors_install.cache))
    monkeypatch.delenv(zoo.MODELS_PATH_ENV, raising=False)
    with serve({}) as site:
        monkeypatch.setenv(models_download.AUTHORS_URL_ENV, site.url("ckpts.tar.gz"))
        code, out, err = run_cli(["models", "--download", "authors"])
        assert code == 0 and "installed in" in err and site.requests == []


def test_a_failed_transfer_resumes_in_the_next_call(tmp_path):
    """The partial file outlives a failed call; the next one asks for the rest (If-Range: the
    same file), and a server that ignores Range gets the whole file written anew."""
    data = os.urandom(100_000)
    dest = tmp_path / "f.bin"
    with serve({"f.bin": data}) as site:
        site.drop_once.add("f.bin")
        with pytest.raises(DownloadError, match="stopped at byte 50000 of 100000 .run again"):
            download(site.url("f.bin"), dest, attempts=1, progress=False)
        assert not dest.exists() and (tmp_path / ".f.bin.part").stat().st_size == 50_000
        assert download(site.url("f.bin"), dest) == hashlib.sha256(data).hexdigest()
        assert site.requests == [("f.bin", None), ("f.bin", "bytes=50000-")]
        assert site.if_ranges == [None, '"1"']  # the ETag of the first response
        assert dest.read_bytes() == data and sorted(os.listdir(tmp_path)) == ["f.bin"]

        site.drop_once.add("f.bin")
        site.ranges = False
        assert download(site.url("f.bin"), tmp_path / "g.bin") == hashlib.sha256(data).hexdigest()
        assert (tmp_path / "g.bin").read_bytes() == data


# --- refused downloads and archives --------------------------------------------------------------

def _log_dir_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """A harmless start: a log dir whose files would be unpacked before the bad member."""
    return [(member("ckpts/0515_1103 cvpr@low cvpr@res_shallow/ckpts/ckpt-0.index"), b"x" * 64)]


HOSTILE = {
    "traversal": ([(member("ckpts/../../evil"), b"owned")], "points outside"),
    "absolute": ([(member("/tmp/evil"), b"owned")], "points outside"),
    "symlink": ([(member("ckpts/evil", tarfile.SYMTYPE, linkname="/etc/passwd"), None)],
                "is a symbolic link"),
    "hardlink": ([(member("ckpts/evil", tarfile.LNKTYPE, linkname="/etc/passwd"), None)],
                 "is a hard link"),
    "device": ([(member("ckpts/evil", tarfile.CHRTYPE, devmajor=1, devminor=3), None)],
               "is a device file"),
    "oversized": ([(member("ckpts/big"), b"\0" * 5000)], "unpacks to more than 4096 bytes"),
    "no log dir": ([(member("ckpts/readme.txt"), b"hello")], "no log dir of the original"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_bad_archives_are_refused_with_one_line(case, tmp_path, monkeypatch):
    members, message = HOSTILE[case]
    models = tmp_path / "models"
    monkeypatch.setenv(zoo.MODELS_PATH_ENV, str(models))
    monkeypatch.setattr(models_download, "MAX_UNPACKED_BYTES", 4096)
    monkeypatch.chdir(tmp_path)
    with serve({"ckpts.tar.gz": tar_bytes(_log_dir_members() + members)}) as site:
        monkeypatch.setenv(models_download.AUTHORS_URL_ENV, site.url("ckpts.tar.gz"))
        code, _, err = run_cli(["models", "--download", "authors"])
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and message in lines[0], err
    assert site.url("ckpts.tar.gz") in lines[0]
    assert os.listdir(models) == []  # no log dir, archive, staging folder or partial file
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_corrupt_archive_and_wrong_sha256_install_nothing(tmp_path, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setenv(zoo.MODELS_PATH_ENV, str(models))
    good = tar_bytes(_log_dir_members())
    with serve({"truncated.tar.gz": good[:len(good) // 2], "ckpts.tar.gz": good}) as site:
        monkeypatch.setenv(models_download.AUTHORS_URL_ENV, site.url("truncated.tar.gz"))
        code, _, err = run_cli(["models", "--download", "authors"])
        assert code == 1 and "not a readable tar archive" in err and os.listdir(models) == []
        monkeypatch.setenv(models_download.AUTHORS_URL_ENV, site.url("ckpts.tar.gz"))
        code, _, err = run_cli(["models", "--download", "authors", "--sha256", "ab" * 32])
    digest = hashlib.sha256(good).hexdigest()
    assert code == 1 and f"SHA-256 is {digest}, expected {'ab' * 32}" in err
    assert os.listdir(models) == []


def test_no_network_names_the_url_and_the_manual_steps(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.MODELS_PATH_ENV, str(tmp_path / "models"))
    with serve({}) as site:
        url = site.url("ckpts.tar.gz")
    monkeypatch.setenv(models_download.AUTHORS_URL_ENV, url)  # the server is gone
    code, _, err = run_cli(["models", "--download", "authors"])
    (line,) = err.splitlines()
    assert code == 1 and line.startswith(f"error: cannot download {url}")
    assert f"To install by hand: download {url}" in line and str(tmp_path / "models") in line
    assert os.listdir(tmp_path / "models") == []


# --- test sets -----------------------------------------------------------------------------------

@needs_kodak
def test_recorded_kodak_digests_match_the_set():
    assert {p.stem: test_sets.pixels_sha256(p) for p in sorted(KODAK.glob("*.png"))} \
        == test_sets.KODAK_PIXELS_SHA256


@needs_kodak
def test_kodak_download_checks_pixels_resumes_and_is_found(tmp_path, monkeypatch):
    """Three of the images (the table cut to them): a missing file stops the download (one
    line, the manual steps), a rerun fetches only what is missing, a file with other pixels is
    refused; `kodak` then finds the folder without $VAL_ROOT."""
    names = ["kodim01", "kodim02", "kodim03"]
    monkeypatch.setattr(test_sets, "KODAK_PIXELS_SHA256",
                        {n: test_sets.KODAK_PIXELS_SHA256[n] for n in names})
    monkeypatch.setenv("IMGCOMP_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("VAL_ROOT", raising=False)
    files = {f"{n}.png": (KODAK / f"{n}.png").read_bytes() for n in names}
    with serve({**files, "kodim03.png": files["kodim01.png"]}) as site:
        monkeypatch.setenv(test_sets.KODAK_URL_ENV, site.url(""))
        code, _, err = run_cli(["data", "--download", "kodak"])
        assert code == 1 and f"{site.url('kodim03.png')}: its pixels' SHA-256 is" in err
        del site.files["kodim03.png"]
        code, _, err = run_cli(["data", "--download", "kodak"])
        assert code == 1 and "HTTP 404" in err and "To install by hand" in err
        assert not (tmp_path / "data" / "kodak").exists()
        site.files["kodim03.png"] = files["kodim03.png"]
        site.requests.clear()
        code, out, err = run_cli(["data", "--download", "kodak"])
        assert code == 0, err
        assert site.requests == [("kodim03.png", None)]  # the others were kept
    folder = tmp_path / "data" / "kodak"
    assert sorted(os.listdir(tmp_path / "data")) == ["kodak"]
    assert resolve_images("kodak") == ("kodak", [folder / f"{n}.png" for n in names])
    assert any(line.split()[:3] == ["kodak", "kodak", "3"] for line in out.splitlines())


def test_known_dataset_error_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCOMP_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("VAL_ROOT", str(tmp_path / "val"))
    with pytest.raises(ValueError, match="no images in .*val/kodak/\\*.png nor .*data/kodak/"
                                         "\\*.png; `imgcomp data --download kodak`"):
        resolve_images("kodak")


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 12, 3), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_bsds500_archive_checked_and_images_installed(tmp_path, monkeypatch):
    """A small stand-in of BSR_bsds500.tgz: refused against the recorded SHA-256, installed
    (images only) against its own."""
    jpeg = _jpeg()
    images = "BSR/BSDS500/data/images"
    archive = tar_bytes([(member(f"{images}/{split}/{i}.jpg"), jpeg)
                         for split, count in (("train", 2), ("val", 1), ("test", 1))
                         for i in range(count)]
                        + [(member("BSR/BSDS500/data/groundTruth/val/0.mat"), b"m")])
    monkeypatch.setenv("IMGCOMP_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("VAL_ROOT", raising=False)
    monkeypatch.setattr(test_sets, "BSDS500_SPLITS", {"train": 2, "val": 1, "test": 1})
    with serve({"BSR_bsds500.tgz": archive}) as site:
        monkeypatch.setenv(test_sets.BSDS500_URL_ENV, site.url("BSR_bsds500.tgz"))
        code, _, err = run_cli(["data", "--download", "bsds500"])
        assert code == 1 and f"expected {test_sets.BSDS500_SHA256}" in err
        assert os.listdir(tmp_path / "data") == []
        monkeypatch.setattr(test_sets, "BSDS500_SHA256", hashlib.sha256(archive).hexdigest())
        code, _, err = run_cli(["data", "--download", "bsds500"])
        assert code == 0, err
    folder = tmp_path / "data" / "bsds500"
    assert sorted(os.listdir(tmp_path / "data")) == ["bsds500"]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [
        "test", "test/0.jpg", "train", "train/0.jpg", "train/1.jpg", "val", "val/0.jpg"]
    assert resolve_images("bsds500_val") == ("bsds500_val", [folder / "val" / "0.jpg"])
