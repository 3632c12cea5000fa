"""The settings of one download run, grouped in small frozen dataclasses.

Every default of the downloader lives here (and, for the image checks, in
:class:`~advpipe.data.validate.ValidationSettings`) -- nowhere else:

* :class:`RequestSettings` -- one HTTP request (timeouts, size cap, redirects,
  User-Agent, placeholder redirect URLs);
* :class:`RetryPolicy` -- retries of transient failures and the wall-clock
  limits (per attempt and per URL);
* :class:`DownloadSettings` -- the whole run: the two above, the image checks,
  concurrency, the cross-class rule, resuming and logging.

Each has a ``check()`` that raises ValueError naming the first bad field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .http_fetch import FetchSettings
from .validate import ValidationSettings

__all__ = [
    "CROSS_CLASS_RULES",
    "DEFAULT_PLACEHOLDER_URL_PATTERNS",
    "DEFAULT_USER_AGENT",
    "DownloadSettings",
    "RequestSettings",
    "RetryPolicy",
]

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

#: Values of ``DownloadSettings.cross_class``.
CROSS_CLASS_RULES: tuple[str, ...] = ("first", "reject")


@dataclass(frozen=True)
class RequestSettings:
    """One HTTP request.

    Attributes:
        timeout: socket timeout per connect / read, seconds.
        max_bytes: larger bodies are rejected (``too_large_bytes``).
        max_redirects: redirects followed per request.
        user_agent: the User-Agent header.
        placeholder_url_patterns: regexes searched (case-insensitively) in the
            final URL after redirects -> ``placeholder_redirect``.
    """

    timeout: float = 10.0
    max_bytes: int = 50_000_000
    max_redirects: int = 5
    user_agent: str = DEFAULT_USER_AGENT
    placeholder_url_patterns: tuple[str, ...] = DEFAULT_PLACEHOLDER_URL_PATTERNS

    def check(self) -> None:
        """Raise ValueError naming the first out-of-range field."""
        if self.timeout <= 0:
            raise ValueError("timeout and deadline must be > 0")
        if self.max_redirects < 0 or self.max_bytes < 1:
            raise ValueError("max_redirects must be >= 0 and max_bytes >= 1")

    def fetch_settings(self) -> FetchSettings:
        """What :func:`advpipe.data.http_fetch.fetch` needs (patterns compiled)."""
        return FetchSettings(
            timeout=float(self.timeout),
            max_bytes=int(self.max_bytes),
            user_agent=self.user_agent,
            placeholder_url_patterns=tuple(re.compile(p, re.IGNORECASE)
                                           for p in self.placeholder_url_patterns),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient failures and the wall-clock limits.

    Attributes:
        retries: extra attempts after a transient failure (timeout, deadline,
            connection error, HTTP 429/5xx).
        backoff: the k-th retry waits ``backoff * 2**k`` seconds, or the
            server's ``Retry-After`` when longer (capped at ``max_retry_after``).
        deadline: hard wall-clock limit of one attempt (connect, headers and
            body; see :mod:`advpipe.data.http_fetch`).  A URL never takes longer
            than ``deadline * (retries + 1)``, waits included: a retry that
            would not start within that budget is not made.
        max_retry_after: cap, in seconds, on a ``Retry-After`` wait.
    """

    retries: int = 2
    backoff: float = 0.5
    deadline: float = 60.0
    max_retry_after: float = 30.0

    def check(self) -> None:
        """Raise ValueError naming the first out-of-range field."""
        if self.deadline <= 0:
            raise ValueError("timeout and deadline must be > 0")
        if self.retries < 0 or self.backoff < 0 or self.max_retry_after < 0:
            raise ValueError("retries, backoff and max_retry_after must be >= 0")

    def budget(self) -> float:
        """The longest a URL may take, waits included: ``deadline * (retries + 1)``."""
        return self.deadline * (self.retries + 1)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = self.backoff * 2 ** (attempt - 1)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


@dataclass(frozen=True)
class DownloadSettings:
    """Everything one download run needs besides its entries, quota and folder.

    Attributes:
        request / retry / validation: see :class:`RequestSettings`,
            :class:`RetryPolicy`, :class:`~advpipe.data.validate.ValidationSettings`.
        workers: concurrent HTTP requests.
        cross_class: a URL listed under several classes: ``"first"`` fetches it
            once, for the class of its first occurrence (lowest line number,
            then class order), and records it as
            ``rejected``/``cross_class_duplicate:<class>`` under the others;
            ``"reject"`` fetches it for none and records ``cross_class_ambiguous``
            under every class.
        retry_errors: refetch URLs whose manifest row is a transient ``error``.
        log_every: log a progress line every this many outcomes (0: never).
    """

    request: RequestSettings = field(default_factory=RequestSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    workers: int = 16
    cross_class: str = "first"
    retry_errors: bool = True
    log_every: int = 200

    def check(self) -> None:
        """Raise ValueError naming the first out-of-range field."""
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.request.timeout <= 0 or self.retry.deadline <= 0:
            raise ValueError("timeout and deadline must be > 0")
        self.retry.check()
        self.request.check()
        if self.cross_class not in CROSS_CLASS_RULES:
            raise ValueError(f"cross_class must be one of {CROSS_CLASS_RULES}, "
                             f"got {self.cross_class!r}")
        self.validation.check()

    def with_placeholder_hashes(self, hashes: Iterable[str]) -> DownloadSettings:
        """A copy whose validation also rejects bodies with these sha256 digests."""
        hashes = frozenset(h.lower() for h in hashes)
        if not hashes:
            return self
        validation = replace(self.validation,
                             placeholder_hashes=self.validation.placeholder_hashes | hashes)
        return replace(self, validation=validation)
