"""Benchmark: the noise filter passes noisy photos and rejects garbage and white noise.

Runs generated images through :func:`advpipe.data.validate.validate_image_bytes`
(default :class:`~advpipe.data.validate.ValidationSettings`) and prints, side by side:

* **noisy photos** -- pass rate per noise level (Gaussian sigma 5-25 on the 0-255
  scale, independent per channel or luminance only) and per JPEG quality (50-95),
  for two photo-like sources: procedural scenes (smooth gradients, shapes,
  textures, blurred random fields, a plain sky with a small object; sizes 128 to
  1024 px on the short side; never trivially flat: the clean image's luminance
  standard deviation is at least 12) and real photos of the shared Imagenette
  train split with the same noise added;
* **garbage** -- rejection rate of header-plus-garbage JPEGs: a valid JPEG header
  (up to the first scan) followed by random bytes (5-150 % of the original
  entropy-coded data, at least 2 KB; without 0xFF or raw) and EOI; several sizes,
  qualities, subsamplings, grey, restart intervals and progressive headers;
* **white noise** -- rejection rate of i.i.d. noise images (uniform or Gaussian,
  RGB or grey, 96 to 1024 px, PNG or JPEG at quality 30-95);
* **real photos** -- acceptance of every photo of the shared Imagenette train split
  (``../shared/data/imagenette-train`` from the project root, 9,469 JPEGs; or
  ``--real PATH``) through the ``folder`` source's checks, with every rejection
  listed by reason.

    python bench/validation_noise.py
    python bench/validation_noise.py --real /path/to/imagenet-folder --n 100

Not a test: it prints figures (``tests/test_noise_filter.py`` is the fast test).
"""

from __future__ import annotations

import argparse
import io
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from advpipe.data.folder import ImageChecks, image_files, load_checked
from advpipe.data.validate import ImageRejected, validate_image_bytes

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL = ROOT.parent / "shared" / "data" / "imagenette-train"
SIGMAS = (5, 10, 15, 20, 25)
QUALITIES = (50, 70, 85, 95)
SIDES = (128, 192, 256, 384, 640, 1024)
KINDS = ("gradient_shapes", "texture", "field", "mixed", "sky_object")
#: Least luminance standard deviation of a clean procedural scene ("not trivially flat").
MIN_SCENE_STD = 12.0


# --------------------------------------------------------------------------- images
def _blurred_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma)
    return field / (field.std() + 1e-9)


def _shapes(image: Image.Image, rng: np.random.Generator, count: int, largest: float) -> None:
    draw = ImageDraw.Draw(image)
    side = max(image.size)
    for _ in range(count):
        size = rng.uniform(0.05, largest) * side
        cx, cy = rng.uniform(0, image.width), rng.uniform(0, image.height)
        box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)


def _scene_once(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
    base = c0 + (c1 - c0) * ramp[..., None]
    scale = max(height, width) / 256
    if kind in ("field", "mixed"):
        for c in range(3):
            base[..., c] += rng.uniform(15, 40) * _blurred_field(
                rng, (height, width), rng.uniform(3, 20) * scale
            )
    if kind in ("texture", "mixed"):
        fx, fy = rng.uniform(3, 25, 2)
        wave = np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 6))
        base += (rng.uniform(10, 35) * wave)[..., None]
        base += rng.uniform(4, 12) * _blurred_field(rng, (height, width), 1.0)[..., None]
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    if kind != "field":
        sky = kind == "sky_object"
        _shapes(image, rng, 1 if sky else int(rng.integers(3, 9)), 0.15 if sky else 0.5)
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2)))
    return np.asarray(image, dtype=np.float64)


def scene(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    """A clean procedural photo-like scene (float RGB), redrawn until not trivially flat."""
    while True:
        clean = _scene_once(rng, height, width, kind)
        if clean.mean(axis=2).std() >= MIN_SCENE_STD:
            return clean


def add_noise(
    rng: np.random.Generator, clean: np.ndarray, sigma: float, per_channel: bool
) -> np.ndarray:
    shape = clean.shape if per_channel else clean.shape[:2] + (1,)
    return np.clip(clean + rng.normal(0, sigma, shape), 0, 255).round().astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def garbage_jpeg(
    array: np.ndarray, fraction: float, rng: np.random.Generator, raw: bool, **options: object
) -> bytes:
    """A valid JPEG header (up to the first scan) + random bytes (``fraction`` of the data) + EOI.

    ``raw``: any byte value (0xFF included, so random markers); else 0..254 only.
    """
    data = encode(array, "JPEG", **options)
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    count = max(2048, int((len(data) - start) * fraction))
    junk = rng.integers(0, 256 if raw else 255, count, dtype=np.uint8).tobytes()
    return data[:start] + junk + b"\xff\xd9"


def reason(body: bytes) -> str:
    try:
        validate_image_bytes(body)
    except ImageRejected as rejection:
        return rejection.reason
    return "accepted"


# --------------------------------------------------------------------------- sets
Case = tuple[dict, bytes]


def procedural_photos(n: int, seed: int = 0) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        sigma, quality = SIGMAS[i % len(SIGMAS)], QUALITIES[i // len(SIGMAS) % len(QUALITIES)]
        short = int(SIDES[i // 20 % len(SIDES)])
        long = int(short * rng.uniform(1.0, 1.5))
        height, width = (short, long) if rng.random() < 0.6 else (long, short)
        per_channel = rng.random() < 0.7
        clean = scene(rng, height, width, KINDS[i % len(KINDS)])
        yield (
            {"sigma": sigma, "quality": quality},
            encode(add_noise(rng, clean, sigma, per_channel), quality=quality),
        )


def real_photos_with_noise(folder: Path, n: int, seed: int = 1) -> Iterator[Case]:
    files = all_images(folder)
    rng = np.random.default_rng(seed)
    for i, index in enumerate(rng.choice(len(files), min(n, len(files)), replace=False)):
        sigma, quality = SIGMAS[1 + i % 4], QUALITIES[i // 4 % len(QUALITIES)]
        with Image.open(files[index]) as image:
            clean = np.asarray(image.convert("RGB"), dtype=np.float64)
        yield (
            {"sigma": sigma, "quality": quality},
            encode(add_noise(rng, clean, sigma, True), quality=quality),
        )


def garbage(n: int, seed: int = 2) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        short = int(rng.choice((64, 96, 128, 224, 480, 800, 1200)))
        width = int(short * rng.uniform(1, 1.5))
        clean = add_noise(rng, scene(rng, short, width, "gradient_shapes"), 5, True)
        options: dict[str, object] = {"quality": int(rng.choice((30, 50, 75, 90, 95, 100)))}
        if i % 5 == 0:
            clean = clean.mean(axis=2).astype(np.uint8)
        else:
            options["subsampling"] = int(rng.choice((0, 1, 2)))
        if i % 7 == 0:
            options["restart_marker_rows"] = 1
        if i % 11 == 0:
            options["progressive"] = True
        raw = i % 4 == 3
        body = garbage_jpeg(clean, float(rng.uniform(0.05, 1.5)), rng, raw, **options)
        yield {"kind": "raw bytes" if raw else "no 0xFF"}, body


def white_noise(n: int, seed: int = 3) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        short = int(rng.choice((96, 128, 224, 480, 1024)))
        shape: tuple[int, ...] = (short, int(short * rng.uniform(1, 1.5)))
        shape = shape + (3,) if i % 4 < 2 else shape
        if i % 2:
            pixels = rng.integers(0, 256, shape)
        else:
            pixels = rng.normal(128, rng.uniform(20, 80), shape)
        array = np.clip(pixels, 0, 255).astype(np.uint8)
        fmt = "PNG" if i % 3 == 0 else "JPEG"
        options = {"quality": int(rng.choice((30, 50, 75, 90, 95)))} if fmt == "JPEG" else {}
        yield {"format": fmt}, encode(array, fmt, **options)


def all_images(folder: Path) -> list[Path]:
    return [p for sub in sorted(folder.iterdir()) if sub.is_dir() for p in image_files(sub)]


# --------------------------------------------------------------------------- report
Results = list[tuple[dict, str]]


def run(cases: Iterator[Case]) -> Results:
    return [(tags, reason(body)) for tags, body in cases]


def _rate(values: list[bool]) -> str:
    return f"{sum(values)}/{len(values)}" if values else "-"


def pass_table(sources: dict[str, Results]) -> None:
    """Pass rate of the noisy photos per sigma (rows) and JPEG quality, one block per source."""
    print("\n## Noisy photos: accepted per noise sigma and JPEG quality\n")
    header = " | ".join(f"q{q}" for q in QUALITIES)
    print(f"| source | sigma | {header} | all |\n|---|---|" + "---|" * (len(QUALITIES) + 1))
    for name, results in sources.items():
        cells: dict[tuple[int, int], list[bool]] = defaultdict(list)
        for tags, outcome in results:
            cells[tags["sigma"], tags["quality"]].append(outcome == "accepted")
        for sigma in sorted({s for s, _ in cells}):
            row = [cells[sigma, q] for q in QUALITIES]
            rates = " | ".join(_rate(r) for r in row)
            print(f"| {name} | {sigma} | {rates} | {_rate([v for r in row for v in r])} |")


def summary_table(sets: dict[str, tuple[str, Results]]) -> None:
    """One row per set: images, the share that went the right way, the reasons."""
    print("\n## Summary\n")
    print("| set | images | wanted | rate | outcomes |\n|---|---|---|---|---|")
    for name, (wanted, results) in sets.items():
        outcomes = Counter(_kind(o) for _, o in results)
        good = outcomes["accepted"] if wanted == "accepted" else len(results) - outcomes["accepted"]
        listed = ", ".join(f"{r} {c}" for r, c in sorted(outcomes.items(), key=lambda x: -x[1]))
        print(
            f"| {name} | {len(results)} | {wanted} | {100 * good / len(results):.1f} % | {listed} |"
        )


def _kind(reason: str) -> str:
    return reason.split(":", 1)[0] if reason.startswith("decode_error") else reason


def real_acceptance(folder: Path) -> Results:
    """Every photo of ``folder`` through the ``folder`` source's checks; rejections listed."""
    results = []
    for path in all_images(folder):
        try:
            load_checked(path, 224, "bicubic", 0.875, ImageChecks())
            results.append(({"file": path}, "accepted"))
        except ImageRejected as exc:
            results.append(({"file": path}, exc.reason))
            print(f"    rejected {path.relative_to(folder)}: {exc.reason}")
    return results


def timed(label: str, step: Callable[[], Results]) -> Results:
    started = time.perf_counter()
    results = step()
    print(f"{label}: {len(results)} images, {time.perf_counter() - started:.1f} s")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--real",
        type=Path,
        default=DEFAULT_REAL,
        help="ImageNet folder layout of real photos (default: %(default)s)",
    )
    parser.add_argument("--n", type=int, default=400, help="procedural noisy photos")
    parser.add_argument("--n-real", type=int, default=160, help="real photos with noise added")
    parser.add_argument("--n-bad", type=int, default=240, help="garbage JPEGs and noise images")
    args = parser.parse_args()
    started = time.perf_counter()
    have_real = args.real.is_dir()
    photos = {"procedural": timed("procedural", lambda: run(procedural_photos(args.n)))}
    if have_real:
        photos["real + noise"] = timed(
            "real + noise", lambda: run(real_photos_with_noise(args.real, args.n_real))
        )
    sets = {f"noisy photos ({name})": ("accepted", r) for name, r in photos.items()}
    sets["header + garbage JPEG"] = ("rejected", timed("garbage", lambda: run(garbage(args.n_bad))))
    sets["i.i.d. noise"] = ("rejected", timed("white noise", lambda: run(white_noise(args.n_bad))))
    if have_real:
        sets[f"real photos ({args.real.name})"] = (
            "accepted",
            timed("real photos", lambda: real_acceptance(args.real)),
        )
    else:
        print(f"{args.real}: absent, real-photo figures skipped")
    pass_table(photos)
    summary_table(sets)
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
