"""What a download run reports: per class, in total, and as it goes.

:class:`DownloadReport` (one :class:`ClassReport` per class, in input order)
is returned by :func:`advpipe.data.download.download_classes`;
:class:`ProgressEvent` goes to its ``progress`` callback after every URL
outcome; :func:`log_summary` writes the closing log line.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AcceptedImage", "ClassReport", "DownloadReport", "ProgressEvent", "log_summary"]

logger = logging.getLogger("advpipe.data.download")

#: The per-class counters summed by :meth:`DownloadReport.totals`.
_COUNTERS = ("accepted", "resumed", "requested", "rejected", "errors", "skipped_rejected",
             "duplicates", "cross_class")


@dataclass(frozen=True)
class AcceptedImage:
    """An accepted image; ``file`` is relative to the report's ``out_dir``."""

    class_index: int
    wnid: str | None
    url: str
    line_no: int
    file: str
    width: int
    height: int


@dataclass
class ClassReport:
    """Outcome of one class.

    Attributes:
        available: distinct URLs listed for the class.
        accepted: accepted images counted toward the quota (<= quota),
            including ``resumed`` ones from earlier runs.
        resumed: accepted images taken over from an earlier run.
        requested: URLs fetched in this run (rejected + errors + newly accepted).
        rejected / errors: this run's permanent / transient failures.
        skipped_rejected: URLs not fetched because the manifest holds a
            permanent rejection for them.
        duplicates: repeated URLs in the class list (ignored).
        cross_class: URLs not fetched for this class because another class
            lists them too (see ``DownloadSettings.cross_class``); also
            counted in ``reasons``.
        reasons: this run's rejection/error reasons with counts.
        files: the accepted images, in list order.
    """

    class_index: int
    wnid: str | None
    quota: int
    available: int = 0
    accepted: int = 0
    resumed: int = 0
    requested: int = 0
    rejected: int = 0
    errors: int = 0
    skipped_rejected: int = 0
    duplicates: int = 0
    cross_class: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    files: list[AcceptedImage] = field(default_factory=list)

    @property
    def full(self) -> bool:
        """True when the quota is met."""
        return self.accepted >= self.quota

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable summary (without the file list)."""
        return {
            "wnid": self.wnid,
            "quota": self.quota,
            "accepted": self.accepted,
            "full": self.full,
            "available": self.available,
            "resumed": self.resumed,
            "requested": self.requested,
            "rejected": self.rejected,
            "errors": self.errors,
            "skipped_rejected": self.skipped_rejected,
            "duplicates": self.duplicates,
            "cross_class": self.cross_class,
            "reasons": dict(sorted(self.reasons.items())),
        }


@dataclass
class DownloadReport:
    """Result of a download run; ``classes`` keeps the input order."""

    quota: int
    out_dir: Path
    manifest_path: Path
    classes: dict[int, ClassReport]
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every class met its quota."""
        return all(c.full for c in self.classes.values())

    @property
    def reasons(self) -> Counter[str]:
        """This run's rejection/error reasons over all classes."""
        total: Counter[str] = Counter()
        for c in self.classes.values():
            total.update(c.reasons)
        return total

    def accepted_images(self) -> list[AcceptedImage]:
        """All accepted images, class by class, each class in list order."""
        return [image for c in self.classes.values() for image in c.files]

    def totals(self) -> dict[str, int]:
        """Counts summed over classes."""
        sums = {k: sum(getattr(c, k) for c in self.classes.values()) for k in _COUNTERS}
        sums["quota"] = self.quota * len(self.classes)
        sums["classes"] = len(self.classes)
        sums["classes_full"] = sum(c.full for c in self.classes.values())
        return sums

    def to_dict(self) -> dict[str, object]:
        """Nested, JSON-serialisable view for a metrics file."""
        return {
            "quota": self.quota,
            "complete": self.complete,
            "elapsed_s": round(self.elapsed_s, 3),
            "out_dir": str(self.out_dir),
            "manifest": str(self.manifest_path),
            "totals": self.totals(),
            "reasons": dict(sorted(self.reasons.items())),
            "classes": {str(k): c.to_dict() for k, c in self.classes.items()},
        }


@dataclass(frozen=True)
class ProgressEvent:
    """Sent to the ``progress`` callback after every URL outcome of a run."""

    class_index: int
    wnid: str | None
    url: str
    status: str
    reason: str
    class_accepted: int
    quota: int
    class_requested: int
    class_rejected: int
    class_errors: int
    done: int
    total_accepted: int
    total_quota: int


def log_summary(report: DownloadReport) -> None:
    """The closing log line of a run."""
    totals = report.totals()
    logger.info(
        "download finished: %d/%d classes full, %d/%d images (%d new), %d rejected, %d errors, "
        "%.1f s",
        totals["classes_full"], totals["classes"], totals["accepted"], totals["quota"],
        totals["accepted"] - totals["resumed"], totals["rejected"], totals["errors"],
        report.elapsed_s,
    )
