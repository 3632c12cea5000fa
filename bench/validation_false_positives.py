"""Benchmark: false positives of the image validation on genuine photographs.

Runs every genuine photo through the same checks as a download or a local
``folder`` / ``imagenette`` image (:func:`advpipe.data.folder.load_checked`,
default :class:`~advpipe.data.validate.ValidationSettings`) and prints, per
source, how many were rejected, the counts per reason and the rejected files.

Sources: the 20 ImageNet photos bundled in Foolbox and, when present, the
shared Imagenette copy (``../shared/data/imagenette`` from the project root,
2,200 real ImageNet JPEGs; or ``--imagenette PATH``).

    python bench/validation_false_positives.py
    python bench/validation_false_positives.py --imagenette /path/to/imagenette

Not a test: it prints figures.  Every image here is a real photo, so every
rejection is a false positive.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from advpipe.data.folder import ImageChecks, image_files, load_checked
from advpipe.data.samples import sample_files
from advpipe.data.validate import ImageRejected

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"


def imagenette_files(folder: Path) -> list[Path]:
    return [p for sub in sorted(folder.iterdir()) if sub.is_dir() for p in image_files(sub)]


def rejections(files: list[Path]) -> dict[Path, str]:
    """{file: reason} of the rejected files."""
    rejected = {}
    for path in files:
        try:
            load_checked(path, 224, "bicubic", 0.875, ImageChecks())
        except ImageRejected as exc:
            rejected[path] = exc.reason
    return rejected


def report(name: str, files: list[Path], base: Path | None = None) -> int:
    started = time.perf_counter()
    rejected = rejections(files)
    seconds = time.perf_counter() - started
    total = len(files)
    share = 100.0 * len(rejected) / total if total else 0.0
    print(
        f"\n{name}: {len(rejected)} of {total} genuine photos rejected ({share:.2f} %), "
        f"{seconds:.1f} s"
    )
    for reason, count in sorted(Counter(rejected.values()).items()):
        print(f"  {reason:<24} {count}")
    for path, reason in rejected.items():
        shown = path.relative_to(base) if base is not None else path.name
        print(f"    {shown}: {reason}")
    return len(rejected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--imagenette",
        type=Path,
        default=DEFAULT_IMAGENETTE,
        help="ImageNet folder layout of genuine photos (default: %(default)s)",
    )
    args = parser.parse_args()
    total = report("foolbox samples", [p for p, _ in sample_files()])
    count = 20
    if args.imagenette.is_dir():
        files = imagenette_files(args.imagenette)
        total += report(f"imagenette ({args.imagenette})", files, args.imagenette)
        count += len(files)
    else:
        print(f"\n{args.imagenette}: absent, skipped")
    print(f"\nall: {total} of {count} genuine photos rejected")


if __name__ == "__main__":
    main()
