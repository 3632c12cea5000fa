"""Training-time data augmentation in pure TensorFlow, reproducible per image.

Two modes, each followed by a horizontal flip with probability ½:

* ``crop_flip``: pad each side by ``pad`` pixels (``reflect`` or ``zero``) and crop a
  random window of the original size back out: the augmentation of the residual
  network papers (He et al. 2016, https://arxiv.org/abs/1512.03385) that adversarial
  training on CIFAR-10 keeps (Madry et al. 2018, https://arxiv.org/abs/1706.06083;
  Wong, Rice & Kolter 2020, https://arxiv.org/abs/2001.03994);
* ``resized_crop_flip``: the Inception random resized crop (Szegedy et al. 2015,
  https://arxiv.org/abs/1409.4842): a window of area fraction ``s ~ U[crop_scale_min, 1]``
  and aspect ratio ``r`` log-uniform in [3/4, 4/3] (height and width clipped to the
  image, so the widest windows are slightly less elongated than torchvision's resampled
  ones), resized back to the image size with bilinear interpolation.

Every random draw of image ``i`` comes from its own stateless seed (``seeds[i]``;
:func:`image_seeds` makes them from the run's seed, the optimizer step and the image's
index in the global batch), so the same batch at the same step is augmented the same way
whatever the device split or gradient accumulation. The training loop applies it inside
the compiled step, before the method's loss: adversarial examples are made from the
augmented images. Values stay in the input's range (crops and bilinear resampling only
copy or average pixels).
"""

from __future__ import annotations

import math

import tensorflow as tf

MODES = ("none", "crop_flip", "resized_crop_flip")
PADDINGS = ("reflect", "zero")
# keeps augmentation seeds apart from the attacks' (seed, index) and (seed + 1, ...) pairs
SEED_SALT = 0x41554721
MAX_BATCH = 2**20  # image index bits in the second seed word


def image_seeds(seed: int, step, index) -> tf.Tensor:
    """Per-image stateless seeds ``[(seed + salt, step · 2²⁰ + index_i)]``, int64 ``[n, 2]``.

    ``index``: the images' positions in the global batch (below 2²⁰)."""
    index = tf.cast(index, tf.int64)
    word = tf.cast(step, tf.int64) * MAX_BATCH + index
    first = tf.fill(tf.shape(index), tf.constant(int(seed) + SEED_SALT, tf.int64))
    return tf.stack([first, word], axis=1)


def _uniforms(seeds, count: int) -> tf.Tensor:
    """``count`` U[0, 1) draws per image, ``[n, count]``, each row from its image's seed."""
    return tf.map_fn(
        lambda s: tf.random.stateless_uniform([count], seed=s),
        seeds,
        fn_output_signature=tf.TensorSpec([count], tf.float32),
    )


def _flip(x, u):
    return tf.where((u < 0.5)[:, None, None, None], tf.reverse(x, axis=[2]), x)


def _crop(x, u, pad: int, padding: str):
    """Pad by ``pad`` and crop back to the size at offsets ``floor(u · (2 pad + 1))``."""
    if pad == 0:
        return x
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    mode = "REFLECT" if padding == "reflect" else "CONSTANT"
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=mode)
    offsets = tf.minimum(tf.cast(tf.floor(u * (2 * pad + 1)), tf.int32), 2 * pad)  # [n, 2]
    rows = offsets[:, :1] + tf.range(h)[None, :]  # [n, h]
    cols = offsets[:, 1:] + tf.range(w)[None, :]  # [n, w]
    x = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(x, cols, axis=2, batch_dims=1)


def _interpolate(x, start, size, axis: int):
    """Bilinear resampling along ``axis`` (1: rows, 2: columns) of each image's window
    ``[start, start + size − 1]`` (pixel centres, per image) onto the axis' full length."""
    length = tf.shape(x)[axis]
    last = tf.cast(length - 1, tf.float32)
    ratio = (size - 1.0) / tf.maximum(last, 1.0)
    pos = start[:, None] + tf.range(tf.cast(length, tf.float32))[None, :] * ratio[:, None]
    pos = tf.clip_by_value(pos, 0.0, last)
    lo = tf.floor(pos)
    frac = pos - lo
    lo = tf.cast(lo, tf.int32)
    hi = tf.minimum(lo + 1, length - 1)
    a = tf.gather(x, lo, axis=axis, batch_dims=1)
    b = tf.gather(x, hi, axis=axis, batch_dims=1)
    frac = frac[:, :, None, None] if axis == 1 else frac[:, None, :, None]
    # clipped: no rounding step outside the two pixels it averages
    return tf.clip_by_value(a + (b - a) * frac, tf.minimum(a, b), tf.maximum(a, b))


def _resized_crop(x, u, crop_scale_min: float):
    """Random resized crop: ``u[:, 0]`` scale, ``u[:, 1]`` log-aspect, ``u[:, 2:4]`` position.

    The window is resampled as ``tf.image.crop_and_resize`` does (bilinear, corners at
    pixel centres), written with gathers so that XLA compiles it too."""
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    scale = crop_scale_min + (1.0 - crop_scale_min) * u[:, 0]
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])  # width / height
    # window size in pixels (continuous), clipped to the image
    ch = tf.clip_by_value(tf.sqrt(scale / aspect) * hf, 2.0, hf)
    cw = tf.clip_by_value(tf.sqrt(scale * aspect) * wf, 2.0, wf)
    top = u[:, 2] * (hf - ch)
    left = u[:, 3] * (wf - cw)
    x = tf.cast(x, tf.float32)
    return _interpolate(_interpolate(x, top, ch, axis=1), left, cw, axis=2)


def augment_batch(
    x,
    seeds,
    *,
    mode: str,
    pad: int = 4,
    padding: str = "reflect",
    crop_scale_min: float = 0.35,
    flip: bool = True,
) -> tf.Tensor:
    """``x`` (NHWC images) augmented per image; ``seeds``: int ``[n, 2]``, one per image.

    ``mode``: ``none`` (``x`` unchanged), ``crop_flip`` or ``resized_crop_flip`` (see the
    module docstring); ``flip=False`` leaves out the horizontal flip.
    """
    check_options(mode=mode, pad=pad, padding=padding, crop_scale_min=crop_scale_min)
    if mode == "none":
        return x
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4:
        raise ValueError(
            f"augment '{mode}' needs NHWC images, got a tensor of shape {x.shape} "
            "(cached features cannot be augmented)"
        )
    if mode == "crop_flip" and pad >= min(x.shape[1] or pad + 1, x.shape[2] or pad + 1):
        raise ValueError(f"augment_pad {pad} must be smaller than the image size {x.shape[1:3]}")
    u = _uniforms(seeds, 5)
    if mode == "crop_flip":
        x = _crop(x, u[:, 0:2], pad, padding)
    else:
        x = tf.cast(_resized_crop(x, u[:, 0:4], crop_scale_min), x.dtype)
    return _flip(x, u[:, 4]) if flip else x


def check_options(*, mode: str, pad: int, padding: str, crop_scale_min: float) -> None:
    """Raise ``ValueError`` for an unknown mode or padding, or an option out of range."""
    if mode not in MODES:
        raise ValueError(f"augment must be one of {list(MODES)}, got {mode!r}")
    if padding not in PADDINGS:
        raise ValueError(f"augment_padding must be one of {list(PADDINGS)}, got {padding!r}")
    if int(pad) != pad or pad < 0:
        raise ValueError(f"augment_pad must be a non-negative integer, got {pad!r}")
    if not 0.0 < crop_scale_min <= 1.0:
        raise ValueError(f"crop_scale_min must be in (0, 1], got {crop_scale_min}")
