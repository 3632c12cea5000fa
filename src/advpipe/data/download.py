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

The parts, one module each:

* :mod:`~advpipe.data.download_settings` -- the settings (frozen dataclasses:
  :class:`RequestSettings`, :class:`RetryPolicy`, :class:`DownloadSettings`);
* :mod:`~advpipe.data.download_manifest` -- the manifest and resuming from it;
* :mod:`~advpipe.data.download_fetch` -- one URL: fetch with retries, validate, save;
* :mod:`~advpipe.data.download_scheduler` -- the thread pool and the quota invariant;
* :mod:`~advpipe.data.download_report` -- the reports and progress events;
* this module -- :func:`download` (settings object) and :func:`download_classes`
  (keyword arguments), which tie them together.

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
    ``corrupt:<what>`` (e.g. ``corrupt:premature_end``), ``noise``, ``unsupported_mode:<mode>``,
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

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from .download_fetch import Fetcher
from .download_manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    EntryLike,
    ManifestWriter,
    ResumeContext,
    clean_temp_files,
    cross_class_exclusions,
    image_path,
    read_manifest,
    resume_class,
)
from .download_report import AcceptedImage, ClassReport, DownloadReport, ProgressEvent, log_summary
from .download_scheduler import ClassState, Scheduler
from .download_settings import (
    CROSS_CLASS_RULES,
    DEFAULT_PLACEHOLDER_URL_PATTERNS,
    DEFAULT_USER_AGENT,
    DownloadSettings,
    RequestSettings,
    RetryPolicy,
)
from .http_fetch import build_opener
from .images import to_rgb
from .validate import (
    IMAGE_FORMATS,
    ImageInfo,
    ImageRejected,
    ValidationSettings,
    check_truncation_flag,
    validate_image_bytes,
)

__all__ = [
    "CROSS_CLASS_RULES",
    "DEFAULT_PLACEHOLDER_URL_PATTERNS",
    "DEFAULT_USER_AGENT",
    "IMAGE_FORMATS",
    "MANIFEST_COLUMNS",
    "AcceptedImage",
    "ClassReport",
    "DownloadReport",
    "DownloadSettings",
    "ImageInfo",
    "ImageRejected",
    "ProgressEvent",
    "RequestSettings",
    "RetryPolicy",
    "download",
    "download_classes",
    "image_path",
    "to_rgb",
    "validate_image_bytes",
]

logger = logging.getLogger(__name__)

_REQUEST, _RETRY, _RUN = RequestSettings, RetryPolicy, DownloadSettings


def download_classes(
    entries_by_class: Mapping[int, Sequence[EntryLike]],
    quota: int,
    out_dir: str | Path,
    *,
    workers: int = _RUN.workers,
    timeout: float = _REQUEST.timeout,
    retries: int = _RETRY.retries,
    backoff: float = _RETRY.backoff,
    max_bytes: int = _REQUEST.max_bytes,
    deadline: float = _RETRY.deadline,
    max_retry_after: float = _RETRY.max_retry_after,
    max_redirects: int = _REQUEST.max_redirects,
    user_agent: str = _REQUEST.user_agent,
    placeholder_url_patterns: Sequence[str] = _REQUEST.placeholder_url_patterns,
    placeholder_hashes: Collection[str] = frozenset(),
    validation: ValidationSettings | None = None,
    cross_class: str = _RUN.cross_class,
    retry_errors: bool = _RUN.retry_errors,
    progress: Callable[[ProgressEvent], None] | None = None,
    log_every: int = _RUN.log_every,
    **checks: object,
) -> DownloadReport:
    """:func:`download` with the settings as keyword arguments.

    The arguments are the fields of :class:`RequestSettings`,
    :class:`RetryPolicy` and :class:`DownloadSettings` (see them for their
    meaning and defaults); ``validation`` (defaults when None) with
    ``**checks`` applied (fields of
    :class:`~advpipe.data.validate.ValidationSettings`, e.g. ``min_bytes``);
    ``placeholder_hashes``: sha256 hex digests of known placeholder bodies
    (``placeholder_hash``; empty by default: the real Flickr placeholders
    cannot be fetched offline).

    Raises:
        ValueError: an invalid or unknown setting; see also :func:`download`.
    """
    try:
        validation = replace(validation or ValidationSettings(), **checks)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(f"unknown validation setting: {exc}") from None
    settings = DownloadSettings(
        request=RequestSettings(timeout, max_bytes, max_redirects, user_agent,
                                tuple(placeholder_url_patterns)),
        retry=RetryPolicy(retries, backoff, deadline, max_retry_after),
        validation=validation, workers=workers, cross_class=cross_class,
        retry_errors=retry_errors, log_every=log_every,
    ).with_placeholder_hashes(placeholder_hashes)
    return download(entries_by_class, quota, out_dir, settings, progress)


def download(entries_by_class: Mapping[int, Sequence[EntryLike]], quota: int,
             out_dir: str | Path, settings: DownloadSettings | None = None,
             progress: Callable[[ProgressEvent], None] | None = None) -> DownloadReport:
    """Download up to ``quota`` validated images per class (see the module docstring).

    Args:
        entries_by_class: class index -> its URL entries in file order (e.g.
            from :func:`advpipe.data.url_lists.select`).
        quota: images wanted per class.
        out_dir: output directory (images, ``manifest.csv``).
        settings: see :class:`DownloadSettings` (defaults when None).
        progress: called with a :class:`ProgressEvent` after every URL outcome
            (in the calling thread; an exception it raises, e.g.
            KeyboardInterrupt, stops the run after in-flight requests finish
            and are recorded).

    Raises:
        ValueError: invalid settings, entries under the wrong class, or a
            manifest with unexpected columns.
        RuntimeError: if ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is True.
        OSError: when an image or the manifest cannot be written.
    """
    if quota < 0:
        raise ValueError(f"quota must be >= 0, got {quota}")
    settings = settings or DownloadSettings()
    settings.check()
    check_truncation_flag()
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = clean_temp_files(out_dir)
    if removed:
        logger.info("removed %d stray temp file(s) under %s", removed, out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    previous = read_manifest(manifest_path)
    manifest = ManifestWriter(manifest_path)
    report = DownloadReport(quota, out_dir, manifest_path, {})
    try:
        context = ResumeContext(out_dir, previous, manifest, settings.retry_errors)
        states = _resume(entries_by_class, quota, settings.cross_class, context, report)
        _run(states, settings, out_dir, manifest, progress)
    finally:
        manifest.close()
    for state in states.values():
        state.report.files.sort(key=lambda image, order=state.order: order[image.url])
    report.elapsed_s = time.monotonic() - started
    log_summary(report)
    return report


def _resume(entries_by_class: Mapping[int, Sequence[EntryLike]], quota: int, cross_class: str,
            context: ResumeContext, report: DownloadReport) -> dict[int, ClassState]:
    """Every class after applying the earlier outcomes, in input order (added to ``report``)."""
    excluded = cross_class_exclusions(entries_by_class, cross_class)
    states: dict[int, ClassState] = {}
    for class_index, entries in entries_by_class.items():
        index = int(class_index)
        resumed = resume_class(index, entries, quota, excluded[index], context)
        states[index] = ClassState(resumed.report, resumed.queue, resumed.order)
        report.classes[index] = resumed.report
    return states


def _run(states: Mapping[int, ClassState], settings: DownloadSettings, out_dir: Path,
         manifest: ManifestWriter, progress: Callable[[ProgressEvent], None] | None) -> None:
    """Fetch the queued URLs of every class with the thread pool."""
    stop = threading.Event()
    fetcher = Fetcher(settings, settings.request.fetch_settings(),
                      build_opener(settings.request.max_redirects), out_dir, stop)
    scheduler = Scheduler(states, manifest, settings.workers, progress, settings.log_every)
    scheduler.run(fetcher, on_interrupt=stop.set)
