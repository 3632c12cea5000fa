"""Downloader hardening against a hostile local server (127.0.0.1).

Per-attempt deadline (trickled headers and body), decode-level validation
(header + garbage JPEGs, noise), text placeholders vs plain-background
product shots, Retry-After, BOM-safe URL lists, bounded decode memory and
cross-class duplicates; then everything at once in one acceptance run.
"""

from __future__ import annotations

import email.utils
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from test_download import (  # noqa: F401 (the server fixture is used by name)
    ImageServer,
    Route,
    encode,
    entries_for,
    jpeg,
    photo,
    read_manifest,
    reasons_by_url,
    server,
)

from advpipe.data.download import ImageRejected, download_classes, validate_image_bytes
from advpipe.data.http_fetch import parse_retry_after
from advpipe.data.samples import sample_files
from advpipe.data.url_lists import read_url_list, select

SRC = Path(__file__).resolve().parents[1] / "src"


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------


def genuine(index: int = 0) -> Image.Image:
    """One of the real ImageNet photos bundled in Foolbox (224x224 RGB)."""
    path, _ = sample_files()[index]
    with Image.open(path) as image:
        return image.convert("RGB")


def garbage_jpeg(source: Image.Image, fraction: float, seed: int = 0, **save: object) -> bytes:
    """A valid JPEG header (up to the first scan) followed by random bytes and EOI.

    The random bytes contain no 0xFF, so no marker ends the scan early: the
    file decodes (to coloured noise, or partly) rather than failing outright.
    """
    data = encode(source, "JPEG", quality=90, **save)
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    rng = np.random.default_rng(seed)
    junk = rng.integers(0, 255, int((len(data) - start) * fraction), dtype=np.uint8).tobytes()
    return data[:start] + junk + b"\xff\xd9"


def text_placeholder(
    size: tuple[int, int] = (500, 375), background: tuple[int, int, int] = (235, 235, 235)
) -> Image.Image:
    """A "this photo is no longer available" image: text and a small icon on a flat background."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=26)
    draw.ellipse((215, 120, 240, 145), fill=(0, 99, 220))
    draw.ellipse((250, 120, 275, 145), fill=(255, 0, 132))
    draw.text((40, 170), "This photo is no longer available", fill=(90, 90, 90), font=font)
    draw.text((120, 210), "photo removed by owner", fill=(120, 120, 120), font=font)
    return image


def product_shot(index: int, coverage: float, size: tuple[int, int] = (400, 300)) -> Image.Image:
    """A real photo (the object) pasted on a plain white background, covering ``coverage``."""
    canvas = Image.new("RGB", size, (255, 255, 255))
    side = int((coverage * size[0] * size[1]) ** 0.5)
    item = genuine(index).resize((side, side), Image.Resampling.LANCZOS)
    canvas.paste(item, ((size[0] - side) // 2, (size[1] - side) // 2))
    return canvas


def reason(body: bytes, **overrides: object) -> str:
    try:
        validate_image_bytes(body, **overrides)
    except ImageRejected as rejection:
        return rejection.reason
    return "accepted"


# --------------------------------------------------------------------------
# 1. deadline
# --------------------------------------------------------------------------


def test_deadline_cuts_trickled_headers_and_body(server: ImageServer, tmp_path: Path) -> None:
    body = jpeg(seed=1)
    slow_head = server.add("/t/head.jpg", Route(body=body, trickle=0.2, trickle_headers=True))
    slow_body = server.add("/t/body.jpg", Route(body=body, trickle=0.2))
    fine = server.good("/t/fine.jpg", seed=2)
    started = time.monotonic()
    report = download_classes(
        {0: entries_for(0, [slow_head, slow_body, fine])},
        3,
        tmp_path,
        timeout=1.0,
        deadline=1.0,
        retries=1,
        backoff=0.01,
        workers=3,
    )
    wall = time.monotonic() - started
    rows = {r["url"]: r for r in read_manifest(tmp_path)}
    for url in (slow_head, slow_body):
        row = rows[url]
        assert (row["status"], row["reason"], row["attempts"]) == ("error", "deadline", "2"), row
        assert float(row["elapsed_s"]) <= 2 * 1.0 + 0.3, row  # deadline x attempts
    assert rows[fine]["status"] == "accepted"
    assert report.classes[0].accepted == 1
    assert wall < 3.5  # the per-read timeout alone would allow ~20 s (headers) or ~10 min (body)


# --------------------------------------------------------------------------
# 2. decode-level validation
# --------------------------------------------------------------------------


def test_corrupt_and_noise_images_are_rejected() -> None:
    for i in range(4):
        photo_ = genuine(i)
        assert reason(garbage_jpeg(photo_, 1.0, seed=i)) in {"corrupt:extraneous_data", "noise"}
        assert reason(garbage_jpeg(photo_, 3.0, seed=i)) == "corrupt:extraneous_data"
        assert reason(garbage_jpeg(photo_, 0.2, seed=i)) == "noise"  # decodes partly
        assert (
            reason(garbage_jpeg(photo_, 1.0, seed=i, progressive=True))
            == "corrupt:incomplete_scans"
        )
    valid = encode(genuine(0), "JPEG", quality=90)
    assert reason(valid) == "accepted"
    junk_marker = valid[:-200] + b"\xff\x37" + valid[-198:]
    assert reason(junk_marker) in {
        "corrupt:jpeg_markers",
        "decode_error:broken data stream when reading image file",
    }
    assert reason(valid[:-2]) == "truncated"  # no EOI
    white = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    assert reason(encode(Image.fromarray(white), "PNG")) == "noise"
    assert reason(encode(Image.fromarray(white), "JPEG", quality=95)) == "noise"


def test_valid_variants_are_accepted() -> None:
    photo_ = genuine(1)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW
    gray16 = Image.fromarray(np.asarray(photo_.convert("L"), dtype=np.uint16) * 257)
    frames = [genuine(k) for k in range(3)]
    bodies = {
        "baseline": encode(photo_, "JPEG", quality=90),
        "progressive": encode(photo_, "JPEG", quality=85, progressive=True),
        "restart_markers": encode(photo_, "JPEG", quality=75, restart_marker_rows=1),
        "exif_rotated": encode(photo_, "JPEG", quality=90, exif=exif),
        "grayscale": encode(photo_.convert("L"), "JPEG", quality=80),
        "png16": encode(gray16, "PNG"),
        "palette": encode(photo_.quantize(256), "PNG"),
        "webp": encode(photo_, "WEBP", quality=80),
        "animated_gif": encode(
            frames[0].convert("P"),
            "GIF",
            save_all=True,
            append_images=[f.convert("P") for f in frames[1:]],
            duration=100,
        ),
        "animated_webp": encode(
            frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100
        ),
    }
    assert Image.open(io.BytesIO(bodies["png16"])).mode.startswith("I")
    assert getattr(Image.open(io.BytesIO(bodies["animated_webp"])), "n_frames", 1) == 3
    got = {name: reason(body) for name, body in bodies.items()}
    assert got == dict.fromkeys(bodies, "accepted")
    for index in range(len(sample_files())):  # every bundled real photo
        assert reason(encode(genuine(index), "JPEG", quality=90)) == "accepted", index
    first, _ = validate_image_bytes(bodies["animated_gif"])
    assert first.size == frames[0].size


# --------------------------------------------------------------------------
# 3. placeholders
# --------------------------------------------------------------------------


def test_text_placeholder_rejected_product_shot_accepted() -> None:
    placeholder = text_placeholder()
    for fmt, options in (("PNG", {}), ("JPEG", {"quality": 85}), ("GIF", {})):
        image = placeholder.quantize(16) if fmt == "GIF" else placeholder
        assert reason(encode(image, fmt, **options)) == "placeholder_text", fmt
    dark = text_placeholder(background=(30, 30, 30))
    assert reason(encode(dark, "JPEG", quality=85)) == "placeholder_text"
    for index in range(6):
        for coverage in (0.6, 0.35):  # a white background of 40% and 65%
            shot = encode(product_shot(index, coverage), "JPEG", quality=90)
            assert reason(shot) == "accepted", (index, coverage)
    # the thresholds are parameters: a stricter background share lets the placeholder through
    assert reason(encode(placeholder, "PNG"), background_fraction=0.99) == "accepted"


# --------------------------------------------------------------------------
# 4. Retry-After
# --------------------------------------------------------------------------


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    assert parse_retry_after(
        email.utils.formatdate(now + 10, usegmt=True), now=now
    ) == pytest.approx(10, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 10, usegmt=True), now=now) == 0.0


@pytest.mark.slow
def test_retry_after_is_honoured_and_capped(server: ImageServer, tmp_path: Path) -> None:
    date = email.utils.formatdate(time.time() + 2, usegmt=True)
    limited = Route(
        status=429, body=b"slow down", content_type="text/plain", headers={"Retry-After": "3"}
    )
    dated = Route(
        status=503, body=b"busy", content_type="text/plain", headers={"Retry-After": date}
    )
    long = Route(
        status=429, body=b"later", content_type="text/plain", headers={"Retry-After": "3600"}
    )
    urls = [
        server.add("/ra/seconds.jpg", limited, Route(body=jpeg(seed=3))),
        server.add("/ra/date.jpg", dated, Route(body=jpeg(seed=4))),
        server.add("/ra/long.jpg", long, Route(body=jpeg(seed=5))),
    ]
    download_classes(
        {0: entries_for(0, urls)},
        3,
        tmp_path,
        timeout=2.0,
        retries=2,
        backoff=0.01,
        workers=3,
        max_retry_after=0.5,
        deadline=5.0,
    )
    rows = {r["url"]: r for r in read_manifest(tmp_path)}
    assert all((r["status"], r["attempts"]) == ("accepted", "2") for r in rows.values()), rows
    # capped at 0.5 s: well below the 3 s asked for, with room for a loaded machine
    assert float(rows[urls[0]]["elapsed_s"]) < 2.5
    assert float(rows[urls[2]]["elapsed_s"]) < 2.5
    # a fresh date: the first run may have taken seconds on a loaded machine, and an HTTP
    # date has a resolution of one second, so "now + 3" means a wait in (2, 3] seconds
    date = email.utils.formatdate(time.time() + 3, usegmt=True)
    dated = Route(
        status=503, body=b"busy", content_type="text/plain", headers={"Retry-After": date}
    )
    urls = [
        server.add("/ra/seconds2.jpg", limited, Route(body=jpeg(seed=3))),
        server.add("/ra/date2.jpg", dated, Route(body=jpeg(seed=4))),
    ]
    download_classes(
        {0: entries_for(0, urls)},
        2,
        tmp_path / "uncapped",
        timeout=2.0,
        retries=2,
        backoff=0.01,
        workers=2,
        max_retry_after=30.0,
        deadline=5.0,
    )
    rows = {r["url"]: r for r in read_manifest(tmp_path / "uncapped")}
    assert rows[urls[0]]["status"] == "accepted" and float(rows[urls[0]]["elapsed_s"]) >= 3.0
    assert rows[urls[1]]["status"] == "accepted" and float(rows[urls[1]]["elapsed_s"]) >= 1.5


# --------------------------------------------------------------------------
# 5. URL lists
# --------------------------------------------------------------------------

WNIDS = {"n01440764": 0, "n01443537": 1}
BOM = "\ufeff"


@pytest.mark.parametrize(
    "layout", ["fall11", "csv_url_first", "csv_index_first", "plain_url_first", "plain_index_first"]
)
def test_bom_lists_keep_their_first_line(tmp_path: Path, layout: str) -> None:
    urls = ["http://a.example/1.jpg", "http://a.example/2.jpg", "http://b.example/3.jpg"]
    classes = [0, 0, 1]
    lines = {
        "fall11": [
            f"{w}_{i}\t{u}" for i, (u, w) in enumerate(zip(urls, ["n01440764"] * 2 + ["n01443537"]))
        ],
        "csv_url_first": ["url,class_index"] + [f"{u},{c}" for u, c in zip(urls, classes)],
        "csv_index_first": ["class_index,url"] + [f"{c},{u}" for u, c in zip(urls, classes)],
        "plain_url_first": [f"{u},{c}" for u, c in zip(urls, classes)],
        "plain_index_first": [f"{c},{u}" for u, c in zip(urls, classes)],
    }[layout]
    lines.insert(2, "this line is malformed")
    path = tmp_path / "list.txt"
    path.write_bytes((BOM + "\n".join(lines) + "\n").encode("utf-8"))
    parsed = read_url_list(path, wnid_to_index=WNIDS)
    assert [(e.url, e.class_index) for e in parsed] == list(zip(urls, classes))
    assert parsed.stats.bad == 1 and parsed.stats.bad_lines == [3]
    assert parsed.stats.to_dict()["bad_lines"] == [3]


# --------------------------------------------------------------------------
# 6. memory
# --------------------------------------------------------------------------

_CHILD = """
import json, resource, sys
from advpipe.data.validate import ImageRejected, validate_image_bytes

def rss_kb(field):
    with open("/proc/self/status") as status:
        return int(status.read().split(field + ":")[1].split()[0])

body = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # reset the peak (VmHWM) to the current RSS
base = rss_kb("VmRSS")
try:
    rgb, _ = validate_image_bytes(body, max_pixels=89_478_485, decode_pixels=int(sys.argv[2]))
    result = "accepted:%dx%d" % rgb.size
except ImageRejected as rejection:
    result = rejection.reason
print(json.dumps({"result": result, "base_kb": base, "peak_kb": rss_kb("VmHWM")}))
"""


def _peak(path: Path, decode_pixels: int = 16_000_000) -> tuple[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(decode_pixels)],
        env={"PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    return out["result"], (out["peak_kb"] - out["base_kb"]) / 1024


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset"
)
@pytest.mark.slow
def test_large_images_cost_bounded_memory(tmp_path: Path) -> None:
    bomb = Image.new("L", (9000, 9000), 200)
    ImageDraw.Draw(bomb).ellipse((1000, 1000, 8000, 8000), fill=60)
    png_path = tmp_path / "bomb.png"
    bomb.save(png_path, "PNG")
    del bomb
    big = Image.fromarray(photo(750, 1000, seed=7)).resize((8000, 6000), Image.Resampling.BILINEAR)
    jpeg_path = tmp_path / "big.jpg"
    big.save(jpeg_path, "JPEG", quality=80)
    del big
    result, png_mb = _peak(png_path)
    print(
        f"\n9000x9000 PNG ({png_path.stat().st_size // 1024} KB): {result}, peak RSS +{png_mb:.0f} MB"
    )
    assert result == "decode_budget" and png_mb < 300
    result, jpeg_mb = _peak(jpeg_path)
    print(
        f"8000x6000 JPEG ({jpeg_path.stat().st_size // 1024} KB): {result}, peak RSS +{jpeg_mb:.0f} MB"
    )
    assert result == "accepted:4000x3000" and 30 < jpeg_mb < 300  # decoded, at half size
    # within the budget a PNG is decoded in full (the budget is what bounds memory)
    result, small_mb = _peak(png_path, decode_pixels=100_000_000)
    print(f"same PNG without a budget: {result}, peak RSS +{small_mb:.0f} MB")
    assert small_mb > png_mb


# --------------------------------------------------------------------------
# 7. cross-class duplicates
# --------------------------------------------------------------------------


def test_cross_class_duplicate_fetched_once(server: ImageServer, tmp_path: Path) -> None:
    shared = server.good("/x/shared.jpg", seed=8)
    a = server.good("/x/a.jpg", seed=9)
    b = server.good("/x/b.jpg", seed=10)
    groups = {
        0: [e for e in entries_for(0, [a, a, shared])],  # lines 1-3
        1: [e for e in entries_for(1, [shared, b])],
    }  # shared first listed on line 1
    report = download_classes(groups, 2, tmp_path / "first", timeout=2.0, workers=2)
    assert server.hits["/x/shared.jpg"] == 1
    assert [i.url for i in report.classes[1].files] == [shared, b]
    assert [i.url for i in report.classes[0].files] == [a]
    assert report.classes[0].cross_class == 1 and report.classes[0].duplicates == 1
    rows = [
        (r["class_index"], r["url"], r["status"], r["reason"])
        for r in read_manifest(tmp_path / "first")
    ]
    assert ("0", shared, "rejected", "cross_class_duplicate:1") in rows
    again = download_classes(groups, 2, tmp_path / "first", timeout=2.0, workers=2)
    assert len(read_manifest(tmp_path / "first")) == len(rows)  # not recorded twice
    assert again.classes[0].cross_class == 1

    report = download_classes(
        groups, 2, tmp_path / "reject", timeout=2.0, workers=2, cross_class="reject"
    )
    assert server.hits["/x/shared.jpg"] == 1  # not fetched again
    assert report.reasons["cross_class_ambiguous"] == 2
    with pytest.raises(ValueError, match="cross_class"):
        download_classes(groups, 2, tmp_path / "bad", cross_class="last")


# --------------------------------------------------------------------------
# acceptance: every bad kind at once
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_acceptance_hostile_list(server: ImageServer, tmp_path: Path) -> None:
    deadline, retries = 1.0, 2
    body = jpeg(seed=20)
    server.add(
        "/img/removed.png", Route(body=encode(text_placeholder(), "PNG"), content_type="image/png")
    )
    bomb = Image.new("L", (9000, 9000), 200)
    bomb_png = encode(bomb, "PNG")
    del bomb
    shared = server.good("/h/shared.jpg", seed=21)
    bad = {
        "trickle_head": Route(body=body, trickle=0.2, trickle_headers=True),
        "trickle_body": Route(body=body, trickle=0.2),
        "garbage": Route(body=garbage_jpeg(genuine(2), 1.0, seed=2)),
        "garbage_surplus": Route(body=garbage_jpeg(genuine(3), 3.0, seed=3)),
        "placeholder_redirect": Route(status=302, location="/img/removed.png", content_type=None),
        "rate_limited": Route(
            status=429, body=b"", content_type="text/plain", headers={"Retry-After": "1"}
        ),
        "bomb": Route(body=bomb_png, content_type="image/png"),
        "noise": Route(
            body=encode(
                Image.fromarray(
                    np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
                ),
                "PNG",
            ),
            content_type="image/png",
        ),
    }
    lines, good = [], {0: [], 1: []}
    line = 0
    for c in (0, 1):
        for k, (name, route) in enumerate(bad.items()):
            url = server.add(f"/h/{c}/{name}.jpg", route)
            lines.append(f"{c},{url}")
            if k % 2 == 1:
                url = server.good(f"/h/{c}/good{k}.jpg", seed=100 * c + k)
                lines.append(f"{c},{url}")
                good[c].append(url)
        lines.append(f"{c},{shared}")  # listed under both classes: class 0 owns it
        good[0].append(shared) if c == 0 else None
        line += 1
    path = tmp_path / "urls.csv"
    path.write_bytes((BOM + "class_index,url\n" + "\n".join(lines) + "\n").encode("utf-8"))
    parsed = read_url_list(path)
    assert len(parsed) == len(lines)
    groups = select(parsed, [0, 1])
    quota = 4
    started = time.monotonic()
    report = download_classes(
        groups,
        quota,
        tmp_path / "out",
        timeout=1.0,
        retries=retries,
        deadline=deadline,
        backoff=0.05,
        max_retry_after=5.0,
        workers=6,
    )
    wall = time.monotonic() - started
    assert [i.url for i in report.classes[0].files] == good[0][:quota]
    assert [i.url for i in report.classes[1].files] == good[1][:quota]
    rows = read_manifest(tmp_path / "out")
    slowest = max(rows, key=lambda r: float(r["elapsed_s"]))
    print(
        f"\nslowest URL: {slowest['url']} {float(slowest['elapsed_s']):.2f} s "
        f"({slowest['status']} {slowest['reason']}, {slowest['attempts']} attempts); "
        f"limit {deadline * (retries + 1):.1f} s; whole run {wall:.1f} s"
    )
    assert float(slowest["elapsed_s"]) <= deadline * (retries + 1) + 0.5
    got = reasons_by_url(tmp_path / "out")
    by_name = {
        name: got[server.base + f"/h/0/{name}.jpg"]
        for name in bad
        if server.base + f"/h/0/{name}.jpg" in got
    }
    expected = {
        "trickle_head": ("error", "deadline"),
        "trickle_body": ("error", "deadline"),
        "garbage": ("rejected", {"corrupt:extraneous_data", "noise"}),
        "garbage_surplus": ("rejected", "corrupt:extraneous_data"),
        "placeholder_redirect": ("rejected", "placeholder_text"),
        "rate_limited": ("error", "http_429"),
        "bomb": ("rejected", "decode_budget"),
        "noise": ("rejected", "noise"),
    }
    for name, (status, want) in expected.items():
        if name in by_name:
            assert by_name[name][0] == status, (name, by_name[name])
            assert by_name[name][1] in (want if isinstance(want, set) else {want}), (
                name,
                by_name[name],
            )
    assert ("1", shared, "rejected", "cross_class_duplicate:0") in [
        (r["class_index"], r["url"], r["status"], r["reason"]) for r in rows
    ]
