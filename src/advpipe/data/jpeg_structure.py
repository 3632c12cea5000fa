"""Structural checks of a JPEG byte stream (markers and scans), without decoding.

Pillow decodes JPEGs with libjpeg but drops libjpeg's warnings ("Corrupt JPEG
data: N extraneous bytes before marker", "premature end of data segment", ...),
so a valid header followed by garbage can decode to noise.  :func:`inspect_jpeg`
walks the marker segments and the entropy-coded data of every scan and reports
what libjpeg would warn about or fail on:

* a marker segment that runs past the end, bytes between segments that are
  not a marker, or an invalid marker inside entropy-coded data
  (``corrupt:jpeg_markers``);
* no End-Of-Image marker (``truncated``);
* a progressive image whose scans do not cover every coefficient of every
  component down to the last bit (``corrupt:incomplete_scans``) -- it would
  decode only partially;
* with a restart interval (DRI), a scan whose restart markers are not exactly
  RST0, RST1, ... (modulo 8), one per interval boundary
  (``corrupt:restart_markers``).  libjpeg warns ("found marker 0xd9 instead
  of RST0") and fills the rest of the image with grey: a valid header with
  a restart interval followed by random bytes decodes to one row of noise
  above a flat grey image.

It returns the offset of the EOI marker and the number of scans; the caller
uses them for decode-level tests of the entropy-coded data (see
:mod:`advpipe.data.validate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["JpegLayout", "inspect_jpeg"]

_SOF_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
#: Markers that may end a scan (what follows entropy-coded data).
_AFTER_SCAN = {0xC4, 0xCC, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xFE} | set(range(0xE0, 0xF0))
_DRI, _SOS, _EOI = 0xDD, 0xDA, 0xD9


@dataclass(frozen=True)
class JpegLayout:
    """What :func:`inspect_jpeg` found (``problem`` is None for a sound stream)."""

    problem: str | None
    progressive: bool = False
    scans: int = 0
    eoi: int = -1  # offset of the FF D9 marker


class _Corrupt(Exception):
    """Ends the walk with a problem (``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Frame:
    """What the walk has learnt so far."""

    progressive: bool = False
    width: int = 0
    height: int = 0
    sampling: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (h, v)
    restart_interval: int = 0
    scans: list[tuple[list[int], int, int, int, int]] = field(default_factory=list)

    def layout(self, problem: str | None, eoi: int = -1) -> JpegLayout:
        return JpegLayout(problem, self.progressive, len(self.scans), eoi)

    def mcus(self, ids: list[int]) -> int | None:
        """MCUs of a scan over components ``ids`` (None when unknown, e.g. DNL height)."""
        if not self.width or not self.height or not self.sampling:
            return None
        h_max = max(h for h, _ in self.sampling.values())
        v_max = max(v for _, v in self.sampling.values())
        if len(ids) > 1:  # interleaved: one MCU covers 8*h_max x 8*v_max pixels
            return math.ceil(self.width / (8 * h_max)) * math.ceil(self.height / (8 * v_max))
        h, v = self.sampling.get(ids[0], (h_max, v_max)) if ids else (h_max, v_max)
        columns = math.ceil(math.ceil(self.width * h / h_max) / 8)
        return columns * math.ceil(math.ceil(self.height * v / v_max) / 8)


def _coverage_complete(components: list[int],
                       scans: list[tuple[list[int], int, int, int, int]]) -> bool:
    """True when, per component, coefficients 0..63 are all refined down to bit 0."""
    final = {c: [False] * 64 for c in components}
    for ids, ss, se, _ah, al in scans:
        if not (0 <= ss <= se <= 63):
            return False
        if al == 0:
            for c in ids:
                if c in final:
                    for k in range(ss, se + 1):
                        final[c][k] = True
    return all(all(done) for done in final.values())


def inspect_jpeg(data: bytes) -> JpegLayout:
    """Walk the markers of a JPEG file (see the module docstring)."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return JpegLayout("corrupt:jpeg_markers")
    frame = _Frame()
    pos = 2
    try:
        while True:
            marker, pos = _next_marker(data, pos)
            if marker == _EOI:
                return frame.layout(_end_problem(frame), pos - 2)
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:
                continue  # parameterless (TEM, stray RST)
            segment, pos = _segment(data, pos)
            _read_segment(frame, marker, segment)
            if marker == _SOS:
                pos = _skip_scan(data, pos, frame)
    except _Corrupt as problem:
        return frame.layout(problem.reason)


def _end_problem(frame: _Frame) -> str | None:
    """The problem found at EOI, if any."""
    if frame.progressive and not _coverage_complete(list(frame.sampling), frame.scans):
        return "corrupt:incomplete_scans"
    if not frame.scans:
        return "corrupt:jpeg_markers"
    return None


def _next_marker(data: bytes, pos: int) -> tuple[int, int]:
    """The marker at ``pos`` (after fill bytes) and the offset after it."""
    n = len(data)
    if pos >= n:
        raise _Corrupt("truncated")
    if data[pos] != 0xFF:
        raise _Corrupt("corrupt:jpeg_markers")  # extraneous bytes
    while pos < n and data[pos] == 0xFF:  # fill bytes
        pos += 1
    if pos >= n:
        raise _Corrupt("truncated")
    return data[pos], pos + 1


def _segment(data: bytes, pos: int) -> tuple[bytes, int]:
    """The payload of the marker segment at ``pos`` and the offset after it."""
    if pos + 2 > len(data):
        raise _Corrupt("truncated")
    length = int.from_bytes(data[pos:pos + 2], "big")
    if length < 2:
        raise _Corrupt("corrupt:jpeg_markers")
    if pos + length > len(data):
        raise _Corrupt("truncated")
    return data[pos + 2:pos + length], pos + length


def _read_segment(frame: _Frame, marker: int, segment: bytes) -> None:
    """Note what ``frame`` needs from a SOF, DRI or SOS segment."""
    if marker in _SOF:
        frame.progressive = marker in _SOF_PROGRESSIVE
        if len(segment) < 6:
            raise _Corrupt("corrupt:jpeg_markers")
        frame.height = int.from_bytes(segment[1:3], "big")
        frame.width = int.from_bytes(segment[3:5], "big")
        count = segment[5]
        frame.sampling = {segment[6 + 3 * i]: (segment[7 + 3 * i] >> 4, segment[7 + 3 * i] & 0x0F)
                          for i in range(count) if 8 + 3 * i < len(segment)}
        if any(h == 0 or v == 0 for h, v in frame.sampling.values()):
            raise _Corrupt("corrupt:jpeg_markers")
    elif marker == _DRI:
        if len(segment) < 2:
            raise _Corrupt("corrupt:jpeg_markers")
        frame.restart_interval = int.from_bytes(segment[:2], "big")
    elif marker == _SOS:
        if not segment:
            raise _Corrupt("corrupt:jpeg_markers")
        count = segment[0]
        if len(segment) < 1 + 2 * count + 3:
            raise _Corrupt("corrupt:jpeg_markers")
        ids = [segment[1 + 2 * i] for i in range(count)]
        ss, se, a = segment[1 + 2 * count], segment[2 + 2 * count], segment[3 + 2 * count]
        frame.scans.append((ids, ss, se, a >> 4, a & 0x0F))


def _skip_scan(data: bytes, pos: int, frame: _Frame) -> int:
    """Offset of the marker that ends the entropy-coded data starting at ``pos``.

    Stuffing (FF 00), restart markers (FF D0-D7) and fill bytes (FF FF) are
    allowed inside; any other marker ends the scan.  The restart markers are
    checked against the restart interval.
    """
    n = len(data)
    restarts = 0
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= n:
            raise _Corrupt("truncated")
        following = data[pos + 1]
        if following == 0x00:
            pos += 2
        elif 0xD0 <= following <= 0xD7:
            if frame.restart_interval == 0 or following != 0xD0 + restarts % 8:
                raise _Corrupt("corrupt:restart_markers")
            restarts += 1
            pos += 2
        elif following == 0xFF:
            pos += 1
        elif following in _AFTER_SCAN or following in _SOF:
            _check_restart_count(frame, restarts)
            return pos
        else:
            raise _Corrupt("corrupt:jpeg_markers")


def _check_restart_count(frame: _Frame, restarts: int) -> None:
    """One restart marker per interval boundary of the scan just read."""
    if frame.restart_interval == 0:
        return
    mcus = frame.mcus(frame.scans[-1][0])
    if mcus is not None and restarts != math.ceil(mcus / frame.restart_interval) - 1:
        raise _Corrupt("corrupt:restart_markers")
