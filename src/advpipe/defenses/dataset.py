"""The defense set as the defense models see it: one split, labels as class positions.

A defense model's output ``i`` is ImageNet class ``classes[i]``, with ``classes`` the
sorted ImageNet indices present in the defense set (paper: [96, 530, 950]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.images import read_image_set


def defense_classes(set_dir: str | Path) -> list[int]:
    manifest = pd.read_csv(Path(set_dir) / "manifest.csv")
    return sorted(int(c) for c in manifest["label"].unique())


def load_split(
    set_dir: str | Path, split: str, classes: list[int]
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """uint8 images, int64 class positions and the manifest rows of one split."""
    images, manifest = read_image_set(set_dir, split=split)
    position = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(manifest["label"]) - set(position))
    if unknown:
        raise ValueError(
            f"{set_dir}: split '{split}' has classes {unknown} the model does not know"
        )
    labels = np.array([position[int(c)] for c in manifest["label"]], dtype=np.int64)
    return images, labels, manifest
