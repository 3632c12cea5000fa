"""Is a decoded image statistically noise?  (The ``noise`` rejection of the image checks.)

Two kinds of non-images arrive as valid image files: white noise (i.i.d.
pixels) and a valid JPEG header followed by garbage entropy-coded data, which
decodes to 8x8 blocks of random DCT coefficients.  A genuine photo -- even a
high-ISO one, whose sensor noise decorrelates neighbouring pixels -- has
smooth structure at *some* scale.  :func:`noise_reason` applies two tests to
the greyscale image:

**Structure.**  The correlation of horizontally / vertically adjacent pixels
(the smaller of the two) is measured at several scales: on the centre
``CROP`` x ``CROP`` crop at full resolution and after 2x2 and 4x4 box
averaging, and on the *whole* image after 8x8, 16x16 and 32x32 box averaging.
A scale is used only when the averaged image is at least ``MIN_CELLS`` cells
on its short side (with fewer cells the correlation of pure noise wanders
far from 0).  The image is noise when the *largest* of these correlations is
below ``noise_min_correlation``.

* White noise stays white at every scale (averages of independent pixels
  are independent): the largest correlation of 240 white-noise images
  (uniform or Gaussian, RGB or grey, PNG or JPEG at quality 30-95, 96 to
  1024 px) is 0.08.
* Sensor noise of standard deviation s is divided by f at scale f, while the
  scene stays: a photo with strong noise (s = 25) is smooth again at 4x4 or
  8x8.  The coarse scales look at the whole image, so a photo whose centre is
  plain sky still shows its scene.
* For a JPEG decoded at full size on its 8x8 grid the full-resolution
  correlation is skipped: quantisation smooths the *inside* of every block,
  so low-quality JPEGs of white noise reach 0.38 there, while their block
  averages stay uncorrelated.

**Blocks.**  A JPEG decoded at full size is noise when its 8x8 blocks are
*both* blocky -- the mean step across block borders exceeds
``noise_max_blockiness`` times the step inside blocks (plus one level) --
*and* without structure inside: with each block's mean removed, the
correlation of adjacent pixels within blocks is below
``noise_min_block_correlation``.  Garbage entropy data decodes to blocks of
random DCT coefficients (blockiness 2.2-2.8, in-block correlation -0.2-0.0),
and its block means follow the random walk of the DC differences, so it can
look smooth to the structure test; heavily compressed
genuine photos can be as blocky (up to 2.2 on Imagenette) but their blocks
hold smooth gradients (in-block correlation 0.17 and more; 0.6 and more
among those above 1.5).

Garbage that stops early (the decoder fills the rest of the image with grey)
is caught by the decode-level checks of :mod:`advpipe.data.validate`
(``corrupt:premature_end``, ``corrupt:restart_markers``), not here.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CROP", "MIN_CELLS", "noise_reason"]

#: Side of the centre crop of the full-resolution statistics.
CROP = 512
#: Fewest cells (averaged pixels) on the short side for a scale to be used.
MIN_CELLS = 16
#: Box-averaging factors on the centre crop / on the whole image.
_FINE_SCALES = (1, 2, 4)
_COARSE_SCALES = (8, 16, 32)


def adjacent_correlation(image: np.ndarray) -> float | None:
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


def box_average(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of every ``factor`` x ``factor`` cell (float32; ragged edges dropped)."""
    if factor == 1:
        return image.astype(np.float32)
    height, width = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    cells = image[:height, :width].reshape(height // factor, factor, width // factor, factor)
    return cells.mean(axis=(1, 3), dtype=np.float32)


def centre_crop(gray: np.ndarray, side: int = CROP) -> np.ndarray:
    """The centre ``side`` x ``side`` crop (or less), its corner on the 8x8 grid; float32."""
    height, width = gray.shape
    top = ((height - min(height, side)) // 2) // 8 * 8
    left = ((width - min(width, side)) // 2) // 8 * 8
    return gray[top:top + side, left:left + side].astype(np.float32)


def structure(gray: np.ndarray, crop: np.ndarray, jpeg_grid: bool) -> float | None:
    """The largest adjacent-pixel correlation over the scales (None: flat at every scale)."""
    views = [box_average(crop, f) for f in _FINE_SCALES if not (jpeg_grid and f == 1)]
    if min(gray.shape) >= _COARSE_SCALES[0] * MIN_CELLS:
        means = box_average(gray, _COARSE_SCALES[0])
        views += [box_average(means, f // _COARSE_SCALES[0]) for f in _COARSE_SCALES]
    found = [adjacent_correlation(v) for v in views if min(v.shape) >= MIN_CELLS]
    found = [c for c in found if c is not None]
    return max(found) if found else None


def blockiness(crop: np.ndarray) -> float:
    """Mean step across 8x8 block borders / (mean step inside blocks + 1), worst direction."""
    ratios = []
    for step in (np.abs(np.diff(crop, axis=1)), np.abs(np.diff(crop, axis=0)).T):
        border = step[:, 7::8].mean()
        inside = np.delete(step, np.s_[7::8], axis=1).mean()
        ratios.append(float(border / (inside + 1.0)))
    return max(ratios)


def in_block_correlation(crop: np.ndarray) -> float:
    """Adjacent-pixel correlation inside 8x8 blocks, each block's mean removed (min of h/v).

    Pairs across block borders are left out, so the blocks' mean levels (the DC
    random walk of garbage entropy data) do not count: only the structure inside
    the blocks does.  Flat blocks contribute nothing.
    """
    height, width = crop.shape[0] // 8 * 8, crop.shape[1] // 8 * 8
    blocks = crop[:height, :width].reshape(height // 8, 8, width // 8, 8).transpose(0, 2, 1, 3)
    blocks = blocks - blocks.mean(axis=(2, 3), keepdims=True)
    correlations = []
    pairs = ((blocks[..., :, :-1], blocks[..., :, 1:]), (blocks[..., :-1, :], blocks[..., 1:, :]))
    for a, b in pairs:
        denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
        correlations.append(float((a * b).sum()) / denominator if denominator > 0 else 1.0)
    return min(correlations)


def noise_reason(gray: np.ndarray, jpeg_grid: bool, min_correlation: float,
                 max_blockiness: float, min_block_correlation: float) -> str | None:
    """``"noise"`` when the greyscale image ``gray`` is statistically noise (module doc).

    ``jpeg_grid``: the image is a JPEG decoded at full size (its 8x8 blocks are
    those of the file).  The thresholds are the ``noise_*`` fields of
    :class:`~advpipe.data.validate.ValidationSettings`.
    """
    crop = centre_crop(gray)
    found = structure(gray, crop, jpeg_grid)
    if found is not None and found < min_correlation:
        return "noise"
    if (jpeg_grid and min(crop.shape) >= 16 and blockiness(crop) > max_blockiness
            and in_block_correlation(crop) < min_block_correlation):
        return "noise"
    return None
