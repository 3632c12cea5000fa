"""Validation of downloaded image bytes.

:func:`validate_image_bytes` decides whether bytes that arrived over HTTP are a
usable photo: minimum size, a known-placeholder hash, one of the allowed formats,
a decompression-bomb limit read from the header *before* the pixels are decoded,
a minimum side, a full decode (truncated files are rejected), conversion to RGB,
and a near-uniform-image heuristic for the placeholders dead links serve. Every
rejection is an :class:`ImageRejected` with a machine-readable ``reason``.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import warnings
from collections.abc import Collection
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageStat, UnidentifiedImageError

from .images import to_rgb

#: Formats Pillow may open.  Restricting them keeps untrusted bytes away from
#: exotic decoders (EPS, for one, runs Ghostscript).
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
#: Side of the nearest-neighbour thumbnail used by the uniformity heuristic.
_STAT_SIDE = 128

#: Serialises ``Image.open`` so that the DecompressionBombWarning -> error
#: filter below is installed and restored by one thread at a time.
_OPEN_LOCK = threading.Lock()


class ImageRejected(ValueError):
    """Raised by :func:`validate_image_bytes`; ``reason`` is machine-readable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """What was learnt about an accepted image."""

    format: str | None
    mode: str
    width: int
    height: int
    bytes: int
    sha256: str


def _short_message(exc: BaseException) -> str:
    """A one-line, address-free message for a ``decode_error:<msg>`` reason."""
    if isinstance(exc, UnidentifiedImageError):
        return "cannot_identify"
    text = str(exc) or type(exc).__name__
    text = re.sub(r"<[^>]*>", "", text)  # object reprs carry memory addresses
    text = re.sub(r"\s+", " ", text).strip()
    return text[:100] or type(exc).__name__


def check_truncation_flag() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by another module); "
            "truncated downloads could not be detected. Set it to False before "
            "downloading."
        )


def _is_near_uniform(rgb: Image.Image, uniform_std: float, max_colors: int) -> bool:
    """Blank/placeholder heuristic on a nearest-neighbour thumbnail.

    True when every channel's standard deviation is below ``uniform_std``
    (0-255 scale) or the thumbnail has at most ``max_colors`` distinct colours.
    """
    width, height = rgb.size
    small = rgb.resize((min(width, _STAT_SIDE), min(height, _STAT_SIDE)), Image.Resampling.NEAREST)
    if uniform_std > 0 and max(ImageStat.Stat(small).stddev) < uniform_std:
        return True
    return max_colors > 0 and small.getcolors(maxcolors=max_colors) is not None


def validate_image_bytes(
    body: bytes,
    *,
    min_bytes: int = 2048,
    min_side: int = 64,
    max_pixels: int = 89_478_485,
    placeholder_hashes: Collection[str] = frozenset(),
    uniform_std: float = 4.0,
    placeholder_max_colors: int = 8,
) -> tuple[Image.Image, ImageInfo]:
    """Validate downloaded bytes and return the image converted to RGB.

    Checks, in order: size >= ``min_bytes``; sha256 not in
    ``placeholder_hashes``; Pillow identifies it as one of
    :data:`IMAGE_FORMATS`; width*height <=
    ``max_pixels`` (from the header, before decoding pixels; Pillow's own
    DecompressionBombError/Warning is also mapped to ``too_many_pixels`` --
    note that Pillow refuses anything above ``2 * Image.MAX_IMAGE_PIXELS``
    regardless); both sides >= ``min_side``; full decode (``load()``;
    truncated files -> ``truncated``); conversion to RGB; not near-uniform
    (see :func:`_is_near_uniform`, reason ``placeholder_uniform``).

    Raises:
        ImageRejected: with the reason of the first failed check.
        RuntimeError: if ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is True.
    """
    check_truncation_flag()
    if len(body) < min_bytes:
        raise ImageRejected("too_small_bytes")
    digest = hashlib.sha256(body).hexdigest()
    if digest in placeholder_hashes:
        raise ImageRejected("placeholder_hash")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(body), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("too_many_pixels") from None
    except Exception as exc:  # Pillow raises many types on junk input
        raise ImageRejected(f"decode_error:{_short_message(exc)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected("too_many_pixels")
    if min(width, height) < min_side:
        raise ImageRejected("too_small_side")
    try:
        image.load()
    except Exception as exc:
        message = _short_message(exc)
        if "truncated" in message.lower():
            raise ImageRejected("truncated") from None
        raise ImageRejected(f"decode_error:{message}") from None
    info = ImageInfo(image.format, image.mode, width, height, len(body), digest)
    try:
        rgb = to_rgb(image)
    except ValueError as exc:
        raise ImageRejected(str(exc)) from exc
    if _is_near_uniform(rgb, uniform_std, placeholder_max_colors):
        raise ImageRejected("placeholder_uniform")
    return rgb, info
