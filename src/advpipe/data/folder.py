"""A local ImageNet-style folder as data source (``data.source: folder``).

The folder holds one sub-folder per WordNet id (the ILSVRC-2012 ``train`` layout,
or a ``val`` folder sorted into wnid sub-folders). For each requested class the
first ``per_class`` readable images in sorted file-name order are taken, so the
selection is deterministic; unreadable files are skipped and reported.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .class_index import imagenet_classes
from .images import load_square

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def load_folder(root: str | Path, classes: list[int], per_class: int, size: int = 224,
                resample: str = "bicubic") -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Read ``per_class`` images of each class from ``root/<wnid>/``.

    Returns uint8 images, a manifest and a report ``{wnid: {"taken": n, "skipped": [...]}}``.
    Raises ``FileNotFoundError`` naming the folder when a class folder is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.folder.path: '{root}' is not a directory")
    table = imagenet_classes()
    images, rows, report = [], [], {}
    for label in classes:
        wnid = table.wnids[label]
        class_dir = root / wnid
        if not class_dir.is_dir():
            raise FileNotFoundError(f"data.folder.path: no folder '{class_dir}' for class "
                                    f"{label} ({table.short_name(label)})")
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        taken, skipped = 0, []
        for path in files:
            if taken == per_class:
                break
            try:
                images.append(load_square(path, size, resample))
            except (OSError, Image.DecompressionBombError, ValueError) as exc:
                skipped.append(f"{path.name}: {exc}")
                continue
            rows.append({"label": label, "wnid": wnid, "name": table.short_name(label),
                         "source": str(path)})
            taken += 1
        if taken < per_class:
            log.warning("class %d (%s): only %d of %d images readable in %s",
                        label, wnid, taken, per_class, class_dir)
        report[wnid] = {"taken": taken, "wanted": per_class, "skipped": skipped}
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, pd.DataFrame(rows), report
