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
  decode only partially.

It returns the offset of the EOI marker and the number of scans; the caller
uses them for a decode-level test of extraneous entropy-coded data (see
:mod:`advpipe.data.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JpegLayout", "inspect_jpeg"]

_SOF_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
#: Markers that may end a scan (what follows entropy-coded data).
_AFTER_SCAN = {0xC4, 0xCC, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xFE} | set(range(0xE0, 0xF0))


@dataclass(frozen=True)
class JpegLayout:
    """What :func:`inspect_jpeg` found (``problem`` is None for a sound stream)."""

    problem: str | None
    progressive: bool = False
    scans: int = 0
    eoi: int = -1  # offset of the FF D9 marker


def _coverage_complete(components: list[int], scans: list[tuple[list[int], int, int, int, int]]) -> bool:
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
    n = len(data)
    if n < 4 or data[:2] != b"\xff\xd8":
        return JpegLayout("corrupt:jpeg_markers")
    pos = 2
    progressive = False
    components: list[int] = []
    scans: list[tuple[list[int], int, int, int, int]] = []
    while True:
        if pos >= n:
            return JpegLayout("truncated", progressive, len(scans))
        if data[pos] != 0xFF:
            return JpegLayout("corrupt:jpeg_markers", progressive, len(scans))  # extraneous bytes
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return JpegLayout("truncated", progressive, len(scans))
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            if progressive and not _coverage_complete(components, scans):
                return JpegLayout("corrupt:incomplete_scans", progressive, len(scans), pos - 2)
            if not scans:
                return JpegLayout("corrupt:jpeg_markers", progressive, 0, pos - 2)
            return JpegLayout(None, progressive, len(scans), pos - 2)
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            continue  # parameterless (TEM, stray RST)
        if pos + 2 > n:
            return JpegLayout("truncated", progressive, len(scans))
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            return JpegLayout("corrupt:jpeg_markers", progressive, len(scans))
        segment = data[pos + 2:pos + length]
        if pos + length > n:
            return JpegLayout("truncated", progressive, len(scans))
        pos += length
        if marker in _SOF:
            progressive = marker in _SOF_PROGRESSIVE
            if len(segment) < 6:
                return JpegLayout("corrupt:jpeg_markers", progressive, len(scans))
            count = segment[5]
            components = [segment[6 + 3 * i] for i in range(count) if 6 + 3 * i < len(segment)]
        elif marker == 0xDA:
            if not segment:
                return JpegLayout("corrupt:jpeg_markers", progressive, len(scans))
            count = segment[0]
            if len(segment) < 1 + 2 * count + 3:
                return JpegLayout("corrupt:jpeg_markers", progressive, len(scans))
            ids = [segment[1 + 2 * i] for i in range(count)]
            ss, se, a = segment[1 + 2 * count], segment[2 + 2 * count], segment[3 + 2 * count]
            scans.append((ids, ss, se, a >> 4, a & 0x0F))
            # entropy-coded data: FF 00 (stuffing), FF D0-D7 (restart) and
            # fill bytes FF FF are allowed; any other marker ends the scan.
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    return JpegLayout("truncated", progressive, len(scans))
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                elif following in _AFTER_SCAN or following in _SOF:
                    break
                else:
                    return JpegLayout("corrupt:jpeg_markers", progressive, len(scans))
