"""Assemble an image set (uint8 images + manifest) from one of the three sources."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from .folder import load_folder
from .samples import load_samples


def from_samples(size: int = 224, resample: str = "bicubic") -> tuple[np.ndarray, pd.DataFrame]:
    return load_samples(size, resample)


def from_folder(root, classes, per_class, size, resample):
    images, manifest, report = load_folder(root, classes, per_class, size, resample)
    return images, manifest, {"classes": report}
