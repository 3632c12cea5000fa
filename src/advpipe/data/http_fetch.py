"""One HTTP GET of an image URL under a hard wall-clock deadline.

:func:`fetch` performs a single attempt with the standard library
(``urllib.request``, http/https only, capped redirects) and returns the body
of an acceptable response or raises :class:`FetchFailed` with a
machine-readable ``reason`` and whether the failure is ``transient``.

Two clocks bound an attempt:

* ``timeout`` -- the socket timeout of every connect/read (a silent server);
* ``deadline`` -- a hard wall-clock limit on the whole attempt (connect,
  status line, headers and body).  A per-attempt :class:`Deadline` arms a
  timer; the connections opened for the attempt (redirects included)
  register their sockets with it, and when it fires it shuts them down, so a
  server that trickles bytes just faster than ``timeout`` cannot hold a
  worker beyond the deadline.  The attempt then fails with the transient
  reason ``deadline``.  Not covered: DNS resolution (bounded by the system
  resolver) and the TLS handshake (bounded by ``timeout`` per read only).

``Retry-After`` (seconds or an HTTP date) on a 429/503 answer is parsed into
:attr:`FetchFailed.retry_after`; the caller decides how long to wait.
"""

from __future__ import annotations

import email.utils
import http.client
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from re import Pattern

__all__ = ["Deadline", "FetchFailed", "FetchSettings", "build_opener", "fetch",
           "parse_retry_after", "request_url"]

_CHUNK = 1 << 16
#: Characters left as they are when re-quoting a URL's path and query.
_SAFE_URL_CHARS = "/%:@!$&'()*+,;=~?"
_local = threading.local()


class FetchFailed(Exception):
    """A fetch attempt failed; ``transient`` failures may be retried.

    ``retry_after`` is the server's ``Retry-After`` in seconds (>= 0), if any;
    ``attempts`` is set by a caller that retries (0 when no request was made).
    """

    def __init__(self, reason: str, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.retry_after = retry_after
        self.attempts = 0


@dataclass(frozen=True)
class FetchSettings:
    """What :func:`fetch` needs (a subset of the downloader's settings)."""

    timeout: float
    max_bytes: int
    user_agent: str
    placeholder_url_patterns: tuple[Pattern[str], ...]


# --------------------------------------------------------------------------
# deadline
# --------------------------------------------------------------------------


class Deadline:
    """A wall-clock limit that shuts down the sockets registered with it.

    Use as a context manager around one attempt; while active, connections
    opened in the same thread by :func:`build_opener`'s handlers register
    their sockets and bound their connect timeout by :meth:`remaining`.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                with suppress(OSError):  # closed already, or detached by TLS
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Deadline:
        _local.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _local.deadline = None


def _bounded_timeout(timeout: object) -> object:
    deadline: Deadline | None = getattr(_local, "deadline", None)
    if deadline is None or not isinstance(timeout, (int, float)):
        return timeout
    return max(0.001, min(float(timeout), deadline.remaining()))


def _register(sock: socket.socket) -> None:
    deadline: Deadline | None = getattr(_local, "deadline", None)
    if deadline is not None:
        deadline.register(sock)


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        self.timeout = _bounded_timeout(self.timeout)
        super().connect()
        _register(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        self.timeout = _bounded_timeout(self.timeout)
        super().connect()
        _register(self.sock)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req, context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows at most ``max_redirections`` redirects."""

    def __init__(self, max_redirections: int) -> None:
        super().__init__()
        self.max_redirections = max_redirections
        self.max_repeats = min(self.max_repeats, max_redirections)


def build_opener(max_redirects: int) -> urllib.request.OpenerDirector:
    """An http/https-only opener (no file://, ftp://, data:) with capped redirects."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),  # honours http(s)_proxy / no_proxy
        urllib.request.UnknownHandler(),
        _HTTPHandler(),
        _HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _RedirectHandler(max_redirects),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


# --------------------------------------------------------------------------
# URLs, errors, Retry-After
# --------------------------------------------------------------------------


def request_url(url: str) -> str:
    """Percent-encode a listed URL for sending (non-ASCII, spaces); drop the fragment.

    Raises:
        FetchFailed: ``invalid_url`` for non-http(s) or unparsable URLs.
    """
    try:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        netloc = parts.netloc
        if not netloc.isascii():
            netloc = parts.hostname.encode("idna").decode("ascii")
            if parts.port is not None:
                netloc = f"{netloc}:{parts.port}"
        path = urllib.parse.quote(parts.path or "/", safe=_SAFE_URL_CHARS)
        query = urllib.parse.quote(parts.query, safe=_SAFE_URL_CHARS)
        return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, path, query, ""))
    except (ValueError, UnicodeError):
        raise FetchFailed("invalid_url", transient=False) from None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date).

    Returns None when absent or unparsable; a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


def classify_exception(exc: BaseException) -> tuple[str, bool]:
    """Map a urllib/socket exception to ``(reason, transient)``."""
    if isinstance(exc, urllib.error.HTTPError):
        code = exc.code
        if 300 <= code < 400:
            if "infinite loop" in str(exc.msg):
                return "too_many_redirects", False
            return "redirect_error", False
        return f"http_{code}", code == 429 or 500 <= code < 600
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        if isinstance(inner, BaseException):
            return classify_exception(inner)
        if "unknown url type" in str(inner):
            return "invalid_url", False
        return "connection_error", True
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias
        return "timeout", True
    if isinstance(exc, socket.gaierror):
        temporary = exc.errno == getattr(socket, "EAI_AGAIN", object())
        return ("connection_error", True) if temporary else ("dns_error", False)
    if isinstance(exc, ssl.SSLError):
        return "ssl_error", False
    if isinstance(exc, ValueError):  # includes http.client.InvalidURL, UnicodeError
        return "invalid_url", False
    if isinstance(exc, (http.client.HTTPException, OSError)):
        return "connection_error", True
    return f"fetch_error:{type(exc).__name__}", False


# --------------------------------------------------------------------------
# one attempt
# --------------------------------------------------------------------------


def fetch(opener: urllib.request.OpenerDirector, url: str, settings: FetchSettings,
          deadline: float) -> bytes:
    """One HTTP attempt of at most ``deadline`` seconds; returns an acceptable body.

    Raises:
        FetchFailed: with the reason and whether it is transient (``deadline``
            when the wall-clock limit was hit).
    """
    request = urllib.request.Request(
        url, headers={"User-Agent": settings.user_agent, "Accept": "image/*,*/*;q=0.5"}
    )
    with Deadline(deadline) as limit:
        try:
            return _read_response(opener, request, settings, limit)
        except FetchFailed:
            if limit.expired:
                raise FetchFailed("deadline", transient=True) from None
            raise
        except urllib.error.HTTPError as exc:
            retry_after = parse_retry_after(exc.headers.get("Retry-After")) if exc.headers else None
            exc.close()
            reason, transient = classify_exception(exc)
            raise FetchFailed(reason, transient, retry_after) from None
        except Exception as exc:
            if limit.expired:
                raise FetchFailed("deadline", transient=True) from None
            reason, transient = classify_exception(exc)
            raise FetchFailed(reason, transient) from None


def _read_response(opener: urllib.request.OpenerDirector, request: urllib.request.Request,
                   settings: FetchSettings, limit: Deadline) -> bytes:
    with opener.open(request, timeout=settings.timeout) as response:
        final_url = response.geturl()
        if any(p.search(final_url) for p in settings.placeholder_url_patterns):
            raise FetchFailed("placeholder_redirect", transient=False)
        if response.status != 200:
            raise FetchFailed(f"http_{response.status}", transient=False)
        content_type = response.headers.get("Content-Type")
        mime = content_type.split(";", 1)[0].strip().lower() if content_type else ""
        if not mime:
            raise FetchFailed("content_type:missing", transient=False)
        if not mime.startswith("image/"):
            raise FetchFailed(f"content_type:{mime}", transient=False)
        length = response.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > settings.max_bytes:
            raise FetchFailed("too_large_bytes", transient=False)
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read1(_CHUNK):
            size += len(chunk)
            if size > settings.max_bytes:
                raise FetchFailed("too_large_bytes", transient=False)
            chunks.append(chunk)
        if limit.expired:  # the socket was shut down: the body is cut short
            raise FetchFailed("deadline", transient=True)
        if length and length.strip().isdigit() and size < int(length):
            raise FetchFailed("connection_error", transient=True)
        return b"".join(chunks)
