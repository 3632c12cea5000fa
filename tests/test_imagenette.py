"""The ``imagenette`` data source, against a local HTTP server serving a generated .tgz.

The server (``ThreadingHTTPServer`` on 127.0.0.1, like tests/test_download.py) honours
``Range`` requests, counts the bytes it serves, and can cut its first answer short.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import local_http_server
from PIL import Image

from advpipe.data import imagenette
from advpipe.data.class_index import imagenet_classes
from advpipe.data.imagenette import (
    IMAGENETTE_CLASSES,
    ImagenetteError,
    check_classes,
    load_imagenette,
    prepare,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "imagenette"
ARCHIVE = "imagenette2-160"
WNIDS = imagenet_classes().wnids


# --------------------------------------------------------------------------- archive
def _jpeg(seed: int, size=(96, 80)) -> bytes:
    from test_download import photo  # photo-like: white noise is rejected as noise

    buffer = io.BytesIO()
    Image.fromarray(photo(size[1], size[0], seed=seed)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


#: (split, class index, file name) of the generated archive; names are out of order
#: on purpose (the reader sorts them).
LAYOUT = [
    ("train", 0, "b.JPEG"),
    ("train", 0, "a.JPEG"),
    ("val", 0, "c.JPEG"),
    ("train", 217, "x.JPEG"),
    ("val", 217, "y.JPEG"),
    ("val", 217, "a.JPEG"),
]


def make_tgz(top: str = ARCHIVE) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for seed, (split, label, name) in enumerate(LAYOUT):
            data = _jpeg(seed)
            info = tarfile.TarInfo(f"{top}/{split}/{WNIDS[label]}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def expected_order() -> list[str]:
    """Per class: train sorted by name, then val sorted by name."""
    out = []
    for label in (0, 217):
        for split in ("train", "val"):
            out += sorted(
                f"{split}/{WNIDS[label]}/{n}" for s, c, n in LAYOUT if s == split and c == label
            )
    return out


# --------------------------------------------------------------------------- server
@dataclass
class ArchiveServer:
    body: bytes = b""
    base: str = ""
    cut_first: int | None = None  # first answer: send this many bytes, then hang up
    requests: list[str | None] = field(default_factory=list)  # the Range header of each
    served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"{self.base}/{ARCHIVE}.tgz"


def _handler(state: ArchiveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            if self.path != f"/{ARCHIVE}.tgz":
                self.send_error(404)
                return
            body, header = state.body, self.headers.get("Range")
            with state.lock:
                state.requests.append(header)
                first = len(state.requests) == 1
            start = 0
            if header and header.startswith("bytes=") and header.endswith("-"):
                start = int(header[6:-1])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Type", "application/x-tar")
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Connection", "close")
            self.end_headers()
            if first and state.cut_first is not None:
                chunk = chunk[: state.cut_first]
            try:
                self.wfile.write(chunk)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            with state.lock:
                state.served += len(chunk)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[ArchiveServer]:
    state = ArchiveServer(body=make_tgz())
    with local_http_server(_handler(state)) as base:
        state.base = base
        yield state


def settings(cache: Path, **kw) -> dict:
    return {
        "archive": ARCHIVE,
        "url": None,
        "sha256": None,
        "path": None,
        "cache_dir": str(cache),
        **kw,
    }


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# --------------------------------------------------------------------------- tests
def test_good_archive_downloaded_once_and_read_in_order(server, tmp_path):
    cache = tmp_path / "cache"
    messages: list[str] = []
    images, manifest, report = load_imagenette(
        settings(cache, url=server.url), [0, 217], per_class=3, size=32, progress=messages.append
    )
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert list(manifest["label"]) == [0, 0, 0, 217, 217, 217]
    root = cache / ARCHIVE
    assert [Path(s).relative_to(root).as_posix() for s in manifest["source"]] == expected_order()
    origin = report["imagenette"]
    assert origin["sha256"] == hashlib.sha256(server.body).hexdigest()
    assert origin["checked_against"] == "none" and origin["reused"] is False
    assert any("MB/s" in m for m in messages)
    assert leftovers(cache) == [ARCHIVE, f"{ARCHIVE}.tgz"]
    assert server.requests == [None] and server.served == len(server.body)
    # a second run re-uses the extracted copy: no request at all
    _, again, report2 = load_imagenette(
        settings(cache, url=server.url), [217], per_class=2, size=32
    )
    assert len(server.requests) == 1 and report2["imagenette"]["reused"] is True
    assert list(again["source"]) == list(manifest["source"][3:5])
    # the right checksum, given explicitly, is accepted (and the copy re-used)
    good = hashlib.sha256(server.body).hexdigest()
    _, info = prepare(settings(cache, url=server.url, sha256=good))
    assert info["sha256"] == good


def test_truncated_archive_is_an_error_and_leaves_nothing(server, tmp_path):
    server.body = server.body[: len(server.body) // 2]  # complete answer, broken archive
    cache = tmp_path / "cache"
    with pytest.raises(ImagenetteError) as err:
        prepare(settings(cache, url=server.url))
    message = str(err.value)
    assert "\n" not in message and "not a complete .tgz archive" in message
    assert leftovers(cache) == []  # no extracted dir, no temp dir, the bad download deleted


def test_truncated_tar_inside_an_intact_gzip_stream(server, tmp_path):
    # the gzip CRC is fine, the tar inside is cut in the middle of a member: the
    # extraction catches it, and the temp folder and the download are removed
    tar = gzip.decompress(server.body)
    server.body = gzip.compress(tar[: len(tar) // 2])
    cache = tmp_path / "cache"
    with pytest.raises(ImagenetteError, match="is not a complete .tgz archive") as err:
        prepare(settings(cache, url=server.url))
    assert "\n" not in str(err.value)
    assert leftovers(cache) == []


def test_bad_checksum_names_the_key_and_extracts_nothing(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ImagenetteError) as err:
        prepare(settings(cache, url=server.url, sha256="ab" * 32))
    message = str(err.value)
    assert "\n" not in message and message.startswith("data.imagenette.sha256:")
    assert hashlib.sha256(server.body).hexdigest() in message and "ab" * 32 in message
    assert leftovers(cache) == []


def test_official_url_is_checked_against_the_known_archive(server, tmp_path, monkeypatch):
    monkeypatch.setattr(imagenette, "OFFICIAL_URL", server.base + "/{archive}.tgz")
    with pytest.raises(ImagenetteError) as err:
        prepare(settings(tmp_path / "cache"))
    assert str(err.value).startswith("data.imagenette.sha256:")
    assert f"official {ARCHIVE}" in str(err.value) and "99003388" in str(err.value)
    assert server.requests == [None]
    assert leftovers(tmp_path / "cache") == []


def test_interrupted_download_resumes_with_range(server, tmp_path):
    cache = tmp_path / "cache"
    half = len(server.body) // 2
    server.cut_first = half
    with pytest.raises(ImagenetteError, match="rerun to resume"):
        prepare(settings(cache, url=server.url))
    part = cache / f"{ARCHIVE}.tgz.part"
    assert part.stat().st_size == half
    assert not (cache / ARCHIVE).exists()
    messages: list[str] = []
    root, info = prepare(settings(cache, url=server.url), progress=messages.append)
    assert server.requests == [None, f"bytes={half}-"]
    assert server.served == len(server.body)  # the first half was not sent again
    assert info["sha256"] == hashlib.sha256(server.body).hexdigest()
    assert (root / "train" / WNIDS[0] / "a.JPEG").is_file()
    assert any("resuming" in m for m in messages)
    assert leftovers(cache) == [ARCHIVE, f"{ARCHIVE}.tgz"]


def test_leftover_temp_dir_is_cleaned(server, tmp_path):
    cache = tmp_path / "cache"
    stale = cache / f".{ARCHIVE}.extracting" / ARCHIVE / "train"
    stale.mkdir(parents=True)
    (stale / "half-written.JPEG").write_bytes(b"x")
    prepare(settings(cache, url=server.url))
    assert leftovers(cache) == [ARCHIVE, f"{ARCHIVE}.tgz"]


def test_local_tgz_and_folders(server, tmp_path):
    tgz = tmp_path / "copy.tgz"
    tgz.write_bytes(server.body)
    cache = tmp_path / "cache"
    images, manifest, report = load_imagenette(
        settings(cache, path=str(tgz)), [0], per_class=3, size=32
    )
    assert images.shape == (3, 32, 32, 3) and server.requests == []
    assert report["imagenette"]["path"] == str(tgz.resolve()) and tgz.is_file()
    # the extracted folder itself, as a local path
    _, from_dir, _ = load_imagenette(
        settings(tmp_path / "c2", path=str(cache)), [0, 217], per_class=3, size=32
    )
    assert [
        Path(s).relative_to(cache / ARCHIVE).as_posix() for s in from_dir["source"]
    ] == expected_order()
    assert not (tmp_path / "c2").exists()  # a folder is read in place
    # a folder in the ImageNet `folder` layout (wnid sub-folders, no train/val)
    flat = tmp_path / "flat"
    (flat / WNIDS[217]).mkdir(parents=True)
    (flat / WNIDS[217] / "1.jpg").write_bytes(_jpeg(7))
    _, m, _ = load_imagenette(settings(cache, path=str(flat)), [217], per_class=1, size=32)
    assert list(m["source"]) == [str(flat / WNIDS[217] / "1.jpg")]
    # a bad local .tgz (sha256 given) is left where it is
    with pytest.raises(ImagenetteError, match="data.imagenette.sha256"):
        prepare(settings(tmp_path / "c3", path=str(tgz), sha256="0" * 64))
    assert tgz.is_file()
    with pytest.raises(ImagenetteError, match="data.imagenette.path: .* does not exist"):
        prepare(settings(cache, path=str(tmp_path / "nope.tgz")))


def test_other_classes_are_rejected_with_the_list():
    check_classes(list(IMAGENETTE_CLASSES))
    with pytest.raises(ImagenetteError) as err:
        check_classes([0, 96], key="data.defense_set")
    message = str(err.value)
    assert message.startswith("data.defense_set: class 96 (toucan) is not in Imagenette")
    assert "0 (tench), 217 (English springer)" in message and "701 (parachute)" in message


# --------------------------------------------------------------------------- the stage
def _stage_repo(tmp_path: Path, data: dict) -> Path:
    work = tmp_path / "repo"
    (work / "stages").mkdir(parents=True)
    for script in ("data.py", "common.py"):
        (work / "stages" / script).write_text((ROOT / "stages" / script).read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in data.items():
        node = params["data"]
        *parents, last = key.split(".")
        for k in parents:
            node = node[k]
        node[last] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return work


def _run_stage(work: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    return subprocess.run(
        [sys.executable, "stages/data.py"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_stage_each_set_from_its_own_source(server, tmp_path):
    import json

    import pandas as pd

    work = _stage_repo(
        tmp_path,
        {
            "attack_set.source": "imagenette",
            "attack_set.first": None,
            "attack_set.indices": [0, 217],
            "attack_set.per_class": 2,
            "defense_set.source": "samples",
            "imagenette.url": server.url,
            "imagenette.cache_dir": "cache",
        },
    )
    proc = _run_stage(work)
    assert proc.returncode == 0, proc.stderr
    attack = pd.read_csv(work / "data/attack/manifest.csv")
    assert list(attack["label"]) == [0, 0, 217, 217]
    defense = pd.read_csv(work / "data/defense/manifest.csv")
    assert len(defense) == 20 and defense["source"].str.startswith("foolbox:").all()
    assert defense["split"].value_counts().to_dict() == {"train": 12, "val": 4, "test": 4}
    metrics = json.loads((work / "metrics/data.json").read_text())
    assert metrics["attack"]["source"] == "imagenette"
    assert metrics["attack"]["imagenette"]["sha256"] == hashlib.sha256(server.body).hexdigest()
    assert metrics["defense"]["source"] == "samples"
    assert "MB/s" in proc.stderr


@pytest.mark.slow
def test_stage_one_line_error_for_a_class_imagenette_lacks(tmp_path):
    work = _stage_repo(
        tmp_path, {"defense_set.source": "imagenette", "defense_set.indices": [0, 96, 482]}
    )
    proc = _run_stage(work)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    # one error line, last; before it only the model-weights check (no data work started)
    assert lines[-1].startswith(
        "error: data.defense_set: class 96 (toucan) is not in Imagenette; its classes are 0 (tench)"
    )
    assert all(line.startswith("data: model ") for line in lines[:-1]), lines
    assert "Traceback" not in proc.stderr
    assert not (work / "data").exists()


@pytest.mark.slow
def test_stage_reads_the_shared_imagenette_folder(tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present")
    import pandas as pd

    work = _stage_repo(
        tmp_path,
        {
            "attack_set.source": "imagenette",
            "attack_set.first": None,
            "attack_set.indices": [217, 701],
            "attack_set.per_class": 2,
            "imagenette.path": str(SHARED),
            "defense_set.source": "folder",
            "defense_set.indices": [0, 482, 574],
            "defense_set.per_class": 5,
            "folder.path": str(SHARED),
        },
    )
    proc = _run_stage(work)
    assert proc.returncode == 0, proc.stderr
    attack = pd.read_csv(work / "data/attack/manifest.csv")
    assert list(attack["label"]) == [217, 217, 701, 701]
    defense = pd.read_csv(work / "data/defense/manifest.csv")
    assert defense["label"].value_counts().to_dict() == {0: 5, 482: 5, 574: 5}
    first = sorted((SHARED / WNIDS[0]).iterdir())[0]
    assert defense["source"][0] == str(first)
    img = np.asarray(Image.open(work / "data/defense" / defense["file"][0]))
    assert img.shape == (224, 224, 3) and img.std() > 10


@pytest.mark.slow
def test_stage_one_line_error_for_an_unreadable_folder_class(tmp_path):
    folder = tmp_path / "imagenet"
    for label in (1, 2):
        (folder / WNIDS[label]).mkdir(parents=True)
        (folder / WNIDS[label] / "0.JPEG").write_bytes(_jpeg(label) if label == 1 else b"junk")
    work = _stage_repo(
        tmp_path,
        {
            "attack_set.source": "folder",
            "attack_set.first": None,
            "attack_set.indices": [1, 2],
            "attack_set.per_class": 1,
            "folder.path": str(folder),
        },
    )
    proc = _run_stage(work)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: data.folder.path: class 2 ({WNIDS[2]}, great white shark) "
        "has no usable image (1 files; decode_error: 1)"
    )
    # with skip_unreadable_classes the stage goes on without class 2
    work = _stage_repo(
        tmp_path / "b",
        {
            "attack_set.source": "folder",
            "attack_set.first": None,
            "attack_set.indices": [1, 2],
            "attack_set.per_class": 1,
            "folder.path": str(folder),
            "folder.skip_unreadable_classes": True,
        },
    )
    proc = _run_stage(work)
    assert proc.returncode == 0, proc.stderr
    assert "class 2" in proc.stderr and "skipped" in proc.stderr
    assert (work / "data/attack/manifest.csv").read_text().count("\n") == 2  # header + 1 row
