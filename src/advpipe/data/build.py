"""Assemble an image set (uint8 images + manifest + report) from one of the four sources.

:func:`build_set` dispatches on the set's ``source``: ``samples``, ``urls``, ``folder``
or ``imagenette``. It takes plain values: :class:`SourceSettings` bundles what the
sources need (the stage script builds it from params). Every source resizes the same
way (:func:`advpipe.data.images.to_square` with :class:`~advpipe.data.images.Resize`);
``folder`` and ``imagenette`` images pass the downloader's checks with the ``urls``
source's ``min_side`` and ``max_pixels``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .folder import FolderSettings, load_folder
from .imagenette import ImagenetteSettings, load_imagenette
from .images import Resize
from .samples import load_samples
from .url_source import UrlSettings, load_urls

__all__ = ["SOURCES", "FolderSettings", "ImagenetteSettings", "Resize", "SourceSettings",
           "UrlSettings", "build_set"]

Progress = Callable[[str], None]
SOURCES = ("samples", "urls", "folder", "imagenette")


@dataclass(frozen=True)
class SourceSettings:
    """What :func:`build_set` needs besides the set itself (the ``data`` params, as values)."""

    resize: Resize
    urls: UrlSettings = field(default_factory=UrlSettings)
    folder: FolderSettings = field(default_factory=FolderSettings)
    imagenette: ImagenetteSettings = field(default_factory=ImagenetteSettings)


def build_set(source: str, settings: SourceSettings, raw_dir: str | Path, classes: list[int],
              per_class: int, progress: Progress | None = None
              ) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """One image set from ``source`` (see the module doc); ``raw_dir``: downloads of ``urls``.

    Raises:
        ValueError: an unknown source.
        FileNotFoundError, DataError: see the sources.
    """
    resize = settings.resize
    if source == "samples":
        images, manifest = load_samples(resize.size, resize.resample, resize.crop_ratio)
        return images, manifest, {}
    if source == "folder":
        images, manifest, report = load_folder(
            settings.folder.path, classes, per_class, resize.size, resize.resample,
            resize.crop_ratio, checks=settings.urls.image_checks(),
            skip_unreadable_classes=bool(settings.folder.skip_unreadable_classes))
        return images, manifest, {"classes": report}
    if source == "imagenette":
        return load_imagenette(settings.imagenette, classes, per_class, size=resize.size,
                               resample=resize.resample, crop_ratio=resize.crop_ratio,
                               checks=settings.urls.image_checks(), progress=progress)
    if source == "urls":
        return load_urls(settings.urls, raw_dir, classes, per_class, resize, progress)
    raise ValueError(f"unknown data source {source!r}")
