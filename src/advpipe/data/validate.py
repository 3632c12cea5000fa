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
   ``corrupt:incomplete_scans``, ``truncated``); for a single-scan JPEG, the
   entropy-coded data must be used up -- if the image still decodes with its
   last 8 data bytes removed, the file carries extraneous data
   (``corrupt:extraneous_data``, libjpeg's "extraneous bytes" warning); a full
   decode (``truncated`` or ``decode_error:<msg>``); any Python warning Pillow
   emits while opening or decoding (``corrupt:<msg>``);
6. conversion to RGB (first frame of animations; ``unsupported_mode:<mode>``);
7. not statistically noise (``noise``), judged on a centre crop of the
   full-resolution greyscale image:

   - the image must have smooth structure at *some* scale: the correlation of
     horizontally/vertically adjacent pixels (the smaller of the two), at full
     resolution or after 2x2 or 4x4 box averaging (the largest of the three),
     must be at least ``noise_min_correlation`` (white noise: about 0 at every
     scale; genuine photos: 0.62 and more -- a photo whose fine texture or
     sensor noise decorrelates neighbouring pixels is still smooth once
     averaged);
   - a JPEG decoded at full size is noise when its 8x8 blocks are *both*
     blocky -- the mean step across block borders exceeds
     ``noise_max_blockiness`` times the step inside blocks -- *and* without
     structure inside: with each block's mean removed, the correlation of
     adjacent pixels within blocks is below ``noise_min_block_correlation``.
     Garbage entropy data decodes to blocks of random DCT coefficients
     (blockiness 2.2-2.8, in-block correlation -0.2-0.0); heavily compressed
     genuine photos can be as blocky (up to 2.2 on Imagenette) but their blocks
     hold smooth gradients (in-block correlation 0.17 and more; 0.6 and more
     among those above 1.5);
8. not a placeholder (:mod:`advpipe.data.placeholders`:
   ``placeholder_uniform``, ``placeholder_text``).

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
from .jpeg_structure import inspect_jpeg
from .placeholders import placeholder_reason

#: Formats Pillow may open.  Restricting them keeps untrusted bytes away from
#: exotic decoders (EPS, for one, runs Ghostscript).
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
#: Side of the centre crop the noise statistics look at.
_NOISE_SIDE = 512
#: Box-averaging factors at which the noise test looks for smooth structure.
_NOISE_SCALES = (1, 2, 4)
#: Bytes removed from the end of a single-scan JPEG's data by the extraneous-data test.
_EXTRANEOUS_BYTES = 8

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
    """Thresholds of :func:`validate_image_bytes` (see the module docstring)."""

    min_bytes: int = 2048
    min_side: int = 64
    max_pixels: int = 89_478_485
    decode_pixels: int = 16_000_000
    placeholder_hashes: frozenset[str] = field(default_factory=frozenset)
    uniform_std: float = 4.0
    placeholder_max_colors: int = 8
    background_fraction: float = 0.6
    background_tolerance: int = 4
    text_edge_ratio: float = 0.35
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
        if not 0 <= self.background_tolerance <= 255:
            raise ValueError("background_tolerance must be in [0, 255]")


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


def _adjacent_correlation(image: np.ndarray) -> float | None:
    """The smaller of the horizontal and vertical adjacent-pixel correlations (None: flat)."""
    correlations = []
    for a, b in ((image[:, :-1], image[:, 1:]), (image[:-1], image[1:])):
        if a.size == 0:
            continue
        a, b = a - a.mean(), b - b.mean()
        denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
        if denominator > 0:
            correlations.append(float((a * b).sum()) / denominator)
    return min(correlations) if correlations else None


def _box_average(image: np.ndarray, factor: int) -> np.ndarray:
    height, width = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    return image[:height, :width].reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def _in_block_correlation(crop: np.ndarray) -> float:
    """Adjacent-pixel correlation inside 8x8 blocks, each block's mean removed (min of h/v).

    Pairs across block borders are left out, so the blocks' mean levels (the DC
    random walk of garbage entropy data) do not count: only the structure inside
    the blocks does.  Flat blocks contribute nothing.
    """
    height, width = crop.shape[0] // 8 * 8, crop.shape[1] // 8 * 8
    blocks = crop[:height, :width].reshape(height // 8, 8, width // 8, 8).transpose(0, 2, 1, 3)
    blocks = blocks - blocks.mean(axis=(2, 3), keepdims=True)
    correlations = []
    for a, b in ((blocks[..., :, :-1], blocks[..., :, 1:]), (blocks[..., :-1, :], blocks[..., 1:, :])):
        denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
        correlations.append(float((a * b).sum()) / denominator if denominator > 0 else 1.0)
    return min(correlations)


def _blockiness(crop: np.ndarray) -> float:
    """Mean step across 8x8 block borders / (mean step inside blocks + 1), worst direction."""
    ratios = []
    for step in (np.abs(np.diff(crop, axis=1)), np.abs(np.diff(crop, axis=0)).T):
        border = step[:, 7::8].mean()
        inside = np.delete(step, np.s_[7::8], axis=1).mean()
        ratios.append(float(border / (inside + 1.0)))
    return max(ratios)


def _noise_reason(gray: np.ndarray, jpeg_grid: bool, settings: ValidationSettings) -> str | None:
    """``noise`` when the image is statistically noise (see the module docstring)."""
    height, width = gray.shape
    top = ((height - min(height, _NOISE_SIDE)) // 2) // 8 * 8
    left = ((width - min(width, _NOISE_SIDE)) // 2) // 8 * 8
    crop = gray[top:top + _NOISE_SIDE, left:left + _NOISE_SIDE].astype(np.float32)
    structure = [c for c in (_adjacent_correlation(_box_average(crop, factor) if factor > 1 else crop)
                             for factor in _NOISE_SCALES if min(crop.shape) >= 2 * factor)
                 if c is not None]
    if structure and max(structure) < settings.noise_min_correlation:
        return "noise"
    if (jpeg_grid and crop.shape[0] >= 16 and crop.shape[1] >= 16
            and _blockiness(crop) > settings.noise_max_blockiness
            and _in_block_correlation(crop) < settings.noise_min_block_correlation):
        return "noise"
    return None


def _decode(body: bytes, image: Image.Image) -> None:
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
        image = _open(body)
        width, height = image.size
        if width * height > settings.max_pixels:
            raise ImageRejected("too_many_pixels")
        if min(width, height) < settings.min_side:
            raise ImageRejected("too_small_side")
        scale = _draft_scale(image, settings.decode_pixels)
        if scale == 0:
            raise ImageRejected("decode_budget")
        is_jpeg = image.format == "JPEG"
        if is_jpeg:
            layout = inspect_jpeg(body)
            if layout.problem is not None:
                raise ImageRejected(layout.problem)
            if layout.scans == 1 and _decodes(body[: max(0, layout.eoi - _EXTRANEOUS_BYTES)], scale):
                raise ImageRejected("corrupt:extraneous_data")
        if scale > 1:
            image.draft(image.mode, (math.ceil(width / scale), math.ceil(height / scale)))
        _decode(body, image)
        info = ImageInfo(image.format, image.mode, width, height, len(body), digest)
        try:
            rgb = to_rgb(image)
        except ValueError as exc:
            raise ImageRejected(str(exc)) from exc
    gray = np.asarray(rgb.convert("L"))
    noise = _noise_reason(gray, is_jpeg and scale == 1, settings)
    if noise:
        raise ImageRejected(noise)
    reason = placeholder_reason(
        rgb,
        uniform_std=settings.uniform_std,
        max_colors=settings.placeholder_max_colors,
        background_fraction=settings.background_fraction,
        background_tolerance=settings.background_tolerance,
        edge_ratio=settings.text_edge_ratio,
    )
    if reason:
        raise ImageRejected(reason)
    return rgb, info


def _decodes(data: bytes, scale: int) -> bool:
    """Whether Pillow fully decodes ``data`` (a JPEG) at draft ``scale``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
                if scale > 1:
                    w, h = image.size
                    image.draft(image.mode, (math.ceil(w / scale), math.ceil(h / scale)))
                image.load()
        return True
    except Exception:
        return False
