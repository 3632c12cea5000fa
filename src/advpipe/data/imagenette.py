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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .class_index import imagenet_classes
from .download import DEFAULT_USER_AGENT
from .http_fetch import build_opener, classify_exception
from .errors import DataError
from .folder import ImageChecks, image_files, load_class_files

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
_CHUNK = 1 << 20

Progress = Callable[[str], None]


class ImagenetteError(DataError):
    """A one-line, user-fixable problem with the Imagenette source."""


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
    headers = {"User-Agent": DEFAULT_USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    opener = build_opener(5)
    try:
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # the .part is not a prefix the server knows: start over
            part.unlink()
            return download(url, dest, timeout=timeout, progress=progress, every_s=every_s)
        raise ImagenetteError(f"data.imagenette.url: {url}: HTTP {exc.code}") from None
    except Exception as exc:
        reason, _ = classify_exception(exc)
        raise ImagenetteError(f"data.imagenette.url: {url}: {reason}") from None
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        if response.status == 206 and have:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                raise ImagenetteError(f"data.imagenette.url: {url}: the server answered the "
                                      f"resume request with Content-Range '{content_range}'")
            mode, done = "ab", have
            say(f"[imagenette] resuming {dest.name} at {_fmt_mb(have)}")
        elif response.status == 200:
            mode, done = "wb", 0  # no Range support, or a fresh download
        else:
            raise ImagenetteError(f"data.imagenette.url: {url}: HTTP {response.status}")
        total = done + length if length is not None else None
        started, last, start_done = time.monotonic(), 0.0, done
        try:
            with open(part, mode) as handle:
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    done += len(chunk)
                    now = time.monotonic()
                    if now - last >= every_s:
                        last = now
                        rate = (done - start_done) / 1e6 / max(now - started, 1e-9)
                        share = f" ({100 * done / total:.0f}%)" if total else ""
                        say(f"[imagenette] {dest.name}: {_fmt_mb(done)}"
                            f"{'/' + _fmt_mb(total) if total else ''}{share}, {rate:.1f} MB/s")
                handle.flush()
                os.fsync(handle.fileno())
        except Exception as exc:
            reason, _ = classify_exception(exc)
            raise ImagenetteError(
                f"data.imagenette.url: download of {url} interrupted at {_fmt_mb(done)} "
                f"({reason}); rerun to resume") from None
    if total is not None and done < total:
        raise ImagenetteError(f"data.imagenette.url: download of {url} interrupted at "
                              f"{_fmt_mb(done)} of {_fmt_mb(total)}; rerun to resume")
    elapsed = time.monotonic() - started
    say(f"[imagenette] {dest.name}: {_fmt_mb(done)} done, "
        f"{(done - start_done) / 1e6 / max(elapsed, 1e-9):.1f} MB/s")
    os.replace(part, dest)
    return dest


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
def prepare(settings: Mapping, progress: Progress | None = None) -> tuple[Path, dict]:
    """A folder with the Imagenette images (see the module doc) and a report of its origin.

    ``settings`` is the ``data.imagenette`` group of params: ``archive``, ``url``,
    ``sha256``, ``path``, ``cache_dir``.
    """
    say = progress or (lambda msg: None)
    archive = settings["archive"]
    given = settings.get("sha256")
    local = settings.get("path")
    if local:
        local = Path(local)
        if not local.exists():
            raise ImagenetteError(f"data.imagenette.path: '{local}' does not exist")
        if local.is_dir():
            return _layout_root(local), {"path": str(local)}
        origin = {"path": str(local.resolve())}
        expected = Expected(given.lower(), None, "given") if given else Expected(None, None, "none")
    else:
        url = settings.get("url") or OFFICIAL_URL.format(archive=archive)
        origin = {"url": url}
        if given:
            expected = Expected(given.lower(), None, "given")
        elif settings.get("url") is None and archive in KNOWN_ARCHIVES:
            size, digest = KNOWN_ARCHIVES[archive]
            expected = Expected(digest, size, f"official {archive}")
        else:
            expected = Expected(None, None, "none")
    cache = Path(settings["cache_dir"])
    target = cache / archive
    record = _read_record(target) if target.is_dir() else None
    if record is not None and (record.get("sha256") == expected.sha256 if expected.sha256
                               else {k: record.get(k) for k in origin} == origin):
        say(f"[imagenette] using {target} (sha256 {record['sha256'][:12]}...)")
        return target, {**record, "folder": str(target), "reused": True}
    if local:
        tgz, downloaded = local, False
    else:
        tgz, downloaded = cache / f"{archive}.tgz", True
        if not tgz.is_file():
            say(f"[imagenette] downloading {origin['url']} to {tgz}")
            download(origin["url"], tgz, progress=say)
    say(f"[imagenette] verifying {tgz}")
    try:
        digest = verify(tgz, expected)
    except ImagenetteError:
        if downloaded:
            tgz.unlink()  # a rerun downloads it again
        raise
    say(f"[imagenette] extracting {tgz} to {target}")
    record = {**origin, "archive": archive, "sha256": digest, "bytes": tgz.stat().st_size,
              "checked_against": expected.origin}
    try:
        extract(tgz, target, record)
    except ImagenetteError:
        if downloaded:
            tgz.unlink()
        raise
    return target, {**record, "folder": str(target), "reused": False}


def split_folders(root: Path) -> list[Path]:
    """``root/train`` then ``root/val`` where they exist, else ``root`` itself."""
    splits = [root / s for s in ("train", "val") if (root / s).is_dir()]
    return splits or [root]


def load_imagenette(settings: Mapping, classes: list[int], per_class: int, *, size: int = 224,
                    resample: str = "bicubic", crop_ratio: float = 1.0,
                    checks: ImageChecks = ImageChecks(), progress: Progress | None = None
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
