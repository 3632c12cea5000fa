"""The offline default data source: the real ImageNet validation images bundled in Foolbox.

Foolbox 3 ships 20 ILSVRC-2012 validation images at 224x224 with their labels
(``foolbox/data/imagenet_<nn>_<label>.jpg``). They are what the ``samples`` source
(``data.attack_set.source`` / ``data.defense_set.source``) uses, so the pipeline runs
with no network at all.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .class_index import imagenet_classes
from .images import load_square

_PATTERN = re.compile(r"^imagenet_(\d+)_(\d+)\.(jpg|png)$")


def samples_dir() -> Path:
    import foolbox  # imported lazily: heavy

    return Path(foolbox.__file__).resolve().parent / "data"


def sample_files() -> list[tuple[Path, int]]:
    """(path, label) of every bundled ImageNet image, in Foolbox's order."""
    folder = samples_dir()
    found = []
    for path in folder.iterdir():
        m = _PATTERN.match(path.name)
        if m:
            found.append((int(m.group(1)), path, int(m.group(2))))
    if not found:
        raise FileNotFoundError(f"{folder}: no bundled ImageNet images (is foolbox installed?)")
    return [(p, label) for _, p, label in sorted(found)]


def load_samples(size: int = 224, resample: str = "bicubic",
                 crop_ratio: float = 1.0) -> tuple[np.ndarray, pd.DataFrame]:
    """All bundled images as uint8 (N, size, size, 3) and a manifest (label, wnid, name, source)."""
    classes = imagenet_classes()
    files = sample_files()
    images = np.stack([load_square(p, size, resample, crop_ratio) for p, _ in files])
    labels = [label for _, label in files]
    manifest = pd.DataFrame({
        "label": labels,
        "wnid": [classes.wnids[i] for i in labels],
        "name": [classes.short_name(i) for i in labels],
        "source": [f"foolbox:{p.name}" for p, _ in files],
    })
    return images, manifest
