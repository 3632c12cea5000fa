"""No genuine photo is rejected by the image validation (noise and placeholder tests).

Every image here is a real photograph: the 20 ImageNet photos bundled in
Foolbox and the 2,200 real Imagenette JPEGs of the shared development copy
(``../shared/data/imagenette`` from the project root; those tests skip when it
is absent).  They go through the same checks as a download or a local
``folder`` / ``imagenette`` image (:func:`advpipe.data.folder.load_checked`).
``bench/validation_false_positives.py`` prints the same figures.

The last test keeps the other side honest: placeholders and noise close to the
recalibrated thresholds are still rejected.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from advpipe.data.folder import ImageChecks, image_files, load_checked
from advpipe.data.samples import sample_files
from advpipe.data.validate import ImageRejected, validate_image_bytes

IMAGENETTE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenette"

#: Genuine photos the earlier thresholds rejected (reason then).
FORMER_FALSE_POSITIVES = {
    "n02979186/n02979186_15467.JPEG": "noise",  # hi-fi on a shelf, white frame
    "n02979186/n02979186_18456.JPEG": "noise",  # a wall of car radios
    "n02979186/n02979186_16933.JPEG": "placeholder_text",  # cassette deck panel with labels
    "n03445777/n03445777_11789.JPEG": "placeholder_text",  # golf ball on grey ground
    "n03445777/n03445777_127.JPEG": "placeholder_text",  # golf ball on a lawn
    "n03445777/n03445777_17703.JPEG": "placeholder_text",  # red ball on a blue carpet
    "n01440764/n01440764_2853.JPEG": "placeholder_text",  # man holding a fish at night
    "n01440764/n01440764_3129.JPEG": "noise",  # fish underwater
    "n02102040/n02102040_1187.JPEG": "noise",  # dog in a car, white frame
    "n03888257/ILSVRC2012_val_00026575.JPEG": "noise",  # parachute, framed blue sky
}

needs_imagenette = pytest.mark.skipif(
    not IMAGENETTE.is_dir(), reason=f"{IMAGENETTE} absent (shared Imagenette copy)"
)


def rejection(path: Path) -> str | None:
    try:
        load_checked(path, 224, "bicubic", 0.875, ImageChecks())
    except ImageRejected as exc:
        return exc.reason
    return None


def rejected(files: list[Path]) -> dict[str, str]:
    found = {}
    for path in files:
        reason = rejection(path)
        if reason is not None:
            found[str(path)] = reason
    return found


def test_foolbox_samples_are_accepted() -> None:
    files = [path for path, _ in sample_files()]
    assert len(files) == 20
    assert rejected(files) == {}


@needs_imagenette
@pytest.mark.parametrize("name", sorted(FORMER_FALSE_POSITIVES))
def test_former_false_positives_are_accepted(name: str) -> None:
    path = IMAGENETTE / name
    assert path.is_file(), path
    assert rejection(path) is None


@pytest.mark.slow
@needs_imagenette
def test_every_imagenette_photo_is_accepted() -> None:
    files = [p for sub in sorted(IMAGENETTE.iterdir()) if sub.is_dir() for p in image_files(sub)]
    assert len(files) >= 2200
    found = rejected(files)
    assert found == {}, f"{len(found)} of {len(files)} genuine photos rejected: {found}"


def _reason(image: Image.Image, fmt: str, **options: object) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    try:
        validate_image_bytes(buffer.getvalue())
    except ImageRejected as exc:
        return exc.reason
    return "accepted"


def test_small_and_low_quality_placeholders_and_noise_stay_rejected() -> None:
    """The narrower background tolerance still sees a placeholder's (JPEG-noisy) flat colour."""
    for size, font_size, background, ink, quality in (
        ((240, 180), 13, (235, 235, 235), (90, 90, 90), 50),  # small, low quality
        ((240, 180), 13, (30, 30, 30), (200, 200, 200), 75),  # dark
        ((500, 375), 26, (240, 240, 240), (0, 0, 0), 60),
    ):
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=font_size)
        draw.text((10, size[1] // 2 - 20), "This photo is no longer available", fill=ink, font=font)
        draw.text((30, size[1] // 2 + 10), "photo removed by owner", fill=ink, font=font)
        assert _reason(image, "JPEG", quality=quality) == "placeholder_text", (size, quality)
    rng = np.random.default_rng(3)
    for quality in (50, 75, 95):  # white noise: no structure at any scale
        white = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
        assert _reason(white, "JPEG", quality=quality) == "noise", quality
    assert _reason(white.convert("L"), "PNG") == "noise"
