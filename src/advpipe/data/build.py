"""Assemble an image set (uint8 images + manifest + report) from one of the four sources.

:func:`build_set` takes the ``data`` group of params (plain values) and dispatches on
the set's ``source``: ``samples``, ``urls``, ``folder`` or ``imagenette``. Every source
resizes the same way (:func:`advpipe.data.images.to_square` with ``image_size``,
``resample`` and ``crop_ratio``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from .folder import ImageChecks, load_folder
from .images import load_square
from .samples import load_samples

Progress = Callable[[str], None]


def image_checks(data: Mapping) -> ImageChecks:
    """The local-image checks: ``data.urls.min_side`` and ``data.urls.max_pixels``."""
    return ImageChecks(min_side=int(data["urls"]["min_side"]),
                       max_pixels=int(data["urls"]["max_pixels"]))


def build_set(source: str, data: Mapping, raw_dir: str | Path, classes: list[int],
              per_class: int, progress: Progress | None = None
              ) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """One image set from ``source`` (see the module doc); ``raw_dir``: downloads of ``urls``."""
    size, resample = int(data["image_size"]), data["resample"]
    crop_ratio = float(data["crop_ratio"])
    if source == "samples":
        images, manifest = load_samples(size, resample, crop_ratio)
        return images, manifest, {}
    if source == "folder":
        images, manifest, report = load_folder(
            data["folder"]["path"], classes, per_class, size, resample, crop_ratio,
            checks=image_checks(data),
            skip_unreadable_classes=bool(data["folder"]["skip_unreadable_classes"]))
        return images, manifest, {"classes": report}
    if source == "imagenette":
        from .imagenette import load_imagenette

        return load_imagenette(data["imagenette"], classes, per_class, size=size,
                               resample=resample, crop_ratio=crop_ratio,
                               checks=image_checks(data), progress=progress)
    if source == "urls":
        return from_urls(data["urls"], raw_dir, classes, per_class, size, resample,
                         crop_ratio=crop_ratio, progress=progress)
    raise ValueError(f"unknown data source {source!r}")


def from_samples(size: int = 224, resample: str = "bicubic",
                 crop_ratio: float = 1.0) -> tuple[np.ndarray, pd.DataFrame]:
    return load_samples(size, resample, crop_ratio)


#: Values used for optional ``data.urls`` keys absent from params.yaml.
URL_DEFAULTS = {
    "deadline": 60.0,
    "max_retry_after": 30.0,
    "decode_pixels": 16_000_000,
    "background_fraction": 0.6,
    "background_tolerance": 4,
    "text_edge_ratio": 0.35,
    "noise_min_correlation": 0.3,
    "noise_max_blockiness": 1.5,
    "noise_min_block_correlation": 0.1,
    "cross_class": "first",
}


def from_urls(settings: Mapping, raw_dir: str | Path, classes: list[int], per_class: int,
              size: int, resample: str, crop_ratio: float = 1.0,
              progress: Progress | None = None) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Download ``per_class`` images of each class from an ImageNet URL list, then resize.

    ``settings`` is the ``data.urls`` group of params (list, format, workers, timeout,
    retries, backoff, min_bytes, min_side, max_pixels and the optional keys of
    :data:`URL_DEFAULTS`). Raw downloads and their manifest stay in ``raw_dir`` so a
    rerun resumes.
    """
    from .class_index import imagenet_classes
    from .download import download_classes
    from .url_lists import read_url_list, select
    from .validate import ValidationSettings

    settings = {**URL_DEFAULTS, **settings}
    validation = ValidationSettings(
        min_bytes=settings["min_bytes"], min_side=settings["min_side"],
        max_pixels=settings["max_pixels"], decode_pixels=settings["decode_pixels"],
        background_fraction=float(settings["background_fraction"]),
        background_tolerance=settings["background_tolerance"],
        text_edge_ratio=float(settings["text_edge_ratio"]),
        noise_min_correlation=float(settings["noise_min_correlation"]),
        noise_max_blockiness=float(settings["noise_max_blockiness"]),
        noise_min_block_correlation=float(settings["noise_min_block_correlation"]))

    table = imagenet_classes()
    list_path = Path(settings["list"])
    if not list_path.is_file():
        raise FileNotFoundError(f"data.urls.list: '{list_path}' does not exist (download "
                                "ImageNet's fall11_urls.txt or write a url,class_index CSV)")
    parsed = read_url_list(list_path, format=settings["format"],
                           wnid_to_index=table.wnid_to_index())
    by_class = select(parsed.entries, classes)
    say = progress or (lambda msg: None)

    def on_event(event) -> None:
        if event.class_requested % 25 == 0 or event.class_accepted == event.quota:
            say(f"[download] class {event.class_index} ({event.wnid}): "
                f"{event.class_accepted}/{event.quota} accepted, "
                f"{event.class_requested} tried, {event.class_rejected} rejected")

    report = download_classes(
        by_class, per_class, Path(raw_dir), workers=settings["workers"],
        timeout=float(settings["timeout"]), retries=settings["retries"],
        backoff=float(settings["backoff"]), deadline=float(settings["deadline"]),
        max_retry_after=float(settings["max_retry_after"]), validation=validation,
        cross_class=settings["cross_class"], progress=on_event)
    accepted = report.accepted_images()
    images = [load_square(Path(raw_dir) / a.file, size, resample, crop_ratio) for a in accepted]
    manifest = pd.DataFrame({
        "label": [a.class_index for a in accepted],
        "wnid": [table.wnids[a.class_index] for a in accepted],
        "name": [table.short_name(a.class_index) for a in accepted],
        "source": [a.url for a in accepted],
    }, columns=["label", "wnid", "name", "source"])
    for cls, rep in report.classes.items():
        if not rep.full:
            say(f"[download] warning: class {cls} has only {rep.accepted}/{per_class} images: "
                "its URLs ran out")
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, manifest, {"url_list": parsed.stats.to_dict(), "download": report.to_dict()}
