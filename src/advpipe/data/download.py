"""Download per-class image quotas from ImageNet URL lists.

:func:`download_classes` walks each class's URL list (in file order) until
``quota`` images are accepted or the list runs out.  It is

* **concurrent** -- one :class:`~concurrent.futures.ThreadPoolExecutor` shared
  by all classes, standard library HTTP (``urllib.request``) only;
* **bounded in time** -- every attempt has a hard wall-clock ``deadline``
  (:mod:`advpipe.data.http_fetch`), and a URL never takes longer than
  ``deadline * (retries + 1)``, ``Retry-After`` waits included;
* **strict about content** -- HTTP 200, ``image/*`` Content-Type, then
  :func:`~advpipe.data.validate.validate_image_bytes` (size, pixel limits, a
  memory-bounded decode, decode-level integrity, noise, placeholders) and
  Flickr's placeholder redirect URLs;
* **deterministic** -- for one class, the number of accepted plus in-flight
  URLs never exceeds the quota, and URLs are started in file order, so every
  started URL that turns out good can be accepted.  Hence the accepted set is
  exactly the first ``quota`` good URLs of the list, whatever the timing;
* **resumable** -- every outcome is appended (and flushed) to
  ``out_dir/manifest.csv`` as soon as it is known; a rerun counts accepted
  rows whose file exists, skips permanently rejected URLs, may retry
  transient errors, and issues no request for a class that is already full.
  Images are written atomically (temp file + :func:`os.replace`).

Accepted images are converted to RGB (alpha composited on white) and saved,
at their original size and orientation (EXIF orientation is not applied,
like the original ImageNet files), as lossless PNG under
``out_dir/<wnid or class_index>/<class_index>_<sha1(url)[:16]>.png``.
Multi-frame files (animated GIF) keep their first frame.

Outcome statuses and reasons (the ``reason`` column of the manifest):

``accepted``
    reason empty (``adopted_file`` for an image found on disk without a
    manifest row, i.e. after a hard kill between writing the file and the row).
``rejected`` (permanent, never retried)
    ``http_<code>`` (e.g. ``http_404``, ``http_410``, ``http_206``),
    ``too_many_redirects``, ``redirect_error``, ``invalid_url``, ``dns_error``,
    ``ssl_error``, ``placeholder_redirect``, ``content_type:<mime>`` (or
    ``content_type:missing``), ``too_large_bytes``, ``too_small_bytes``,
    ``placeholder_hash``, ``decode_error:<message>``, ``truncated``,
    ``too_many_pixels``, ``decode_budget``, ``too_small_side``,
    ``corrupt:<what>``, ``noise``, ``unsupported_mode:<mode>``,
    ``placeholder_uniform``, ``placeholder_text``, and (never fetched)
    ``cross_class_duplicate:<class>`` / ``cross_class_ambiguous``.
``error`` (transient, after ``retries`` retries; retried by a rerun when
``retry_errors``)
    ``timeout``, ``deadline``, ``connection_error`` (incl. DNS EAI_AGAIN; an unknown host
    is the permanent ``dns_error``), ``http_429``, ``http_5xx`` codes.

Process-global state is left alone: ``Image.MAX_IMAGE_PIXELS`` is never
changed (the pixel limit is checked per call), warning filters are installed
only around opening/decoding under a lock and restored, and
``ImageFile.LOAD_TRUNCATED_IMAGES`` is required to be False (RuntimeError
otherwise) rather than being set.  ``placeholder_hashes`` is empty by
default: the real Flickr placeholder files can't be fetched offline.

One process per ``out_dir``: stray ``*.tmp`` files are deleted at start.  The
manifest caches outcomes, so delete it (or use a new ``out_dir``) after
changing validation settings.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from PIL import Image

from .http_fetch import FetchFailed, FetchSettings, build_opener, fetch, request_url
from .images import to_rgb
from .validate import (IMAGE_FORMATS, ImageInfo, ImageRejected, ValidationSettings,
                       check_truncation_flag, validate_image_bytes)

__all__ = [
    "DEFAULT_PLACEHOLDER_URL_PATTERNS",
    "DEFAULT_USER_AGENT",
    "IMAGE_FORMATS",
    "MANIFEST_COLUMNS",
    "AcceptedImage",
    "ClassReport",
    "DownloadReport",
    "ImageInfo",
    "ImageRejected",
    "ProgressEvent",
    "download_classes",
    "image_path",
    "to_rgb",
    "validate_image_bytes",
]

logger = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "advpipe-url-downloader/0.1 (research; Python-urllib)"

#: Regular expressions (searched case-insensitively) that mark the final URL
#: after redirects as a "photo unavailable" placeholder.  Flickr redirects
#: deleted photos to e.g. ``https://s.yimg.com/pw/images/en-us/photo_unavailable.png``
#: or ``http://l.yimg.com/g/images/photo_unavailable_m.gif``.
DEFAULT_PLACEHOLDER_URL_PATTERNS: tuple[str, ...] = (
    r"photo_unavailable",
    r"photo-unavailable",
    r"/unavailable",
)

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
#: Values of ``download_classes(cross_class=...)``.
CROSS_CLASS_RULES: tuple[str, ...] = ("first", "reject")
_STATUSES = (ACCEPTED, REJECTED, ERROR)

_SAFE_DIR_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class _EntryLike(Protocol):
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
class _Settings:
    """All knobs of one :func:`download_classes` call (validated there)."""

    fetch: FetchSettings
    retries: int
    backoff: float
    deadline: float
    max_retry_after: float
    validation: ValidationSettings


# --------------------------------------------------------------------------
# one URL: fetch with retries, validate, save
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    entry: _EntryLike
    status: str
    reason: str = ""
    file: str = ""
    bytes: int = 0
    width: int = 0
    height: int = 0
    attempts: int = 0
    elapsed_s: float = 0.0


def _class_dir_name(entry: _EntryLike) -> str:
    wnid = entry.wnid
    return wnid if wnid and _SAFE_DIR_NAME.match(wnid) else str(entry.class_index)


def image_path(entry: _EntryLike) -> str:
    """Relative (POSIX) path of an entry's image under ``out_dir``.

    ``<wnid or class_index>/<class_index>_<sha1(url)[:16]>.png`` -- derived
    from the listed URL only, so reruns find the same file.
    """
    digest = hashlib.sha1(entry.url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{_class_dir_name(entry)}/{entry.class_index}_{digest}.png"


def _save_png_atomic(image: Image.Image, path: Path) -> None:
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


def _process(
    entry: _EntryLike,
    settings: _Settings,
    opener: urllib.request.OpenerDirector,
    out_dir: Path,
    stop: threading.Event,
) -> _Outcome:
    """Fetch (with retries), validate and save one URL; runs in a worker thread.

    Only local I/O errors while saving propagate; every URL problem becomes
    an outcome.
    """
    started = time.monotonic()

    def outcome(status: str, reason: str = "", **fields: object) -> _Outcome:
        elapsed = round(time.monotonic() - started, 3)
        return _Outcome(entry, status, reason, elapsed_s=elapsed, **fields)  # type: ignore[arg-type]

    attempts = 0
    # The URL's whole budget: ``deadline`` per attempt, waits included.
    budget_end = started + settings.deadline * (settings.retries + 1)
    try:
        url = request_url(entry.url)
        while True:
            attempts += 1
            limit = min(settings.deadline, budget_end - time.monotonic())
            try:
                if limit <= 0:
                    raise FetchFailed("deadline", transient=True)
                body = fetch(opener, url, settings.fetch, limit)
                break
            except FetchFailed as failure:
                if not failure.transient:
                    raise
                if attempts > settings.retries or stop.is_set():
                    raise
                delay = settings.backoff * 2 ** (attempts - 1)
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, settings.max_retry_after))
                if time.monotonic() + delay >= budget_end:
                    raise  # no time left for another attempt
                if stop.wait(delay):  # interrupted while backing off
                    raise
    except FetchFailed as failure:
        status = ERROR if failure.transient else REJECTED
        return outcome(status, failure.reason, attempts=attempts)

    try:
        rgb, info = validate_image_bytes(body, settings.validation)
    except ImageRejected as rejection:
        return outcome(REJECTED, rejection.reason, bytes=len(body), attempts=attempts)

    relative = image_path(entry)
    _save_png_atomic(rgb, out_dir / relative)
    return outcome(
        ACCEPTED,
        file=relative,
        bytes=info.bytes,
        width=rgb.width,
        height=rgb.height,
        attempts=attempts,
    )


# --------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[tuple[int, str], dict[str, str]]:
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
            if any(row.get(column) is None for column in MANIFEST_COLUMNS):
                continue  # a row cut short by a hard kill
            if row["status"] not in _STATUSES:
                continue
            try:
                key = (int(row["class_index"]), row["url"])
            except ValueError:
                continue
            rows[key] = row
    return rows


class _ManifestWriter:
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

    def write(self, outcome: _Outcome) -> None:
        entry = outcome.entry
        self._writer.writerow(
            (
                entry.class_index,
                entry.wnid or "",
                entry.url,
                entry.line_no,
                outcome.status,
                outcome.reason,
                outcome.file,
                outcome.bytes,
                outcome.width,
                outcome.height,
                outcome.attempts,
                f"{outcome.elapsed_s:.3f}",
            )
        )
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


# --------------------------------------------------------------------------
# report and progress
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AcceptedImage:
    """An accepted image; ``file`` is relative to the report's ``out_dir``."""

    class_index: int
    wnid: str | None
    url: str
    line_no: int
    file: str
    width: int
    height: int


@dataclass
class ClassReport:
    """Outcome of one class.

    Attributes:
        available: distinct URLs listed for the class.
        accepted: accepted images counted toward the quota (<= quota),
            including ``resumed`` ones from earlier runs.
        resumed: accepted images taken over from an earlier run.
        requested: URLs fetched in this run (rejected + errors + newly accepted).
        rejected / errors: this run's permanent / transient failures.
        skipped_rejected: URLs not fetched because the manifest holds a
            permanent rejection for them.
        duplicates: repeated URLs in the class list (ignored).
        cross_class: URLs not fetched for this class because another class
            lists them too (see ``cross_class`` of :func:`download_classes`);
            also counted in ``reasons``.
        reasons: this run's rejection/error reasons with counts.
        files: the accepted images, in list order.
    """

    class_index: int
    wnid: str | None
    quota: int
    available: int = 0
    accepted: int = 0
    resumed: int = 0
    requested: int = 0
    rejected: int = 0
    errors: int = 0
    skipped_rejected: int = 0
    duplicates: int = 0
    cross_class: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    files: list[AcceptedImage] = field(default_factory=list)

    @property
    def full(self) -> bool:
        """True when the quota is met."""
        return self.accepted >= self.quota

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable summary (without the file list)."""
        return {
            "wnid": self.wnid,
            "quota": self.quota,
            "accepted": self.accepted,
            "full": self.full,
            "available": self.available,
            "resumed": self.resumed,
            "requested": self.requested,
            "rejected": self.rejected,
            "errors": self.errors,
            "skipped_rejected": self.skipped_rejected,
            "duplicates": self.duplicates,
            "cross_class": self.cross_class,
            "reasons": dict(sorted(self.reasons.items())),
        }


@dataclass
class DownloadReport:
    """Result of :func:`download_classes`; ``classes`` keeps the input order."""

    quota: int
    out_dir: Path
    manifest_path: Path
    classes: dict[int, ClassReport]
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every class met its quota."""
        return all(c.full for c in self.classes.values())

    @property
    def reasons(self) -> Counter[str]:
        """This run's rejection/error reasons over all classes."""
        total: Counter[str] = Counter()
        for c in self.classes.values():
            total.update(c.reasons)
        return total

    def accepted_images(self) -> list[AcceptedImage]:
        """All accepted images, class by class, each class in list order."""
        return [image for c in self.classes.values() for image in c.files]

    def totals(self) -> dict[str, int]:
        """Counts summed over classes."""
        keys = ("accepted", "resumed", "requested", "rejected", "errors", "skipped_rejected", "duplicates",
                "cross_class")
        sums = {k: sum(getattr(c, k) for c in self.classes.values()) for k in keys}
        sums["quota"] = self.quota * len(self.classes)
        sums["classes"] = len(self.classes)
        sums["classes_full"] = sum(c.full for c in self.classes.values())
        return sums

    def to_dict(self) -> dict[str, object]:
        """Nested, JSON-serialisable view for a metrics file."""
        return {
            "quota": self.quota,
            "complete": self.complete,
            "elapsed_s": round(self.elapsed_s, 3),
            "out_dir": str(self.out_dir),
            "manifest": str(self.manifest_path),
            "totals": self.totals(),
            "reasons": dict(sorted(self.reasons.items())),
            "classes": {str(k): c.to_dict() for k, c in self.classes.items()},
        }


@dataclass(frozen=True)
class ProgressEvent:
    """Sent to the ``progress`` callback after every URL outcome of a run."""

    class_index: int
    wnid: str | None
    url: str
    status: str
    reason: str
    class_accepted: int
    quota: int
    class_requested: int
    class_rejected: int
    class_errors: int
    done: int
    total_accepted: int
    total_quota: int


# --------------------------------------------------------------------------
# scheduling
# --------------------------------------------------------------------------


@dataclass
class _ClassState:
    report: ClassReport
    queue: deque[_EntryLike]
    order: dict[str, int]  # url -> position in the class list
    in_flight: int = 0

    def can_start(self) -> bool:
        # accepted + in_flight <= quota keeps the accepted set deterministic:
        # every started URL that turns out good can be accepted.
        return bool(self.queue) and self.report.accepted + self.in_flight < self.report.quota


def _adopt_file(path: Path) -> tuple[int, int] | None:
    """Size of an image left on disk without a manifest row, or None if unreadable."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except Exception:
        with suppress(OSError):
            path.unlink()
        return None


def _prepare_class(
    class_index: int,
    entries: Sequence[_EntryLike],
    quota: int,
    out_dir: Path,
    previous: Mapping[tuple[int, str], Mapping[str, str]],
    manifest: _ManifestWriter,
    retry_errors: bool,
    excluded: Mapping[str, str],
) -> _ClassState:
    """Apply earlier outcomes to a class and queue the URLs still to try."""
    wnid = next((e.wnid for e in entries if e.wnid), None)
    report = ClassReport(class_index, wnid, quota)
    queue: deque[_EntryLike] = deque()
    order: dict[str, int] = {}
    for entry in entries:
        if entry.class_index != class_index:
            raise ValueError(
                f"entry on line {entry.line_no} has class_index {entry.class_index} "
                f"but is listed under class {class_index}"
            )
        if entry.url in order:
            report.duplicates += 1
            continue
        if entry.url in excluded:  # listed under another class too
            report.cross_class += 1
            reason = excluded[entry.url]
            row = previous.get((class_index, entry.url))
            if row is None or (row["status"], row["reason"]) != (REJECTED, reason):
                manifest.write(_Outcome(entry, REJECTED, reason))
            report.reasons[reason] += 1
            continue
        order[entry.url] = len(order)
        report.available += 1
        if report.accepted >= quota:
            continue  # full from earlier runs: nothing after this is needed
        row = previous.get((class_index, entry.url))
        relative = image_path(entry)
        path = out_dir / relative
        if row is not None and row["status"] == ACCEPTED and path.is_file():
            width, height = int(row["width"] or 0), int(row["height"] or 0)
        elif row is not None and row["status"] == REJECTED:
            report.skipped_rejected += 1
            continue
        elif row is not None and row["status"] == ERROR and not retry_errors:
            continue
        elif path.is_file() and (size := _adopt_file(path)) is not None:
            width, height = size
            manifest.write(_Outcome(entry, ACCEPTED, "adopted_file", relative, 0, width, height))
        else:
            queue.append(entry)
            continue
        report.accepted += 1
        report.resumed += 1
        report.files.append(
            AcceptedImage(class_index, entry.wnid, entry.url, entry.line_no, relative, width, height)
        )
    return _ClassState(report, queue, order)


def _cross_class_exclusions(
    entries_by_class: Mapping[int, Sequence[_EntryLike]], rule: str
) -> dict[int, dict[str, str]]:
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


def _clean_temp_files(out_dir: Path) -> int:
    removed = 0
    for stray in out_dir.rglob("*.tmp"):
        if stray.is_file():
            stray.unlink()
            removed += 1
    return removed


def download_classes(
    entries_by_class: Mapping[int, Sequence[_EntryLike]],
    quota: int,
    out_dir: str | Path,
    *,
    workers: int = 8,
    timeout: float = 10.0,
    retries: int = 2,
    backoff: float = 0.5,
    max_bytes: int = 50_000_000,
    deadline: float = 60.0,
    max_retry_after: float = 30.0,
    max_redirects: int = 5,
    user_agent: str = DEFAULT_USER_AGENT,
    placeholder_url_patterns: Sequence[str] = DEFAULT_PLACEHOLDER_URL_PATTERNS,
    placeholder_hashes: Collection[str] = frozenset(),
    validation: ValidationSettings | None = None,
    cross_class: str = "first",
    retry_errors: bool = True,
    progress: Callable[[ProgressEvent], None] | None = None,
    log_every: int = 200,
    **checks: object,
) -> DownloadReport:
    """Download up to ``quota`` validated images per class (see module docstring).

    Args:
        entries_by_class: class index -> its URL entries in file order (e.g.
            from :func:`advpipe.data.url_lists.select`).
        quota: images wanted per class.
        out_dir: output directory (images, ``manifest.csv``).
        workers: concurrent HTTP requests.
        timeout: socket timeout per request (connect / each read), seconds.
        retries: extra attempts after a transient failure (timeout,
            deadline, connection error, HTTP 429/5xx); delays
            ``backoff * 2**k``, or the server's ``Retry-After`` when longer
            (capped at ``max_retry_after`` seconds).
        max_bytes: larger bodies are rejected (``too_large_bytes``).
        deadline: hard wall-clock limit of one attempt (connect, headers and
            body; see :mod:`advpipe.data.http_fetch`).  A URL never takes
            longer than ``deadline * (retries + 1)`` to fetch, waits included:
            a retry that would not start within that budget is not made.
        max_retry_after: cap, in seconds, on a ``Retry-After`` wait.
        max_redirects: redirects followed per request.
        user_agent: the User-Agent header.
        placeholder_url_patterns: regexes searched (case-insensitively) in the
            final URL after redirects -> ``placeholder_redirect``.
        placeholder_hashes: sha256 hex digests of known placeholder bodies ->
            ``placeholder_hash`` (added to ``validation``).  Empty by default:
            the real Flickr placeholders cannot be fetched offline.
        validation: image checks (:class:`~advpipe.data.validate.ValidationSettings`;
            defaults when None).
        **checks: fields of ``validation`` to override (e.g. ``min_bytes``,
            ``min_side``, ``max_pixels``; see :func:`validate_image_bytes`).
        cross_class: what to do with a URL listed under several classes:
            ``"first"`` fetches it once, for the class of its first occurrence
            (lowest line number, then class order), and records it as
            ``rejected``/``cross_class_duplicate:<class>`` under the others;
            ``"reject"`` fetches it for none and records
            ``cross_class_ambiguous`` under every class.
        retry_errors: refetch URLs whose manifest row is a transient ``error``.
        progress: called with a :class:`ProgressEvent` after every URL outcome
            (in the calling thread; an exception it raises, e.g.
            KeyboardInterrupt, stops the run after in-flight requests finish
            and are recorded).
        log_every: log a progress line every this many outcomes (0: never).

    Returns:
        A :class:`DownloadReport`.

    Raises:
        ValueError: invalid arguments, entries under the wrong class, or a
            manifest with unexpected columns.
        RuntimeError: if ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is True.
        OSError: when an image or the manifest cannot be written.
    """
    if quota < 0:
        raise ValueError(f"quota must be >= 0, got {quota}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if timeout <= 0 or deadline <= 0:
        raise ValueError("timeout and deadline must be > 0")
    if retries < 0 or backoff < 0 or max_retry_after < 0:
        raise ValueError("retries, backoff and max_retry_after must be >= 0")
    if max_redirects < 0 or max_bytes < 1:
        raise ValueError("max_redirects must be >= 0 and max_bytes >= 1")
    if cross_class not in CROSS_CLASS_RULES:
        raise ValueError(f"cross_class must be one of {CROSS_CLASS_RULES}, got {cross_class!r}")
    check_truncation_flag()

    try:
        validation = replace(validation or ValidationSettings(), **checks)
    except TypeError as exc:
        raise ValueError(f"unknown validation setting: {exc}") from None
    if placeholder_hashes:
        validation = replace(validation, placeholder_hashes=validation.placeholder_hashes
                             | frozenset(h.lower() for h in placeholder_hashes))
    validation.check()
    settings = _Settings(
        fetch=FetchSettings(
            timeout=float(timeout),
            max_bytes=int(max_bytes),
            user_agent=user_agent,
            placeholder_url_patterns=tuple(re.compile(p, re.IGNORECASE) for p in placeholder_url_patterns),
        ),
        retries=int(retries),
        backoff=float(backoff),
        deadline=float(deadline),
        max_retry_after=float(max_retry_after),
        validation=validation,
    )
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = _clean_temp_files(out_dir)
    if removed:
        logger.info("removed %d stray temp file(s) under %s", removed, out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    previous = _read_manifest(manifest_path)
    manifest = _ManifestWriter(manifest_path)

    states: dict[int, _ClassState] = {}
    report = DownloadReport(quota, out_dir, manifest_path, {})
    try:
        excluded = _cross_class_exclusions(entries_by_class, cross_class)
        for class_index, entries in entries_by_class.items():
            state = _prepare_class(
                int(class_index), entries, quota, out_dir, previous, manifest, retry_errors,
                excluded[int(class_index)],
            )
            states[int(class_index)] = state
            report.classes[int(class_index)] = state.report
        total_quota = quota * len(states)
        total_accepted = sum(s.report.accepted for s in states.values())
        done = 0

        def record(outcome: _Outcome) -> _ClassState:
            nonlocal total_accepted
            state = states[outcome.entry.class_index]
            state.in_flight -= 1
            manifest.write(outcome)
            class_report = state.report
            class_report.requested += 1
            if outcome.status == ACCEPTED:
                class_report.accepted += 1
                total_accepted += 1
                entry = outcome.entry
                class_report.files.append(
                    AcceptedImage(
                        entry.class_index, entry.wnid, entry.url, entry.line_no,
                        outcome.file, outcome.width, outcome.height,
                    )
                )
                assert class_report.accepted <= quota, "quota invariant violated"
            else:
                class_report.reasons[outcome.reason] += 1
                if outcome.status == REJECTED:
                    class_report.rejected += 1
                else:
                    class_report.errors += 1
            return state

        opener = build_opener(max_redirects)
        stop = threading.Event()
        in_flight: dict[Future[_Outcome], int] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download") as pool:
            try:
                while True:
                    # Fill the pool, earlier classes first, never queueing work.
                    for state in states.values():
                        while len(in_flight) < workers and state.can_start():
                            entry = state.queue.popleft()
                            state.in_flight += 1
                            future = pool.submit(_process, entry, settings, opener, out_dir, stop)
                            in_flight[future] = entry.class_index
                        if len(in_flight) >= workers:
                            break
                    if not in_flight:
                        break
                    finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        del in_flight[future]
                        outcome = future.result()
                        state = record(outcome)
                        done += 1
                        r = state.report
                        if progress is not None:
                            progress(
                                ProgressEvent(
                                    r.class_index, r.wnid, outcome.entry.url,
                                    outcome.status, outcome.reason,
                                    r.accepted, quota, r.requested, r.rejected, r.errors,
                                    done, total_accepted, total_quota,
                                )
                            )
                        if log_every and done % log_every == 0:
                            logger.info(
                                "%d URLs done; class %d (%s): %d/%d accepted, %d requested, "
                                "%d rejected, %d errors; total %d/%d",
                                done, r.class_index, r.wnid, r.accepted, quota, r.requested,
                                r.rejected, r.errors, total_accepted, total_quota,
                            )
            except BaseException:
                # Interrupted (e.g. KeyboardInterrupt from the progress callback):
                # stop retry loops, let running requests finish and record them.
                stop.set()
                for future in list(in_flight):
                    with suppress(Exception):
                        record(future.result())
                in_flight.clear()
                raise
    finally:
        manifest.close()

    for state in states.values():
        position = state.order
        state.report.files.sort(key=lambda image, position=position: position[image.url])
    report.elapsed_s = time.monotonic() - started
    totals = report.totals()
    logger.info(
        "download finished: %d/%d classes full, %d/%d images (%d new), %d rejected, %d errors, %.1f s",
        totals["classes_full"], totals["classes"], totals["accepted"], totals["quota"],
        totals["accepted"] - totals["resumed"], totals["rejected"], totals["errors"], report.elapsed_s,
    )
    return report
