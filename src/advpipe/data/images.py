"""Image conversion, resizing and on-disk image sets.

Resizing (``to_square``), the standard ImageNet evaluation preprocessing: scale the
*short* side to ``round(size / crop_ratio)`` and take the centre ``size x size``
crop, so the aspect ratio is kept and nothing is stretched (``crop_ratio`` 0.875:
256 -> 224; ``crop_ratio`` 1.0: short side to ``size``, then the centre crop, via
Pillow's ``ImageOps.fit``). The resampling filter is a parameter (bicubic by default).

An image set on disk is a folder with ``images/*.png`` (lossless, uint8 RGB) and a
``manifest.csv`` with at least the columns ``file, label, wnid, name``; defense
sets add a ``split`` column. In memory a set is a uint8 array ``(N, H, W, 3)``;
:func:`to_unit_float` turns a batch into float32 in [0, 1].
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class Resize:
    """How every source resizes its images (:func:`to_square`'s arguments).

    Attributes:
        size: side of the square output.
        resample: a key of :data:`RESAMPLE`.
        crop_ratio: short side -> ``round(size / crop_ratio)``, then the centre crop.
    """

    size: int
    resample: str
    crop_ratio: float


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white.

    Handles 1/L/P/CMYK/YCbCr/..., alpha modes (RGBA, LA, PA, RGBa, La),
    palette or L/RGB images with a ``transparency`` entry, 16-bit
    (``I;16*``, scaled by 255/65535), 32-bit ``I`` (scaled by 255/65535 when
    its values exceed 255) and ``F`` (scaled by 255 when its values are in
    [0, 1]).

    Raises:
        ValueError: ``unsupported_mode:<mode>`` if Pillow cannot convert it.
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    try:
        if mode.startswith("I;16") or mode == "I":
            wide = image if mode == "I" else image.convert("I")
            high = wide.getextrema()[1]
            scale = 1.0 if mode == "I" and high <= 255 else 255.0 / max(65535, high)
            image = wide.point(lambda v: v * scale).convert("L")
        elif mode == "F":
            high = image.getextrema()[1]
            scale = 255.0 if high <= 1.0 else 1.0
            image = image.point(lambda v: v * scale).convert("L")
        has_alpha = "A" in image.mode or "a" in image.mode or "transparency" in image.info
        if has_alpha:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            background.alpha_composite(rgba)
            return background.convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ValueError(f"unsupported_mode:{mode}") from exc


def to_square(img: Image.Image, size: int = 224, resample: str = "bicubic",
              crop_ratio: float = 1.0) -> Image.Image:
    """Short side to ``round(size / crop_ratio)``, then centre crop ``size x size`` (RGB).

    ``crop_ratio`` 1.0 scales the short side to ``size`` (no border is cut from a square
    image); the standard ImageNet evaluation uses 0.875 (short side 256, centre 224).
    """
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {resample!r}")
    if not 0 < crop_ratio <= 1:
        raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio!r}")
    img = to_rgb(img)
    short = max(size, round(size / crop_ratio))
    if short == size:
        if img.size == (size, size):
            return img
        return ImageOps.fit(img, (size, size), method=RESAMPLE[resample], centering=(0.5, 0.5))
    width, height = img.size
    scale = short / min(width, height)
    new_w = short if width <= height else max(short, round(width * scale))
    new_h = short if height < width else max(short, round(height * scale))
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), RESAMPLE[resample])
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_square(path: str | Path, size: int = 224, resample: str = "bicubic",
                crop_ratio: float = 1.0) -> np.ndarray:
    """Open, fully decode, convert to RGB and resize one image file -> uint8 (size, size, 3)."""
    with Image.open(path) as img:
        img.load()
        return np.asarray(to_square(img, size, resample, crop_ratio), dtype=np.uint8)


def to_unit_float(batch: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1]; float input is taken as already in [0, 1]."""
    batch = np.asarray(batch)
    if batch.dtype == np.uint8:
        return batch.astype(np.float32) / np.float32(255.0)
    return batch.astype(np.float32, copy=False)


def write_image_set(out_dir: str | Path, images: np.ndarray, manifest: pd.DataFrame) -> Path:
    """Write ``images`` (uint8 N,H,W,3) as PNGs plus ``manifest.csv`` (atomically per file).

    ``manifest`` must have one row per image; the ``file`` column is filled in here.
    """
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    if len(images) != len(manifest):
        raise ValueError(f"{len(images)} images but {len(manifest)} manifest rows")
    manifest = manifest.reset_index(drop=True).copy()
    files = []
    for i, (img, wnid) in enumerate(zip(images, manifest["wnid"])):
        name = f"{i:05d}_{wnid}.png"
        tmp = img_dir / (name + ".tmp")
        Image.fromarray(img).save(tmp, format="PNG")
        os.replace(tmp, img_dir / name)
        files.append(f"images/{name}")
    manifest.insert(0, "file", files)
    tmp = out_dir / "manifest.csv.tmp"
    manifest.to_csv(tmp, index=False)
    os.replace(tmp, out_dir / "manifest.csv")
    return out_dir


def read_image_set(set_dir: str | Path,
                   split: str | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Read an image set written by :func:`write_image_set` -> (uint8 images, manifest)."""
    set_dir = Path(set_dir)
    manifest_path = set_dir / "manifest.csv"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no image set here (run the 'data' stage first)")
    manifest = pd.read_csv(manifest_path)
    if split is not None:
        if "split" not in manifest.columns:
            raise ValueError(f"{manifest_path} has no 'split' column")
        manifest = manifest[manifest["split"] == split].reset_index(drop=True)
    if not len(manifest):
        return np.zeros((0, 0, 0, 3), np.uint8), manifest
    images = np.stack([np.asarray(Image.open(set_dir / f).convert("RGB"), dtype=np.uint8)
                       for f in manifest["file"]])
    return images, manifest
