"""Heuristics for the placeholder images that dead photo links serve.

All work on a thumbnail of at most :data:`STAT_SIDE` pixels per side (box
filter), in 0-255 RGB, and return a rejection reason or None.

``placeholder_uniform``
    every channel's standard deviation below ``uniform_std``, or at most
    ``max_colors`` distinct colours (a blank or flat-shaded image).
``placeholder_text``
    text (and small icons) on a uniform background, e.g. Flickr's "This photo
    is no longer available": the dominant colour -- the most common colour
    after 16-level quantisation, widened to every pixel within
    ``background_tolerance`` (max channel difference) of it -- covers at least
    ``background_fraction`` of the image, *and* the "ink" -- the pixels more
    than ``background_tolerance + ink_margin`` levels from that colour -- is
    thin strokes: at least ``edge_ratio`` of the ink pixels touch a non-ink
    pixel (4-neighbourhood).  A product shot on a plain background also has a
    dominant colour, but its ink is a compact object whose pixels are mostly
    interior, so it passes.

    The tolerance must stay small (4 levels by default): a placeholder's
    background is one exact colour, within 1-3 levels even after JPEG
    compression (94-96 % of the thumbnail within 4 levels, 89 % for a small
    placeholder saved at JPEG quality 50), whereas a photo's lawn, carpet,
    sky or night background is textured or shaded.

    The ink margin keeps that shading out of the stroke test: a plain grey
    sky or a white page half-matches the narrow tolerance, and the pixels
    just outside it form a speckle whose every fragment touches the
    background -- which looks like thin strokes.  Counting every pixel
    outside the tolerance, a parachutist against a grey sky and a chainsaw
    manual's white cover (real Imagenette photos) reached a boundary share of
    0.35 and were rejected.  Counting only the ink (more than 16 levels off
    with the defaults), text placeholders have a boundary share of 0.81-0.89
    (large, small, dark, PNG/GIF, JPEG quality 50-85), while no genuine photo
    of the Imagenette train split exceeds 0.42 (9,469 photos, 288 of them
    with >= 50 % of background): ``edge_ratio`` 0.6 lies between.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageStat

__all__ = ["STAT_SIDE", "placeholder_reason", "uniform_reason"]

#: Longest side of the thumbnail the heuristics look at.
STAT_SIDE = 256


def _thumbnail(rgb: Image.Image) -> Image.Image:
    width, height = rgb.size
    scale = min(1.0, STAT_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return rgb if size == rgb.size else rgb.resize(size, Image.Resampling.BOX)


def _is_uniform(small: Image.Image, uniform_std: float, max_colors: int) -> bool:
    if uniform_std > 0 and max(ImageStat.Stat(small).stddev) < uniform_std:
        return True
    return max_colors > 0 and small.getcolors(maxcolors=max_colors) is not None


def _is_text_on_background(small: Image.Image, background_fraction: float,
                           background_tolerance: int, ink_margin: int, edge_ratio: float) -> bool:
    pixels = np.asarray(small, dtype=np.int16)
    quantised = (pixels // 16).reshape(-1, 3)
    keys = quantised[:, 0] * 256 + quantised[:, 1] * 16 + quantised[:, 2]
    dominant = np.bincount(keys).argmax()
    colour = pixels.reshape(-1, 3)[keys == dominant].mean(axis=0)
    distance = np.abs(pixels - colour).max(axis=2)
    if (distance <= background_tolerance).mean() < background_fraction:
        return False
    ink = distance > background_tolerance + ink_margin
    count = int(ink.sum())
    if count == 0:
        return False  # nothing written: a blank image is placeholder_uniform's case
    padded = np.pad(~ink, 1, constant_values=False)
    touches = (padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:])
    return float((ink & touches).sum()) / count >= edge_ratio


def uniform_reason(rgb: Image.Image, *, uniform_std: float, max_colors: int) -> str | None:
    """``placeholder_uniform`` or None (see the module docstring)."""
    return "placeholder_uniform" if _is_uniform(_thumbnail(rgb), uniform_std, max_colors) else None


def placeholder_reason(rgb: Image.Image, *, uniform_std: float, max_colors: int,
                       background_fraction: float, background_tolerance: int,
                       ink_margin: int, edge_ratio: float) -> str | None:
    """``placeholder_uniform``, ``placeholder_text`` or None (see the module docstring).

    ``background_fraction`` > 1 disables the text check.
    """
    small = _thumbnail(rgb)
    if _is_uniform(small, uniform_std, max_colors):
        return "placeholder_uniform"
    if background_fraction <= 1 and _is_text_on_background(
            small, background_fraction, background_tolerance, ink_margin, edge_ratio):
        return "placeholder_text"
    return None
