"""Image conversion, resizing and on-disk image sets.

Resizing (``to_square``): scale the *short* side to ``size`` and take the centre
``size x size`` crop (Pillow's ``ImageOps.fit``), so the aspect ratio is kept and
nothing is stretched. The resampling filter is a parameter (bicubic by default).

An image set on disk is a folder with ``images/*.png`` (lossless, uint8 RGB) and a
``manifest.csv`` with at least the columns ``file, label, wnid, name``; defense
sets add a ``split`` column. In memory a set is a uint8 array ``(N, H, W, 3)``;
:func:`to_unit_float` turns a batch into float32 in [0, 1].
"""

from __future__ import annotations

import os
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


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (L, CMYK, P, LA, RGBA, I;16...) to RGB; alpha over white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray(np.clip(arr / peak * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def to_square(img: Image.Image, size: int = 224, resample: str = "bicubic") -> Image.Image:
    """Short side to ``size``, then centre crop to ``size x size`` (RGB output)."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {resample!r}")
    img = to_rgb(img)
    if img.size == (size, size):
        return img
    return ImageOps.fit(img, (size, size), method=RESAMPLE[resample], centering=(0.5, 0.5))


def load_square(path: str | Path, size: int = 224, resample: str = "bicubic") -> np.ndarray:
    """Open, fully decode, convert to RGB and resize one image file -> uint8 (size, size, 3)."""
    with Image.open(path) as img:
        img.load()
        return np.asarray(to_square(img, size, resample), dtype=np.uint8)


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


def read_image_set(set_dir: str | Path, split: str | None = None) -> tuple[np.ndarray, pd.DataFrame]:
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
    images = np.stack([np.asarray(Image.open(set_dir / f).convert("RGB"), dtype=np.uint8)
                       for f in manifest["file"]]) if len(manifest) else np.zeros((0, 0, 0, 3), np.uint8)
    return images, manifest
