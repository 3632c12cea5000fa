"""The download manifest (``out_dir/manifest.csv``) and resuming from it.

Every URL outcome is appended (and flushed) as one CSV row as soon as it is
known (:class:`ManifestWriter`).  A rerun reads the last row per
``(class_index, url)`` (:func:`read_manifest`) and :func:`resume_class` decides,
class by class, what is already done:

* an ``accepted`` row whose file exists counts toward the quota (``resumed``);
* a ``rejected`` row is permanent: the URL is skipped (``skipped_rejected``);
* an ``error`` row (transient) is retried when ``retry_errors``;
* an image on disk without a row (a hard kill between writing the file and the
  row) is adopted (``adopted_file``) when it opens, deleted otherwise;
* nothing after the quota is looked at: a full class issues no request.

URLs listed under several classes are settled first
(:func:`cross_class_exclusions`).  Images are written atomically (temp file +
:func:`os.replace`, :func:`save_png_atomic`) and stray ``*.tmp`` files of a
killed run are deleted at start (:func:`clean_temp_files`).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from .download_report import AcceptedImage, ClassReport

__all__ = [
    "ACCEPTED",
    "ERROR",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "REJECTED",
    "ClassQueue",
    "EntryLike",
    "ManifestWriter",
    "Outcome",
    "ResumeContext",
    "clean_temp_files",
    "cross_class_exclusions",
    "image_path",
    "read_manifest",
    "resume_class",
    "save_png_atomic",
]

MANIFEST_COLUMNS: tuple[str, ...] = (
    "class_index",
    "wnid",
    "url",
    "line_no",
    "status",
    "reason",
    "file",
    "bytes",
    "width",
    "height",
    "attempts",
    "elapsed_s",
)
MANIFEST_NAME = "manifest.csv"

ACCEPTED, REJECTED, ERROR = "accepted", "rejected", "error"
_STATUSES = (ACCEPTED, REJECTED, ERROR)
_SAFE_DIR_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class EntryLike(Protocol):
    """What the downloader needs from an entry (``url_lists.UrlEntry`` fits)."""

    @property
    def class_index(self) -> int: ...

    @property
    def wnid(self) -> str | None: ...

    @property
    def url(self) -> str: ...

    @property
    def line_no(self) -> int: ...


@dataclass(frozen=True)
class Outcome:
    """What became of one URL: one manifest row."""

    entry: EntryLike
    status: str
    reason: str = ""
    file: str = ""
    bytes: int = 0
    width: int = 0
    height: int = 0
    attempts: int = 0
    elapsed_s: float = 0.0

    def row(self) -> tuple[object, ...]:
        """The manifest row, in :data:`MANIFEST_COLUMNS` order."""
        entry = self.entry
        return (entry.class_index, entry.wnid or "", entry.url, entry.line_no, self.status,
                self.reason, self.file, self.bytes, self.width, self.height, self.attempts,
                f"{self.elapsed_s:.3f}")


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------


def _class_dir_name(entry: EntryLike) -> str:
    wnid = entry.wnid
    return wnid if wnid and _SAFE_DIR_NAME.match(wnid) else str(entry.class_index)


def image_path(entry: EntryLike) -> str:
    """Relative (POSIX) path of an entry's image under ``out_dir``.

    ``<wnid or class_index>/<class_index>_<sha1(url)[:16]>.png`` -- derived
    from the listed URL only, so reruns find the same file.
    """
    digest = hashlib.sha1(entry.url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{_class_dir_name(entry)}/{entry.class_index}_{digest}.png"


def save_png_atomic(image: Image.Image, path: Path) -> None:
    """Write ``image`` as PNG via a same-directory temp file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def clean_temp_files(out_dir: Path) -> int:
    """Delete the ``*.tmp`` files a killed run left under ``out_dir``; return how many."""
    removed = 0
    for stray in out_dir.rglob("*.tmp"):
        if stray.is_file():
            stray.unlink()
            removed += 1
    return removed


def _adopt_file(path: Path) -> tuple[int, int] | None:
    """Size of an image left on disk without a manifest row, or None if unreadable (deleted)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except Exception:
        with suppress(OSError):
            path.unlink()
        return None


# --------------------------------------------------------------------------
# the CSV file
# --------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[tuple[int, str], dict[str, str]]:
    """Last manifest row per ``(class_index, url)``; malformed rows are skipped.

    Raises:
        ValueError: if the header is not :data:`MANIFEST_COLUMNS`.
    """
    rows: dict[tuple[int, str], dict[str, str]] = {}
    if not path.exists() or path.stat().st_size == 0:
        return rows
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise ValueError(
                f"{path}: unexpected manifest columns {reader.fieldnames}; expected "
                f"{list(MANIFEST_COLUMNS)}. Delete it or use another out_dir."
            )
        for row in reader:
            key = _row_key(row)
            if key is not None:
                rows[key] = row
    return rows


def _row_key(row: Mapping[str, str | None]) -> tuple[int, str] | None:
    """``(class_index, url)`` of a well-formed row; None for a row cut short or invalid."""
    if any(row.get(column) is None for column in MANIFEST_COLUMNS):
        return None  # a row cut short by a hard kill
    if row["status"] not in _STATUSES:
        return None
    try:
        return int(row["class_index"]), str(row["url"])
    except ValueError:
        return None


class ManifestWriter:
    """Appends one flushed CSV row per outcome (single writer: the main thread)."""

    def __init__(self, path: Path) -> None:
        needs_header = not path.exists() or path.stat().st_size == 0
        needs_newline = False
        if not needs_header:
            with open(path, "rb") as handle:
                handle.seek(-1, os.SEEK_END)
                needs_newline = handle.read(1) != b"\n"
        self._handle = open(path, "a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._handle, lineterminator="\n")
        if needs_newline:
            self._handle.write("\n")
        if needs_header:
            self._writer.writerow(MANIFEST_COLUMNS)
        self._handle.flush()

    def write(self, outcome: Outcome) -> None:
        self._writer.writerow(outcome.row())
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


# --------------------------------------------------------------------------
# resuming
# --------------------------------------------------------------------------


@dataclass
class ClassQueue:
    """A class after resuming: its report so far and the URLs still to try, in order."""

    report: ClassReport
    queue: deque[EntryLike]
    order: dict[str, int]  # url -> position in the class list


@dataclass(frozen=True)
class ResumeContext:
    """What :func:`resume_class` reads and writes besides the class itself.

    Attributes:
        out_dir: where the images are.
        previous: the last manifest row per ``(class_index, url)`` (:func:`read_manifest`).
        manifest: the writer for rows learnt while resuming (adopted files,
            cross-class rejections).
        retry_errors: queue URLs whose last outcome is a transient ``error``.
    """

    out_dir: Path
    previous: Mapping[tuple[int, str], Mapping[str, str]]
    manifest: ManifestWriter
    retry_errors: bool


def resume_class(class_index: int, entries: Sequence[EntryLike], quota: int,
                 excluded: Mapping[str, str], context: ResumeContext) -> ClassQueue:
    """Apply earlier outcomes to a class and queue the URLs still to try (see the module doc).

    ``excluded``: URL -> rejection reason of the URLs another class owns
    (:func:`cross_class_exclusions`).

    Raises:
        ValueError: an entry whose ``class_index`` is not ``class_index``.
    """
    wnid = next((e.wnid for e in entries if e.wnid), None)
    state = ClassQueue(ClassReport(class_index, wnid, quota), deque(), {})
    for entry in entries:
        if entry.class_index != class_index:
            raise ValueError(
                f"entry on line {entry.line_no} has class_index {entry.class_index} "
                f"but is listed under class {class_index}"
            )
        if entry.url in state.order:
            state.report.duplicates += 1
        elif entry.url in excluded:  # listed under another class too
            _exclude(state.report, entry, excluded[entry.url], context)
        else:
            state.order[entry.url] = len(state.order)
            state.report.available += 1
            if state.report.accepted < quota:  # full from earlier runs: nothing more needed
                _resume_entry(state, entry, context)
    return state


def _exclude(report: ClassReport, entry: EntryLike, reason: str, context: ResumeContext) -> None:
    """Record a cross-class URL as rejected (once in the manifest) without fetching it."""
    report.cross_class += 1
    row = context.previous.get((report.class_index, entry.url))
    if row is None or (row["status"], row["reason"]) != (REJECTED, reason):
        context.manifest.write(Outcome(entry, REJECTED, reason))
    report.reasons[reason] += 1


def _resume_entry(state: ClassQueue, entry: EntryLike, context: ResumeContext) -> None:
    """Count an entry as done from an earlier run, skip it, or queue it."""
    report = state.report
    row = context.previous.get((report.class_index, entry.url))
    status = row["status"] if row is not None else None
    relative = image_path(entry)
    path = context.out_dir / relative
    if status == ACCEPTED and path.is_file():
        size = int(row["width"] or 0), int(row["height"] or 0)  # type: ignore[index]
    elif status == REJECTED:
        report.skipped_rejected += 1
        return
    elif status == ERROR and not context.retry_errors:
        return
    elif path.is_file() and (size := _adopt_file(path)) is not None:  # type: ignore[assignment]
        context.manifest.write(Outcome(entry, ACCEPTED, "adopted_file", relative, 0, *size))
    else:
        state.queue.append(entry)
        return
    report.accepted += 1
    report.resumed += 1
    report.files.append(AcceptedImage(report.class_index, entry.wnid, entry.url, entry.line_no,
                                      relative, *size))


def cross_class_exclusions(entries_by_class: Mapping[int, Sequence[EntryLike]],
                           rule: str) -> dict[int, dict[str, str]]:
    """Per class, the URLs it must not fetch because another class lists them too.

    ``first``: the owner is the class of the URL's first occurrence (lowest
    line number, then the order of ``entries_by_class``); the others get
    ``cross_class_duplicate:<owner>``.  ``reject``: every class gets
    ``cross_class_ambiguous``.
    """
    first_seen: dict[str, tuple[int, int, int]] = {}  # url -> (line_no, class order, class)
    classes_of: dict[str, set[int]] = {}
    for order, (class_index, entries) in enumerate(entries_by_class.items()):
        for entry in entries:
            key = (entry.line_no, order, int(class_index))
            if entry.url not in first_seen or key < first_seen[entry.url]:
                first_seen[entry.url] = key
            classes_of.setdefault(entry.url, set()).add(int(class_index))
    excluded: dict[int, dict[str, str]] = {int(c): {} for c in entries_by_class}
    for url, classes in classes_of.items():
        if len(classes) < 2:
            continue
        owner = first_seen[url][2]
        for class_index in classes:
            if rule == "reject":
                excluded[class_index][url] = "cross_class_ambiguous"
            elif class_index != owner:
                excluded[class_index][url] = f"cross_class_duplicate:{owner}"
    return excluded
