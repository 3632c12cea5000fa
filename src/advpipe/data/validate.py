"""Validation of downloaded image bytes.

:func:`validate_image_bytes` decides whether bytes that arrived over HTTP are a
usable photo.  Checks, in order (each rejection is an :class:`ImageRejected`
with a machine-readable ``reason``):

1. size >= ``min_bytes`` (``too_small_bytes``); sha256 not a known placeholder
   (``placeholder_hash``);
2. Pillow identifies one of :data:`IMAGE_FORMATS` (``decode_error:<msg>``);
3. width*height <= ``max_pixels``, read from the header before any pixel is
   decoded (``too_many_pixels``); both sides >= ``min_side`` (``too_small_side``);
4. a bounded decode: an image above ``decode_pixels`` is decoded at reduced
   size when the format allows it (JPEG draft mode, scale 1/2, 1/4 or 1/8 --
   the image is then *saved* at that size too) and rejected otherwise
   (``decode_budget``), so no image costs much more than
   ``decode_pixels`` x 4 bytes (x a small factor for mode conversion);
5. decode-level integrity: JPEG marker/scan structure
   (:mod:`advpipe.data.jpeg_structure`: ``corrupt:jpeg_markers``,
   ``corrupt:incomplete_scans``, ``corrupt:restart_markers``, ``truncated``);
   for a single-scan JPEG, the entropy-coded data must be used up -- if the
   image still decodes with its last 8 data bytes removed, the file carries
   extraneous data (``corrupt:extraneous_data``, libjpeg's "extraneous bytes"
   warning); a full decode (``truncated`` or ``decode_error:<msg>``); any
   Python warning Pillow emits while opening or decoding (``corrupt:<msg>``);
6. conversion to RGB (first frame of animations; ``unsupported_mode:<mode>``);
7. not blank (``placeholder_uniform``; :mod:`advpipe.data.placeholders`) --
   before the noise test, since a flat image with faint noise is both;
8. not statistically noise (``noise``; :mod:`advpipe.data.noise`: smooth
   structure at some scale, and no blocks of random DCT coefficients);
9. for a single-scan JPEG, the entropy-coded data must be long enough
   (``corrupt:premature_end``): when it runs out before the last block,
   libjpeg warns ("premature end of data segment") and fills the rest of the
   image with grey -- a valid header followed by a few random bytes decodes
   to a band of noise above a flat grey image.  Tested by decoding again with
   extra bytes before the EOI marker: a complete scan ignores them, a starved
   one decodes them into the missing blocks.  (After the noise test, so that
   garbage which is noise where it decoded keeps the reason ``noise``.)
10. not a text placeholder (:mod:`advpipe.data.placeholders`: ``placeholder_text``).

EXIF orientation is not applied (like the original ImageNet files).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import threading
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .images import to_rgb
from .jpeg_structure import JpegLayout, inspect_jpeg
from .noise import noise_reason
from .placeholders import placeholder_reason, uniform_reason

#: Formats Pillow may open.  Restricting them keeps untrusted bytes away from
#: exotic decoders (EPS, for one, runs Ghostscript).
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
#: Bytes removed from the end of a single-scan JPEG's data by the extraneous-data test.
_EXTRANEOUS_BYTES = 8
#: Bytes inserted before the EOI marker by the premature-end test: fixed
#: pseudo-random entropy-coded data without 0xFF (so without markers).
_PREMATURE_PAD = np.random.default_rng(0).integers(0, 255, 512, dtype=np.uint8).tobytes()

#: Serialises opening and decoding: the warning filters below are process-global
#: (installed and restored by one thread at a time), and one decode at a time
#: bounds the memory of the whole downloader, not only of one image.
_DECODE_LOCK = threading.RLock()


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


@dataclass(frozen=True)
class ValidationSettings:
    """Thresholds of :func:`validate_image_bytes` (see the module docstring).

    These field defaults are the one home of the defaults (the ``data.urls``
    params and the downloader read them from here).

    Attributes:
        min_bytes: smaller bodies are rejected (``too_small_bytes``).
        min_side: both sides must be at least this (``too_small_side``).
        max_pixels: width*height limit read from the header, before decoding
            (``too_many_pixels``; Pillow's decompression-bomb limit).
        decode_pixels: larger images are decoded at 1/2..1/8 size (JPEG) or
            rejected (``decode_budget``).
        placeholder_hashes: sha256 hex digests of known placeholder bodies.
        uniform_std: ``placeholder_uniform`` when every channel's standard
            deviation is below this...
        placeholder_max_colors: ...or the image has at most this many colours.
        background_fraction: ``placeholder_text`` needs a dominant colour
            covering at least this share of the image (> 1: no text check)...
        background_tolerance: ...counting the pixels within this many levels
            (max channel difference) of it -- a placeholder's one exact colour...
        text_ink_margin: ...and "ink": the pixels more than
            ``background_tolerance + text_ink_margin`` levels from it (text,
            icons, objects -- not the shading or noise of a plain background)...
        text_edge_ratio: ...of which at least this share touches non-ink
            pixels (4-neighbourhood): thin strokes, not a compact object.
        noise_min_correlation: ``noise`` when the largest adjacent-pixel
            correlation over the scales (full resolution to 32x32 averages)
            stays below this (:mod:`advpipe.data.noise`).
        noise_max_blockiness: ``noise`` for a JPEG whose 8x8 block-border
            step exceeds this times the step inside blocks...
        noise_min_block_correlation: ...and whose in-block correlation (block
            means removed) is below this.
    """

    min_bytes: int = 2048
    min_side: int = 64
    max_pixels: int = 89_478_485
    decode_pixels: int = 16_000_000
    placeholder_hashes: frozenset[str] = field(default_factory=frozenset)
    uniform_std: float = 4.0
    placeholder_max_colors: int = 8
    background_fraction: float = 0.6
    background_tolerance: int = 4
    text_ink_margin: int = 12
    text_edge_ratio: float = 0.6
    noise_min_correlation: float = 0.3
    noise_max_blockiness: float = 1.5
    noise_min_block_correlation: float = 0.1

    def check(self) -> None:
        """Raise ValueError naming the first out-of-range field."""
        if self.min_bytes < 0 or self.min_side < 0:
            raise ValueError("min_bytes and min_side must be >= 0")
        if self.max_pixels < 1 or self.decode_pixels < 1:
            raise ValueError("max_pixels and decode_pixels must be >= 1")
        if not 0 <= self.background_fraction or not 0 <= self.text_edge_ratio <= 1:
            raise ValueError("background_fraction must be >= 0 and text_edge_ratio in [0, 1]")
        if not 0 <= self.background_tolerance <= 255 or not 0 <= self.text_ink_margin <= 255:
            raise ValueError("background_tolerance and text_ink_margin must be in [0, 255]")


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


# --------------------------------------------------------------------------
# opening and decoding
# --------------------------------------------------------------------------


def _decode(image: Image.Image) -> None:
    """``image.load()``, with Pillow's warnings and errors mapped to rejections."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image.load()
    except ImageRejected:
        raise
    except Exception as exc:
        message = _short_message(exc)
        if isinstance(exc, Warning):
            raise ImageRejected(f"corrupt:{message}") from None
        if "truncated" in message.lower():
            raise ImageRejected("truncated") from None
        raise ImageRejected(f"decode_error:{message}") from None


def _open(body: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("error", UserWarning)
            return Image.open(io.BytesIO(body), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("too_many_pixels") from None
    except Warning as exc:
        raise ImageRejected(f"corrupt:{_short_message(exc)}") from None
    except Exception as exc:  # Pillow raises many types on junk input
        raise ImageRejected(f"decode_error:{_short_message(exc)}") from None


def _draft_scale(image: Image.Image, budget: int) -> int:
    """1, or the JPEG draft scale (2, 4, 8) that fits ``budget`` pixels; 0 if none does."""
    width, height = image.size
    for scale in (1, 2, 4, 8):
        if math.ceil(width / scale) * math.ceil(height / scale) <= budget:
            return scale if scale == 1 or image.format == "JPEG" else 0
    return 0


def _decode_jpeg_alone(data: bytes, scale: int) -> Image.Image | None:
    """``data`` (a JPEG) fully decoded at draft ``scale``, warnings ignored; None on failure."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=("JPEG",))
            if scale > 1:
                w, h = image.size
                image.draft(image.mode, (math.ceil(w / scale), math.ceil(h / scale)))
            image.load()
        return image
    except Exception:
        return None


@dataclass
class _Decoded:
    """An opened, size-checked and decoded image, before conversion to RGB."""

    image: Image.Image
    info: ImageInfo
    scale: int
    layout: JpegLayout | None  # JPEGs only


def _checked_open(body: bytes, digest: str, settings: ValidationSettings) -> _Decoded:
    """Steps 2-5 of the module docstring (call under ``_DECODE_LOCK``)."""
    image = _open(body)
    width, height = image.size
    if width * height > settings.max_pixels:
        raise ImageRejected("too_many_pixels")
    if min(width, height) < settings.min_side:
        raise ImageRejected("too_small_side")
    scale = _draft_scale(image, settings.decode_pixels)
    if scale == 0:
        raise ImageRejected("decode_budget")
    layout = None
    if image.format == "JPEG":
        layout = inspect_jpeg(body)
        if layout.problem is not None:
            raise ImageRejected(layout.problem)
        if layout.scans == 1 and _decode_jpeg_alone(
                body[: max(0, layout.eoi - _EXTRANEOUS_BYTES)], scale) is not None:
            raise ImageRejected("corrupt:extraneous_data")
    if scale > 1:
        image.draft(image.mode, (math.ceil(width / scale), math.ceil(height / scale)))
    _decode(image)
    info = ImageInfo(image.format, image.mode, width, height, len(body), digest)
    return _Decoded(image, info, scale, layout)


def _premature_end(body: bytes, decoded: _Decoded) -> bool:
    """Whether a single-scan JPEG's entropy-coded data ran out before its last block.

    Decodes again with :data:`_PREMATURE_PAD` before the EOI marker: a complete
    scan ignores the extra bytes (the same pixels), a starved one decodes them.
    """
    layout = decoded.layout
    if layout is None or layout.scans != 1:
        return False
    padded = body[:layout.eoi] + _PREMATURE_PAD + body[layout.eoi:]
    with _DECODE_LOCK:
        again = _decode_jpeg_alone(padded, decoded.scale)
        if again is None or again.size != decoded.image.size:
            return True
        return np.asarray(again).tobytes() != np.asarray(decoded.image).tobytes()


# --------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------


def validate_image_bytes(
    body: bytes, settings: ValidationSettings | None = None, **overrides: object
) -> tuple[Image.Image, ImageInfo]:
    """Validate downloaded bytes and return the image converted to RGB.

    ``settings`` (defaults when None) with ``overrides`` applied (field names
    of :class:`ValidationSettings`).  See the module docstring for the checks.
    The returned image may be smaller than ``ImageInfo.width x height`` when
    it was decoded at reduced size.

    Raises:
        ImageRejected: with the reason of the first failed check.
        RuntimeError: if ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is True.
        TypeError: an unknown override.
    """
    settings = replace(settings or ValidationSettings(), **overrides)  # type: ignore[arg-type]
    check_truncation_flag()
    if len(body) < settings.min_bytes:
        raise ImageRejected("too_small_bytes")
    digest = hashlib.sha256(body).hexdigest()
    if digest in settings.placeholder_hashes:
        raise ImageRejected("placeholder_hash")
    with _DECODE_LOCK:
        decoded = _checked_open(body, digest, settings)
        try:
            rgb = to_rgb(decoded.image)
        except ValueError as exc:
            raise ImageRejected(str(exc)) from exc
    reason = _content_reason(body, rgb, decoded, settings)
    if reason:
        raise ImageRejected(reason)
    return rgb, decoded.info


def _content_reason(body: bytes, rgb: Image.Image, decoded: _Decoded,
                    settings: ValidationSettings) -> str | None:
    """Steps 7-10 of the module docstring: blank, noise, premature end, placeholders."""
    reason = uniform_reason(rgb, uniform_std=settings.uniform_std,
                            max_colors=settings.placeholder_max_colors)
    if reason is None:
        gray = np.asarray(rgb.convert("L"))
        jpeg_grid = decoded.layout is not None and decoded.scale == 1
        reason = noise_reason(gray, jpeg_grid, settings.noise_min_correlation,
                              settings.noise_max_blockiness, settings.noise_min_block_correlation)
    if reason is None and _premature_end(body, decoded):
        reason = "corrupt:premature_end"
    return reason or placeholder_reason(
        rgb,
        uniform_std=settings.uniform_std,
        max_colors=settings.placeholder_max_colors,
        background_fraction=settings.background_fraction,
        background_tolerance=settings.background_tolerance,
        ink_margin=settings.text_ink_margin,
        edge_ratio=settings.text_edge_ratio,
    )
