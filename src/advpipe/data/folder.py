"""A local ImageNet-style folder as data source (``source: folder``).

The folder holds one sub-folder per WordNet id (the ILSVRC-2012 ``train`` layout,
or a ``val`` folder sorted into wnid sub-folders). For each requested class the
first ``per_class`` usable images in sorted file-name order are taken, so the
selection is deterministic.

Every file goes through the downloader's checks (:func:`validate_image_bytes`):
decompression-bomb limit read from the header before decoding, minimum side, full
decode (truncated files are rejected), conversion to RGB, and rejection of blank or
placeholder-like (near-uniform) images. Rejected files are skipped and counted per
reason. A class with no usable file at all is an error naming the class and the
reasons (:class:`UnreadableClassError`), or, with ``skip_unreadable_classes``, is
left out with a warning.

:func:`load_class_files` is the reader shared with the ``imagenette`` source.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .class_index import imagenet_classes
from .errors import DataError
from .images import to_square
from .validate import ImageRejected, ValidationSettings, validate_image_bytes

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MANIFEST_COLUMNS = ["label", "wnid", "name", "source"]


class UnreadableClassError(DataError):
    """A requested class has no usable image."""


@dataclass(frozen=True)
class ImageChecks:
    """What a local image must pass (the ``data.urls.min_side``/``max_pixels`` params).

    Defaults: those of :class:`~advpipe.data.validate.ValidationSettings`.
    """

    min_side: int = ValidationSettings.min_side
    max_pixels: int = ValidationSettings.max_pixels


@dataclass(frozen=True)
class FolderSettings:
    """The ``data.folder`` params (field names = keys).

    Attributes:
        path: the ImageNet-style folder (one sub-folder per WordNet id).
        skip_unreadable_classes: leave out (with a warning) a class without any
            usable image instead of failing.
    """

    path: str = "data/imagenet/train"
    skip_unreadable_classes: bool = False


def load_checked(path: Path, size: int, resample: str, crop_ratio: float,
                 checks: ImageChecks) -> np.ndarray:
    """Validate one image file like a download, then resize -> uint8 (size, size, 3).

    Raises:
        ImageRejected: with the downloader's machine-readable reason
            (``read_error`` when the file cannot be read).
    """
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise ImageRejected(f"read_error:{exc.strerror or type(exc).__name__}") from None
    rgb, _ = validate_image_bytes(body, min_bytes=0, min_side=checks.min_side,
                                  max_pixels=checks.max_pixels)
    return np.asarray(to_square(rgb, size, resample, crop_ratio), dtype=np.uint8)


def image_files(folder: Path) -> list[Path]:
    """Image files of one class folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _reason_kind(reason: str) -> str:
    """Group ``decode_error:<message>`` reasons under ``decode_error`` for the summary."""
    return reason.split(":", 1)[0]


def load_class_files(files_by_class: Mapping[int, Sequence[Path]], per_class: int, *,
                     size: int = 224, resample: str = "bicubic", crop_ratio: float = 1.0,
                     checks: ImageChecks = ImageChecks(), skip_unreadable_classes: bool = False,
                     key: str = "data.folder.path") -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Take the first ``per_class`` usable files of each class, in the order given.

    Returns uint8 images, a manifest (label, wnid, name, source) and a report
    ``{wnid: {"taken", "wanted", "rejected": {reason: count}, "skipped": ["file: reason"]}}``
    (a class left out carries ``"skipped_class": true``).

    Raises:
        UnreadableClassError: a class has no usable file (unless ``skip_unreadable_classes``).
    """
    table = imagenet_classes()
    images, rows, report = [], [], {}
    for label, files in files_by_class.items():
        wnid, name = table.wnids[label], table.short_name(label)
        taken, skipped, reasons = 0, [], Counter()
        for path in files:
            if taken == per_class:
                break
            try:
                image = load_checked(Path(path), size, resample, crop_ratio, checks)
            except ImageRejected as exc:
                skipped.append(f"{Path(path).name}: {exc.reason}")
                reasons[_reason_kind(exc.reason)] += 1
                continue
            images.append(image)
            rows.append({"label": label, "wnid": wnid, "name": name, "source": str(path)})
            taken += 1
        entry = {"taken": taken, "wanted": per_class,
                 "rejected": dict(sorted(reasons.items())), "skipped": skipped}
        if taken == 0:
            why = (", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
                   if reasons else "no image files")
            message = (f"{key}: class {label} ({wnid}, {name}) has no usable image "
                       f"({len(files)} files; {why})")
            if not skip_unreadable_classes:
                hint = ("; fix or remove the files, or set data.folder.skip_unreadable_classes: "
                        "true to leave the class out" if key.startswith("data.folder") else "")
                raise UnreadableClassError(message + hint)
            log.warning("%s: class skipped", message)
            entry["skipped_class"] = True
        elif taken < per_class:
            log.warning("class %d (%s): only %d of %d images usable (%s)", label, wnid, taken,
                        per_class, ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
                        or "not enough files")
        report[wnid] = entry
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, pd.DataFrame(rows, columns=MANIFEST_COLUMNS), report


def load_folder(root: str | Path, classes: list[int], per_class: int, size: int = 224,
                resample: str = "bicubic", crop_ratio: float = 1.0,
                checks: ImageChecks = ImageChecks(),
                skip_unreadable_classes: bool = False) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Read ``per_class`` images of each class from ``root/<wnid>/`` (see the module doc).

    Raises ``FileNotFoundError`` naming the folder when a class folder is missing, and
    :class:`UnreadableClassError` for a class without any usable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.folder.path: '{root}' is not a directory")
    table = imagenet_classes()
    files_by_class = {}
    for label in classes:
        class_dir = root / table.wnids[label]
        if not class_dir.is_dir():
            raise FileNotFoundError(f"data.folder.path: no folder '{class_dir}' for class "
                                    f"{label} ({table.short_name(label)})")
        files_by_class[label] = image_files(class_dir)
    return load_class_files(files_by_class, per_class, size=size, resample=resample,
                            crop_ratio=crop_ratio, checks=checks,
                            skip_unreadable_classes=skip_unreadable_classes)
