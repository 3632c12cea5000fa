"""One URL, start to end: fetch (with retries), validate, save.  Runs in a worker thread.

:func:`fetch_with_retries` makes HTTP attempts (:func:`advpipe.data.http_fetch.fetch`,
each under the hard ``deadline``) and retries transient failures with
exponential backoff, or the server's ``Retry-After`` when longer (capped), as
long as the URL's whole budget -- ``deadline * (retries + 1)``, waits included
-- allows another attempt; a stop request ends the waits.

:func:`process_entry` then runs the image checks
(:func:`~advpipe.data.validate.validate_image_bytes`) and writes an accepted
image atomically as PNG.  Every URL problem becomes an :class:`Outcome`; only
local I/O errors while saving propagate.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .download_manifest import (
    ACCEPTED,
    ERROR,
    REJECTED,
    EntryLike,
    Outcome,
    image_path,
    save_png_atomic,
)
from .download_settings import DownloadSettings, RetryPolicy
from .http_fetch import FetchFailed, FetchSettings, fetch, request_url
from .validate import ImageRejected, validate_image_bytes

__all__ = ["Fetcher", "fetch_with_retries", "process_entry"]


def fetch_with_retries(opener: urllib.request.OpenerDirector, url: str,
                       fetch_settings: FetchSettings, policy: RetryPolicy,
                       stop: threading.Event) -> tuple[bytes, int]:
    """The body of ``url`` and the number of attempts made.

    Raises:
        FetchFailed: the last failure (``transient`` ones after the retries or
            the budget ran out, or when ``stop`` was set), with ``attempts`` set.
    """
    budget_end = time.monotonic() + policy.budget()
    attempts = 0
    while True:
        attempts += 1
        limit = min(policy.deadline, budget_end - time.monotonic())
        try:
            if limit <= 0:
                raise FetchFailed("deadline", transient=True)
            return fetch(opener, url, fetch_settings, limit), attempts
        except FetchFailed as failure:
            failure.attempts = attempts
            if not failure.transient or attempts > policy.retries or stop.is_set():
                raise
            delay = policy.delay(attempts, failure.retry_after)
            if time.monotonic() + delay >= budget_end:
                raise  # no time left for another attempt
            if stop.wait(delay):  # interrupted while backing off
                raise


@dataclass(frozen=True)
class Fetcher:
    """What every worker shares: the settings, the opener, the output folder, the stop flag."""

    settings: DownloadSettings
    fetch_settings: FetchSettings
    opener: urllib.request.OpenerDirector
    out_dir: Path
    stop: threading.Event

    def __call__(self, entry: EntryLike) -> Outcome:
        return process_entry(entry, self)


def process_entry(entry: EntryLike, fetcher: Fetcher) -> Outcome:
    """Fetch (with retries), validate and save one URL (see the module doc)."""
    started = time.monotonic()

    def outcome(status: str, reason: str = "", **fields: object) -> Outcome:
        elapsed = round(time.monotonic() - started, 3)
        return Outcome(entry, status, reason, elapsed_s=elapsed, **fields)  # type: ignore[arg-type]

    try:
        url = request_url(entry.url)
        body, attempts = fetch_with_retries(fetcher.opener, url, fetcher.fetch_settings,
                                            fetcher.settings.retry, fetcher.stop)
    except FetchFailed as failure:
        status = ERROR if failure.transient else REJECTED
        return outcome(status, failure.reason, attempts=failure.attempts)
    try:
        rgb, info = validate_image_bytes(body, fetcher.settings.validation)
    except ImageRejected as rejection:
        return outcome(REJECTED, rejection.reason, bytes=len(body), attempts=attempts)
    relative = image_path(entry)
    save_png_atomic(rgb, fetcher.out_dir / relative)
    return outcome(ACCEPTED, file=relative, bytes=info.bytes, width=rgb.width,
                   height=rgb.height, attempts=attempts)
