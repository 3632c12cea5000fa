"""The image checks reject garbage and white noise, not noisy photos or plain skies.

Generated images only (a few dozen, a few seconds); the last tests also use the
shared Imagenette train split when it is present (and skip otherwise).
``bench/validation_noise.py`` measures the same on hundreds of images.

Each group holds cases the earlier checks got wrong:

* a high-ISO photo of an overcast sky (plain, vignetted centre; small objects
  off-centre) was rejected as ``noise`` -- its structure only shows at coarse
  scales over the whole image;
* a valid JPEG header followed by random bytes was accepted when the garbage
  ran out early (the decoder fills the rest with grey, so the centre crop was
  flat) or when the header declares restart intervals;
* white noise saved as a low-quality JPEG was accepted: quantisation smooths
  the inside of every 8x8 block;
* a photo-like plain grey sky with a small object (slight gradient, sensor
  noise, JPEG) was rejected as ``placeholder_text``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from advpipe.data.validate import ImageRejected, validate_image_bytes

IMAGENETTE_TRAIN = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenette-train"
)


# --------------------------------------------------------------------------- images
def encode(array: np.ndarray, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def reason(body: bytes) -> str:
    try:
        validate_image_bytes(body)
    except ImageRejected as rejection:
        return rejection.reason
    return "accepted"


def smooth_field(rng: np.random.Generator, height: int, width: int, cells: int = 6) -> np.ndarray:
    """A smooth random RGB field (a coarse random grid upsampled bicubically), float 0-255."""
    coarse = rng.uniform(40, 215, (cells, cells + 2, 3)).astype(np.uint8)
    return np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64
    )


def scene(seed: int, height: int, width: int) -> np.ndarray:
    """A photo-like scene: a smooth field, a few shapes, a slight blur (float RGB)."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(smooth_field(rng, height, width).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.25) * min(height, width)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
            (x - r, y - r, x + r, y + r), fill=colour
        )
    return np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float64)


def overcast_sky(seed: int, height: int = 768, width: int = 1024) -> np.ndarray:
    """A plain, vignetted grey sky (flat centre, darker corners) with two small birds off-centre."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r2 = ((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2
    base = 175 - 45 * np.clip(r2 - 0.35, 0, None)
    image = Image.fromarray(np.repeat(base[..., None], 3, axis=2).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for cx, cy in ((0.1 * width, 0.15 * height), (0.85 * width, 0.8 * height)):
        cx, cy = cx + rng.uniform(-20, 20), cy + rng.uniform(-20, 20)
        draw.ellipse((cx - 30, cy - 10, cx + 30, cy + 10), fill=(40, 35, 30))
    return np.asarray(image, dtype=np.float64)


def with_noise(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Sensor noise: independent Gaussian noise per pixel and channel."""
    noisy = clean + np.random.default_rng(seed).normal(0, sigma, clean.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def garbage_jpeg(array: np.ndarray, fraction: float, seed: int, **options: object) -> bytes:
    """A valid JPEG header (up to the first scan), then random bytes without 0xFF, then EOI."""
    data = encode(array, "JPEG", **{"quality": 90, **options})
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    count = max(2048, int((len(data) - start) * fraction))
    junk = np.random.default_rng(seed).integers(0, 255, count, dtype=np.uint8).tobytes()
    return data[:start] + junk + b"\xff\xd9"


def grey_sky_with_object(
    seed: int,
    slope: float,
    sigma: float = 2.5,
    quality: int = 90,
    size: tuple[int, int] = (500, 375),
) -> bytes:
    """A plain grey sky (slight gradient, sensor noise, JPEG) and a small parachute."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = 155 + slope * (y / height - 0.5) + 0.5 * slope * (x / width - 0.5)
    sky = np.repeat(base[..., None], 3, axis=2) + np.array([-2, 0, 3])
    image = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    s = 0.12 * width
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.6) * height
    draw.ellipse((cx - s, cy - s / 2, cx + s, cy + s / 2), fill=(200, 60, 40))
    draw.line((cx, cy + s / 2, cx, cy + 1.5 * s), fill=(30, 30, 30), width=3)
    draw.rectangle((cx - 4, cy + 1.5 * s, cx + 4, cy + 1.5 * s + 14), fill=(20, 20, 40))
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float64)
    return encode(with_noise(blurred, sigma, seed + 100), quality=quality)


def text_placeholder(
    size: tuple[int, int],
    background: tuple[int, int, int],
    ink: tuple[int, int, int],
    font_size: int,
) -> Image.Image:
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)
    draw.text((10, size[1] // 2 - 20), "This photo is no longer available", fill=ink, font=font)
    draw.text((30, size[1] // 2 + 10), "photo removed by owner", fill=ink, font=font)
    return image


# --------------------------------------------------------------------------- noisy photos
@pytest.mark.parametrize("seed", range(3))
def test_high_iso_overcast_sky_is_not_noise(seed: int) -> None:
    """Strong noise over a plain sky: structure shows only at coarse scales of the whole image."""
    for quality in (70, 85):
        body = encode(with_noise(overcast_sky(seed), 25, seed), quality=quality)
        assert reason(body) == "accepted", (seed, quality)


def test_noisy_photo_like_images_pass() -> None:
    cases = [
        (size, sigma, quality)
        for size in ((128, 160), (240, 320), (480, 360))
        for sigma in (15, 25)
        for quality in (50, 95)
    ]
    for index, ((height, width), sigma, quality) in enumerate(cases):
        body = encode(with_noise(scene(index, height, width), sigma, index), quality=quality)
        assert reason(body) == "accepted", (height, width, sigma, quality)


# --------------------------------------------------------------------------- garbage, noise
def test_header_plus_garbage_jpegs_are_rejected() -> None:
    small, large = scene(10, 224, 224).astype(np.uint8), scene(11, 800, 1000).astype(np.uint8)
    assert reason(garbage_jpeg(small, 0.2, 1)) == "noise"  # the decoded part is noise
    assert reason(garbage_jpeg(small, 3.0, 2)) == "corrupt:extraneous_data"
    # the garbage runs out in the top rows: the rest, the centre too, is flat grey
    for seed, quality in ((3, 50), (4, 90)):
        assert reason(garbage_jpeg(large, 0.3, seed, quality=quality)) == "corrupt:premature_end"
    # a restart interval: libjpeg finds no RST0 and fills all but the first row with grey
    for array in (small, large):
        assert (
            reason(garbage_jpeg(array, 0.6, 5, restart_marker_rows=1)) == "corrupt:restart_markers"
        )


def test_iid_noise_images_are_rejected() -> None:
    rng = np.random.default_rng(7)
    uniform = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    gaussian = np.clip(rng.normal(128, 25, (224, 240, 3)), 0, 255).astype(np.uint8)
    bodies = {
        "uniform png": encode(uniform, "PNG"),
        "uniform grey png": encode(uniform[..., 0], "PNG"),
        "uniform jpeg 95": encode(uniform, quality=95),
        # low quality smooths the inside of every 8x8 block of white noise
        "gaussian jpeg 30": encode(gaussian, quality=30),
        "gaussian grey jpeg 30": encode(gaussian[..., 0], quality=30),
    }
    assert {name: reason(body) for name, body in bodies.items()} == dict.fromkeys(bodies, "noise")


# --------------------------------------------------------------------------- placeholders
@pytest.mark.parametrize("slope", [4, 8])
def test_plain_grey_sky_with_a_small_object_is_not_a_placeholder(slope: float) -> None:
    for seed in range(3):
        assert reason(grey_sky_with_object(seed, slope)) == "accepted", (slope, seed)


def test_text_on_a_flat_background_is_still_a_placeholder() -> None:
    for size, font_size, background, ink, quality in (
        ((240, 180), 13, (235, 235, 235), (90, 90, 90), 50),
        ((240, 180), 13, (30, 30, 30), (200, 200, 200), 75),
        ((500, 375), 26, (240, 240, 240), (0, 0, 0), 60),
        ((500, 375), 26, (155, 156, 158), (60, 60, 60), 90),
    ):  # the sky's grey
        image = np.asarray(text_placeholder(size, background, ink, font_size))
        assert reason(encode(image, quality=quality)) == "placeholder_text", (size, quality)
        assert reason(encode(image, "PNG")) == "placeholder_text", size


# --------------------------------------------------------------------------- real photos
needs_train_split = pytest.mark.skipif(
    not IMAGENETTE_TRAIN.is_dir(), reason=f"{IMAGENETTE_TRAIN} absent (shared Imagenette copy)"
)


@needs_train_split
def test_real_photos_with_strong_noise_pass() -> None:
    classes = sorted(p for p in IMAGENETTE_TRAIN.iterdir() if p.is_dir())
    files = [sorted(folder.iterdir())[k] for folder in classes for k in (0, 7)]
    for index, path in enumerate(files):
        with Image.open(path) as image:
            clean = np.asarray(image.convert("RGB"), dtype=np.float64)
        body = encode(with_noise(clean, 25, index), quality=(50, 85)[index % 2])
        assert reason(body) == "accepted", path.name


@needs_train_split
@pytest.mark.parametrize(
    "name",
    [
        "n03888257/n03888257_20989.JPEG",  # parachute, grey sky
        "n03000684/n03000684_2035.JPEG",
    ],
)  # chainsaw manual cover
def test_former_placeholder_false_positives_are_accepted(name: str) -> None:
    assert reason((IMAGENETTE_TRAIN / name).read_bytes()) == "accepted"
