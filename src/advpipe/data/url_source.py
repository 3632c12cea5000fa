"""The ``urls`` data source: download per-class images from an ImageNet URL list, then resize.

:class:`UrlSettings` is everything under ``data.urls`` in params.yaml, one field per
key (same names).  Its field defaults are the one home of those defaults: they are
taken from the library's own dataclasses (:class:`~advpipe.data.download_settings.RequestSettings`,
:class:`~advpipe.data.download_settings.RetryPolicy`,
:class:`~advpipe.data.download_settings.DownloadSettings`,
:class:`~advpipe.data.validate.ValidationSettings`), so each number is written once.

:func:`load_urls` reads the list (:mod:`advpipe.data.url_lists`), downloads
(:func:`advpipe.data.download.download`) into a raw folder that a rerun resumes, and
resizes the accepted images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .download_settings import DownloadSettings, RequestSettings, RetryPolicy
from .validate import ValidationSettings

if TYPE_CHECKING:
    from .download_report import DownloadReport, ProgressEvent
    from .folder import ImageChecks
    from .images import Resize

__all__ = ["UrlSettings", "load_urls"]

Progress = Callable[[str], None]
_REQUEST, _RETRY, _RUN, _CHECKS = RequestSettings, RetryPolicy, DownloadSettings, ValidationSettings


@dataclass(frozen=True)
class UrlSettings:
    """The ``data.urls`` params (field names = keys); see the classes named for each.

    Attributes:
        list: the URL list file (``fall11_urls.txt`` or a ``url,class_index`` CSV).
        format: ``auto``, ``fall11`` or ``csv`` (:func:`~advpipe.data.url_lists.read_url_list`).
        workers, cross_class: :class:`~advpipe.data.download_settings.DownloadSettings`.
        timeout: :class:`~advpipe.data.download_settings.RequestSettings`.
        retries, backoff, deadline, max_retry_after:
            :class:`~advpipe.data.download_settings.RetryPolicy`.
        min_bytes, min_side, max_pixels, decode_pixels, background_fraction,
        background_tolerance, text_edge_ratio, noise_min_correlation,
        noise_max_blockiness, noise_min_block_correlation:
            :class:`~advpipe.data.validate.ValidationSettings` (``min_side`` and
            ``max_pixels`` also apply to the ``folder`` and ``imagenette`` sources).
    """

    list: str = "data/urls/fall11_urls.txt"
    format: str = "auto"
    workers: int = _RUN.workers
    timeout: float = _REQUEST.timeout
    retries: int = _RETRY.retries
    backoff: float = _RETRY.backoff
    min_bytes: int = _CHECKS.min_bytes
    min_side: int = _CHECKS.min_side
    max_pixels: int = _CHECKS.max_pixels
    deadline: float = _RETRY.deadline
    max_retry_after: float = _RETRY.max_retry_after
    decode_pixels: int = _CHECKS.decode_pixels
    background_fraction: float = _CHECKS.background_fraction
    background_tolerance: int = _CHECKS.background_tolerance
    text_edge_ratio: float = _CHECKS.text_edge_ratio
    noise_min_correlation: float = _CHECKS.noise_min_correlation
    noise_max_blockiness: float = _CHECKS.noise_max_blockiness
    noise_min_block_correlation: float = _CHECKS.noise_min_block_correlation
    cross_class: str = _RUN.cross_class

    def validation(self) -> ValidationSettings:
        """The image checks of a download."""
        return ValidationSettings(
            min_bytes=int(self.min_bytes), min_side=int(self.min_side),
            max_pixels=int(self.max_pixels), decode_pixels=int(self.decode_pixels),
            background_fraction=float(self.background_fraction),
            background_tolerance=int(self.background_tolerance),
            text_edge_ratio=float(self.text_edge_ratio),
            noise_min_correlation=float(self.noise_min_correlation),
            noise_max_blockiness=float(self.noise_max_blockiness),
            noise_min_block_correlation=float(self.noise_min_block_correlation))

    def download_settings(self) -> DownloadSettings:
        """The settings of a download run (the other fields at their library defaults)."""
        return DownloadSettings(
            request=RequestSettings(timeout=float(self.timeout)),
            retry=RetryPolicy(retries=int(self.retries), backoff=float(self.backoff),
                              deadline=float(self.deadline),
                              max_retry_after=float(self.max_retry_after)),
            validation=self.validation(), workers=int(self.workers),
            cross_class=self.cross_class)

    def image_checks(self) -> ImageChecks:
        """The checks of a local image (``folder`` and ``imagenette`` sources)."""
        from .folder import ImageChecks

        return ImageChecks(min_side=int(self.min_side), max_pixels=int(self.max_pixels))


def load_urls(settings: UrlSettings, raw_dir: str | Path, classes: list[int], per_class: int,
              resize: Resize, progress: Progress | None = None
              ) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Download ``per_class`` images of each class from the URL list, then resize.

    Raw downloads and their manifest stay in ``raw_dir`` so a rerun resumes.

    Raises:
        FileNotFoundError: the URL list does not exist.
        ValueError: a URL list in no known format, or invalid settings.
    """
    from .class_index import imagenet_classes
    from .download import download
    from .url_lists import read_url_list, select

    table = imagenet_classes()
    list_path = Path(settings.list)
    if not list_path.is_file():
        raise FileNotFoundError(f"data.urls.list: '{list_path}' does not exist (download "
                                "ImageNet's fall11_urls.txt or write a url,class_index CSV)")
    parsed = read_url_list(list_path, format=settings.format,  # type: ignore[arg-type]
                           wnid_to_index=table.wnid_to_index())
    say = progress or (lambda msg: None)
    report = download(select(parsed.entries, classes), per_class, Path(raw_dir),
                      settings.download_settings(), _progress_lines(say))
    for cls, rep in report.classes.items():
        if not rep.full:
            say(f"[download] warning: class {cls} has only {rep.accepted}/{per_class} images: "
                "its URLs ran out")
    images, manifest = _resized(report, Path(raw_dir), resize)
    return images, manifest, {"url_list": parsed.stats.to_dict(), "download": report.to_dict()}


def _progress_lines(say: Progress) -> Callable[[ProgressEvent], None]:
    """A download progress callback that writes a line every 25 URLs of a class, and when full."""
    def on_event(event: ProgressEvent) -> None:
        if event.class_requested % 25 == 0 or event.class_accepted == event.quota:
            say(f"[download] class {event.class_index} ({event.wnid}): "
                f"{event.class_accepted}/{event.quota} accepted, "
                f"{event.class_requested} tried, {event.class_rejected} rejected")
    return on_event


def _resized(report: DownloadReport, raw_dir: Path, resize: Resize
             ) -> tuple[np.ndarray, pd.DataFrame]:
    """The accepted images resized (uint8 stack) and their manifest."""
    from .class_index import imagenet_classes
    from .images import load_square

    table = imagenet_classes()
    accepted = report.accepted_images()
    images = [load_square(raw_dir / a.file, resize.size, resize.resample, resize.crop_ratio)
              for a in accepted]
    manifest = pd.DataFrame({
        "label": [a.class_index for a in accepted],
        "wnid": [table.wnids[a.class_index] for a in accepted],
        "name": [table.short_name(a.class_index) for a in accepted],
        "source": [a.url for a in accepted],
    }, columns=["label", "wnid", "name", "source"])
    stacked = (np.stack(images) if images
               else np.zeros((0, resize.size, resize.size, 3), np.uint8))
    return stacked, manifest
