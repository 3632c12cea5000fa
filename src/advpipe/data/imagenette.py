"""Imagenette, the public 10-class subset of ImageNet, as data source (``source: imagenette``).

fast.ai publishes it as ``https://s3.amazonaws.com/fast-ai-imageclas/<archive>.tgz``
(``imagenette2-160``, ``imagenette2-320``, ``imagenette2`` full size), laid out as
``<archive>/train/<wnid>/*.JPEG`` and ``<archive>/val/<wnid>/*.JPEG``. Only ten ImageNet
classes exist (:data:`IMAGENETTE_CLASSES`).

:func:`prepare` makes an extracted copy available under ``cache_dir``:

* **download once, resumable** -- the archive is streamed to ``<archive>.tgz.part``; a
  rerun after an interruption asks for the rest with an HTTP ``Range`` request and
  appends (a server that ignores ``Range`` makes it start over). The finished file is
  renamed to ``<archive>.tgz``. Progress (MB, %, MB/s) goes to the ``progress`` callback.
* **verified** -- against ``sha256`` when given; else, for the official URL, against the
  size and sha256 recorded for the current fast.ai archives (TensorFlow Datasets'
  ``imagenette/checksums.tsv``); else (a mirror, a local ``.tgz``) the whole gzip stream
  is decompressed once to check its CRC and length. The sha256 computed is returned and
  recorded next to the extracted copy. A downloaded archive that fails is deleted.
* **extracted atomically** -- into ``.<archive>.extracting`` next to the target, then
  renamed to ``cache_dir/<archive>``; a leftover temp folder from an interrupted run is
  removed first, and a failed extraction leaves nothing behind.
* **re-used** -- a later run finds ``cache_dir/<archive>`` (with its record of where it
  came from and its sha256) and neither downloads nor extracts again.

``path`` replaces the download with a local copy: a ``.tgz`` (verified and extracted as
above) or a folder (an extracted archive, or any folder in the ImageNet ``folder`` layout).

Images are taken per class deterministically, sorted by name, ``train`` then ``val``,
through the ``folder`` source's reader (the same checks as downloads).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from .class_index import imagenet_classes
from .download_settings import DEFAULT_USER_AGENT
from .errors import DataError
from .folder import ImageChecks, image_files, load_class_files
from .http_fetch import build_opener, classify_exception

#: The ImageNet class indices of Imagenette's ten classes.
IMAGENETTE_CLASSES: tuple[int, ...] = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)
OFFICIAL_URL = "https://s3.amazonaws.com/fast-ai-imageclas/{archive}.tgz"
#: (bytes, sha256) of the current official archives, as recorded by TensorFlow Datasets
#: (tensorflow_datasets/datasets/imagenette/checksums.tsv); imagenette2-320 is confirmed
#: by FastAI.jl's DataDeps registry. fast.ai re-uploaded the archives once (2021): if
#: that happens again, set ``data.imagenette.sha256`` to the new, checked value.
KNOWN_ARCHIVES: dict[str, tuple[int, str]] = {
    "imagenette2-160": (99_003_388,
                        "64d0c4859f35a461889e0147755a999a48b49bf38a7e0f9bd27003f10db02fe5"),
    "imagenette2-320": (341_663_724,
                        "569b4497c98db6dd29f335d1f109cf315fe127053cedf69010d047f0188e158c"),
    "imagenette2": (1_557_161_267,
                    "6cbfac238434d89fe99e651496f0812ebc7a10fa62bd42d6874042bf01de4efd"),
}
RECORD = ".advpipe-source.json"
_DEFAULT_CHECKS = ImageChecks()
_CHUNK = 1 << 20

Progress = Callable[[str], None]


class ImagenetteError(DataError):
    """A one-line, user-fixable problem with the Imagenette source."""


@dataclass(frozen=True)
class ImagenetteSettings:
    """The ``data.imagenette`` params (field names = keys).

    Attributes:
        archive: ``imagenette2-160``, ``imagenette2-320`` or ``imagenette2`` (full size).
        url: None: the official fast.ai URL of ``archive``; or any http(s) URL.
        sha256: None: the known checksum of the official archive; a string: required.
        path: a local copy instead of a download: the ``.tgz`` or an extracted folder.
        cache_dir: where the archive is downloaded and extracted.
    """

    archive: str = "imagenette2-160"
    url: str | None = None
    sha256: str | None = None
    path: str | None = None
    cache_dir: str = "data/raw/imagenette"

    @classmethod
    def of(cls, settings: ImagenetteSettings | Mapping) -> ImagenetteSettings:
        """``settings`` itself, or the settings of a mapping with these keys."""
        return settings if isinstance(settings, cls) else cls(**settings)


def check_classes(classes: Sequence[int], key: str = "data") -> None:
    """Raise :class:`ImagenetteError` naming the first class Imagenette does not have."""
    table = imagenet_classes()
    for label in classes:
        if int(label) not in IMAGENETTE_CLASSES:
            available = ", ".join(f"{i} ({table.short_name(i)})" for i in IMAGENETTE_CLASSES)
            raise ImagenetteError(
                f"{key}: class {label} ({table.short_name(int(label))}) is not in Imagenette; "
                f"its classes are {available}")


# --------------------------------------------------------------------------- download
def _fmt_mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def download(url: str, dest: Path, *, timeout: float = 60.0, progress: Progress | None = None,
             every_s: float = 1.0) -> Path:
    """Stream ``url`` to ``dest`` via ``dest.part``, resuming a partial ``.part`` with Range.

    Raises:
        ImagenetteError: on an HTTP or network failure, or a body cut short (the
            ``.part`` file is kept so that a rerun resumes).
    """
    say = progress or (lambda msg: None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    try:
        response = _open_range(url, have, timeout)
    except _StartOver:
        part.unlink()
        return download(url, dest, timeout=timeout, progress=progress, every_s=every_s)
    with response:
        mode, done = _resume_mode(response, url, have)
        if mode == "ab":
            say(f"[imagenette] resuming {dest.name} at {_fmt_mb(have)}")
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        total = done + length if length is not None else None
        meter = _Meter(dest.name, done, total, say, every_s)
        try:
            with open(part, mode) as handle:
                _copy(response, handle, meter)
        except Exception as exc:
            reason, _ = classify_exception(exc)
            raise ImagenetteError(
                f"data.imagenette.url: download of {url} interrupted at {_fmt_mb(meter.done)} "
                f"({reason}); rerun to resume") from None
    if total is not None and meter.done < total:
        raise ImagenetteError(f"data.imagenette.url: download of {url} interrupted at "
                              f"{_fmt_mb(meter.done)} of {_fmt_mb(total)}; rerun to resume")
    meter.finish()
    os.replace(part, dest)
    return dest


class _StartOver(Exception):
    """The server refused the Range of a partial download (HTTP 416): start over."""


def _open_range(url: str, have: int, timeout: float):
    """The response to a GET of ``url`` from byte ``have`` on.

    Raises:
        _StartOver: HTTP 416 to a resume request.
        ImagenetteError: any other HTTP or network failure.
    """
    headers = {"User-Agent": DEFAULT_USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return build_opener(5).open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # the .part is not a prefix the server knows
            raise _StartOver() from None
        raise ImagenetteError(f"data.imagenette.url: {url}: HTTP {exc.code}") from None
    except Exception as exc:
        reason, _ = classify_exception(exc)
        raise ImagenetteError(f"data.imagenette.url: {url}: {reason}") from None


def _resume_mode(response, url: str, have: int) -> tuple[str, int]:
    """(file mode, bytes already there): append after a 206 to a resume, else from scratch."""
    if response.status == 206 and have:
        content_range = response.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {have}-"):
            raise ImagenetteError(f"data.imagenette.url: {url}: the server answered the "
                                  f"resume request with Content-Range '{content_range}'")
        return "ab", have
    if response.status == 200:
        return "wb", 0  # no Range support, or a fresh download
    raise ImagenetteError(f"data.imagenette.url: {url}: HTTP {response.status}")


class _Meter:
    """Counts the bytes of a download and reports progress (MB, %, MB/s) every ``every_s``."""

    def __init__(self, name: str, done: int, total: int | None, say: Progress,
                 every_s: float) -> None:
        self.name, self.done, self.total, self.say, self.every_s = name, done, total, say, every_s
        self.start_done, self.started, self.last = done, time.monotonic(), 0.0

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = (self.done - self.start_done) / 1e6 / max(now - self.started, 1e-9)
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            of = "/" + _fmt_mb(self.total) if self.total else ""
            self.say(f"[imagenette] {self.name}: {_fmt_mb(self.done)}{of}{share}, {rate:.1f} MB/s")

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        self.say(f"[imagenette] {self.name}: {_fmt_mb(self.done)} done, "
                 f"{(self.done - self.start_done) / 1e6 / max(elapsed, 1e-9):.1f} MB/s")


def _copy(response, handle: BinaryIO, meter: _Meter) -> None:
    """Copy the response body to ``handle`` (flushed and synced), counting it in ``meter``."""
    while chunk := response.read(_CHUNK):
        handle.write(chunk)
        meter.add(len(chunk))
    handle.flush()
    os.fsync(handle.fileno())


# --------------------------------------------------------------------------- verify
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def check_gzip(path: Path) -> None:
    """Decompress the whole gzip stream once (CRC and length checked at its end).

    Raises:
        ImagenetteError: naming the file when it is not a complete gzip stream.
    """
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(_CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise ImagenetteError(f"data.imagenette: '{path}' is not a complete .tgz archive "
                              f"({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:120] or type(exc).__name__


@dataclass(frozen=True)
class Expected:
    """What an archive must match: sha256 and size (either may be unknown)."""

    sha256: str | None
    size: int | None
    origin: str  # "data.imagenette.sha256", "official <archive>" or "none"


def verify(path: Path, expected: Expected) -> str:
    """Check ``path`` against ``expected`` (or its gzip integrity); return its sha256."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise ImagenetteError(
            f"data.imagenette.sha256: '{path}' has {size} bytes, the {expected.origin} "
            f"archive has {expected.size}; if fast.ai replaced it, check the new file and "
            "set data.imagenette.sha256 to its sha256")
    digest = sha256_of(path)
    if expected.sha256 is not None and digest != expected.sha256:
        where = ("the value of data.imagenette.sha256" if expected.origin == "given"
                 else f"the known checksum of the {expected.origin} archive")
        raise ImagenetteError(
            f"data.imagenette.sha256: '{path}' has sha256 {digest}, expected {expected.sha256} "
            f"({where})")
    if expected.sha256 is None:
        check_gzip(path)
    return digest


# --------------------------------------------------------------------------- extract
def _layout_root(folder: Path) -> Path:
    """The folder holding train/ and val/ (or the wnid folders) inside ``folder``."""
    wnids = {imagenet_classes().wnids[i] for i in IMAGENETTE_CLASSES}
    node = folder
    for _ in range(3):
        names = {p.name for p in node.iterdir() if p.is_dir()}
        if {"train", "val"} & names or wnids & names:
            return node
        entries = [p for p in node.iterdir() if not p.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            break
        node = entries[0]
    raise ImagenetteError(f"data.imagenette: '{folder}' has neither train/ and val/ nor "
                          "Imagenette WordNet-id folders")


def _extract_all(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract regular files and folders only, never outside ``dest``."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        tar.extractall(dest, filter="data")
        return
    members = []
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts:
            raise tarfile.TarError(f"unsafe member path {member.name!r}")
        if member.isfile() or member.isdir():
            members.append(member)
    tar.extractall(dest, members=members)


def extract(archive: Path, target: Path, record: Mapping) -> Path:
    """Extract ``archive`` to ``target`` atomically (temp folder next to it, then rename)."""
    tmp = target.with_name(f".{target.name}.extracting")
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from an interrupted run
    tmp.mkdir(parents=True)
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                _extract_all(tar, tmp)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise ImagenetteError(f"data.imagenette: '{archive}' is not a complete .tgz "
                                  f"archive ({_one_line(exc)})") from None
        root = _layout_root(tmp)
        (root / RECORD).write_text(json.dumps(dict(record), indent=1, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)  # a stale copy (other archive version)
        os.replace(root, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _read_record(target: Path) -> dict | None:
    try:
        return json.loads((target / RECORD).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- prepare
def _source(settings: ImagenetteSettings) -> tuple[Path | None, dict, Expected]:
    """(the local copy or None, the origin record, what the archive must match)."""
    given = settings.sha256.lower() if settings.sha256 else None
    if settings.path:
        local = Path(settings.path)
        if not local.exists():
            raise ImagenetteError(f"data.imagenette.path: '{local}' does not exist")
        origin = {"path": str(local.resolve())} if local.is_file() else {"path": str(local)}
        return local, origin, Expected(given, None, "given" if given else "none")
    url = settings.url or OFFICIAL_URL.format(archive=settings.archive)
    if given:
        expected = Expected(given, None, "given")
    elif settings.url is None and settings.archive in KNOWN_ARCHIVES:
        size, digest = KNOWN_ARCHIVES[settings.archive]
        expected = Expected(digest, size, f"official {settings.archive}")
    else:
        expected = Expected(None, None, "none")
    return None, {"url": url}, expected


def _reusable(target: Path, origin: dict, expected: Expected) -> dict | None:
    """The record of an extracted copy that matches the wanted archive, or None."""
    record = _read_record(target) if target.is_dir() else None
    if record is None:
        return None
    if expected.sha256:
        return record if record.get("sha256") == expected.sha256 else None
    return record if {k: record.get(k) for k in origin} == origin else None


def prepare(settings: ImagenetteSettings | Mapping,
            progress: Progress | None = None) -> tuple[Path, dict]:
    """A folder with the Imagenette images (see the module doc) and a report of its origin.

    ``settings``: :class:`ImagenetteSettings` (or a mapping with its keys).
    """
    settings = ImagenetteSettings.of(settings)
    say = progress or (lambda msg: None)
    local, origin, expected = _source(settings)
    if local is not None and local.is_dir():
        return _layout_root(local), origin
    target = Path(settings.cache_dir) / settings.archive
    record = _reusable(target, origin, expected)
    if record is not None:
        say(f"[imagenette] using {target} (sha256 {record['sha256'][:12]}...)")
        return target, {**record, "folder": str(target), "reused": True}
    tgz = local if local is not None else Path(settings.cache_dir) / f"{settings.archive}.tgz"
    if local is None and not tgz.is_file():
        say(f"[imagenette] downloading {origin['url']} to {tgz}")
        download(origin["url"], tgz, progress=say)
    record = _verify_and_extract(tgz, target, expected, downloaded=local is None, say=say,
                                 record={**origin, "archive": settings.archive})
    return target, {**record, "folder": str(target), "reused": False}


def _verify_and_extract(tgz: Path, target: Path, expected: Expected, downloaded: bool,
                        say: Progress, record: dict) -> dict:
    """Verify ``tgz`` and extract it to ``target``; a failed download is deleted."""
    try:
        say(f"[imagenette] verifying {tgz}")
        digest = verify(tgz, expected)
        say(f"[imagenette] extracting {tgz} to {target}")
        record = {**record, "sha256": digest, "bytes": tgz.stat().st_size,
                  "checked_against": expected.origin}
        extract(tgz, target, record)
    except ImagenetteError:
        if downloaded:
            tgz.unlink()  # a rerun downloads it again
        raise
    return record


def split_folders(root: Path) -> list[Path]:
    """``root/train`` then ``root/val`` where they exist, else ``root`` itself."""
    splits = [root / s for s in ("train", "val") if (root / s).is_dir()]
    return splits or [root]


def load_imagenette(settings: ImagenetteSettings | Mapping, classes: list[int], per_class: int,
                    *, size: int = 224,
                    resample: str = "bicubic", crop_ratio: float = 1.0,
                    checks: ImageChecks = _DEFAULT_CHECKS, progress: Progress | None = None
                    ) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """``per_class`` images of each class: sorted by name, ``train`` then ``val``."""
    check_classes(classes)
    root, origin = prepare(settings, progress)
    table = imagenet_classes()
    folders = split_folders(root)
    files_by_class = {}
    for label in classes:
        wnid = table.wnids[label]
        present = [f / wnid for f in folders if (f / wnid).is_dir()]
        if not present:
            raise ImagenetteError(f"data.imagenette: no folder {wnid} for class {label} "
                                  f"({table.short_name(label)}) in {root}")
        files_by_class[label] = [p for d in present for p in image_files(d)]
    images, manifest, report = load_class_files(
        files_by_class, per_class, size=size, resample=resample, crop_ratio=crop_ratio,
        checks=checks, key="data.imagenette")
    return images, manifest, {"imagenette": origin, "classes": report}
