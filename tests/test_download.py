"""Tests for advpipe.data.url_lists and advpipe.data.download.

The downloader is exercised against a real HTTP server on 127.0.0.1 (a
``ThreadingHTTPServer`` in a background thread) serving generated images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from conftest import local_http_server
from PIL import Image, ImageFile

from advpipe.data.download import (
    MANIFEST_COLUMNS,
    ImageRejected,
    ProgressEvent,
    download_classes,
    to_rgb,
    validate_image_bytes,
)
from advpipe.data.url_lists import (
    UrlEntry,
    detect_format,
    parse_url_lines,
    read_url_list,
    select,
)

# Fast settings used by most downloader calls.
FAST = dict(timeout=2.0, retries=2, backoff=0.01, workers=4)


# --------------------------------------------------------------------------
# generated images
# --------------------------------------------------------------------------


def noise(height: int = 72, width: int = 96, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def photo(height: int = 72, width: int = 96, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A photo-like image: smooth seeded waves and gradients plus mild sensor noise.

    Unlike :func:`noise` (white noise, which the downloader rejects as
    ``noise``), neighbouring pixels are strongly correlated, as in photos.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    planes = []
    for _ in range(channels):
        fx, fy = rng.uniform(1.0, 3.0, 2)
        px, py = rng.uniform(0, 2 * np.pi, 2)
        wave = 70 * np.sin(2 * np.pi * fx * x + px) * np.cos(2 * np.pi * fy * y + py)
        planes.append(128 + wave + 50 * (x - y) + rng.normal(0, 5, (height, width)))
    out = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    return out[..., 0] if channels == 1 else out


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def jpeg(seed: int = 0, size: tuple[int, int] = (96, 72)) -> bytes:
    return encode(Image.fromarray(photo(size[1], size[0], seed=seed)), "JPEG", quality=90)


def png(seed: int = 0, size: tuple[int, int] = (96, 72)) -> bytes:
    return encode(Image.fromarray(photo(size[1], size[0], seed=seed)), "PNG")


def forge_png_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR size (with a valid CRC) without touching the pixels."""
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return data[:16] + ihdr + crc + data[33:]


# --------------------------------------------------------------------------
# local HTTP server
# --------------------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    content_type: str | None = "image/jpeg"
    delay: float = 0.0
    location: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    trickle: float = 0.0  # seconds between single bytes of the body
    trickle_headers: bool = False  # trickle the status line and headers too


@dataclass
class ImageServer:
    """Serves ``routes`` (a path -> Route, or a list of Routes served in turn)."""

    base: str = ""
    routes: dict[str, Route | list[Route]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, *routes: Route) -> str:
        self.routes[path] = list(routes) if len(routes) > 1 else routes[0]
        return self.base + path

    def good(self, path: str, seed: int = 0, **kwargs: object) -> str:
        body = png(seed) if path.endswith(".png") else jpeg(seed)
        ctype = "image/png" if path.endswith(".png") else "image/jpeg"
        return self.add(path, Route(body=body, content_type=ctype, **kwargs))

    def dead(self, path: str) -> str:
        return self.add(path, Route(status=404, body=b"not found", content_type="text/plain"))


def _make_handler(server_state: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            with server_state.lock:
                server_state.hits[self.path] += 1
                count = server_state.hits[self.path]
            route = server_state.routes.get(self.path)
            if isinstance(route, list):
                route = route[min(count, len(route)) - 1]
            if route is None:
                route = Route(status=404, body=b"no such route", content_type="text/plain")
            try:
                if route.delay:
                    time.sleep(route.delay)
                self.send_response(route.status)
                if route.content_type is not None:
                    self.send_header("Content-Type", route.content_type)
                if route.location is not None:
                    self.send_header("Location", route.location)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body)))
                if route.trickle_headers:  # hold back what send_header buffered
                    head, self._headers_buffer = b"".join(self._headers_buffer) + b"\r\n", []
                    for i in range(len(head)):
                        self.wfile.write(head[i : i + 1])
                        self.wfile.flush()
                        time.sleep(route.trickle)
                else:
                    self.end_headers()
                if route.trickle:
                    for i in range(len(route.body)):
                        self.wfile.write(route.body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(route.trickle)
                else:
                    self.wfile.write(route.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[ImageServer]:
    state = ImageServer()
    with local_http_server(_make_handler(state)) as base:
        state.base = base
        yield state


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def entries_for(class_index: int, urls: list[str], wnid: str | None = None) -> list[UrlEntry]:
    return [UrlEntry(class_index, wnid, url, i + 1) for i, url in enumerate(urls)]


def read_manifest(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "manifest.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        return list(reader)


def reasons_by_url(out_dir: Path) -> dict[str, tuple[str, str]]:
    return {row["url"]: (row["status"], row["reason"]) for row in read_manifest(out_dir)}


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def accepted_urls(report) -> dict[int, list[str]]:  # noqa: ANN001
    return {c: [image.url for image in r.files] for c, r in report.classes.items()}


# --------------------------------------------------------------------------
# url_lists
# --------------------------------------------------------------------------

WNIDS = {"n01440764": 0, "n01443537": 1, "n01484850": 2}


def test_fall11_parser_tolerates_junk(tmp_path: Path) -> None:
    raw = (
        b"n01440764_1\thttp://a.example/1.jpg\n"
        b"\n"
        b"n01443537_7\thttp://b.example/caf\xe9.jpg\r\n"  # latin-1 byte, CRLF
        b"garbage line without tab\n"
        b"n01440764_2\tnot-a-url\n"
        b"n99999999_3\thttp://unknown.example/x.jpg\n"  # wnid not in the mapping
        b"n01440764_3 http://a.example/3.jpg\n"  # space instead of TAB
        b"n01440764_4\thttp://a.example/4\r.jpg\n"  # stray CR inside a line
    )
    path = tmp_path / "fall11_urls.txt"
    path.write_bytes(raw)
    parsed = read_url_list(path, wnid_to_index=WNIDS)
    assert parsed.format == "fall11"
    assert [(e.class_index, e.wnid, e.line_no) for e in parsed] == [
        (0, "n01440764", 1),
        (1, "n01443537", 3),
        (0, "n01440764", 7),
        (0, "n01440764", 8),
    ]
    assert parsed.entries[1].url == "http://b.example/caf\ufffd.jpg"
    assert parsed.stats.lines == 8
    assert parsed.stats.blank == 1
    assert parsed.stats.bad == 2
    assert parsed.stats.skipped_unknown_wnid == 1
    assert {reason for _, reason, _ in parsed.stats.bad_examples} == {"bad_key", "bad_url"}
    json.dumps(parsed.stats.to_dict())
    with pytest.raises(ValueError, match="wnid_to_index"):
        read_url_list(path, format="fall11")


def test_csv_parser_with_and_without_header(tmp_path: Path) -> None:
    plain = "http://a.example/1.jpg,0\n\nhttp://a.example/x,y.jpg,2\nhttp://a.example/bad.jpg,minus\nftp://a/b,1\n"
    parsed = parse_url_lines(io.StringIO(plain), format="csv")
    assert [(e.class_index, e.url, e.line_no, e.wnid) for e in parsed] == [
        (0, "http://a.example/1.jpg", 1, None),
        (2, "http://a.example/x,y.jpg", 3, None),  # unquoted comma kept in the URL
    ]
    assert parsed.stats.bad == 2 and parsed.stats.blank == 1 and parsed.stats.header == 0

    path = tmp_path / "urls.csv"
    path.write_text(
        'class_index,url,wnid\n1,"http://b.example/q?a=1,2",n01443537\n0,http://a.example/2.jpg,\n'
    )
    parsed = read_url_list(path, wnid_to_index=WNIDS)
    assert parsed.format == "csv" and parsed.stats.header == 1
    assert [(e.class_index, e.wnid, e.url, e.line_no) for e in parsed] == [
        (1, "n01443537", "http://b.example/q?a=1,2", 2),
        (0, "n01440764", "http://a.example/2.jpg", 3),  # wnid filled from the mapping
    ]
    with pytest.raises(ValueError, match="class_index"):
        parse_url_lines(["url,label\n", "http://a/1.jpg,0\n"], format="csv")


def test_format_detection() -> None:
    assert detect_format(["\n", "n01440764_1\thttp://a/1.jpg\n"]) == "fall11"
    assert detect_format(["url,class_index\n", "http://a/1.jpg,0\n"]) == "csv"
    assert detect_format(["http://a/1.jpg,0\n", "http://a/2.jpg,5\n"]) == "csv"
    with pytest.raises(ValueError, match="cannot detect"):
        detect_format(["hello world\n"])
    with pytest.raises(ValueError, match="cannot detect"):
        parse_url_lines([], format="auto")
    with pytest.raises(ValueError, match="format must be"):
        parse_url_lines([], format="tsv")  # type: ignore[arg-type]
    parsed = parse_url_lines(["http://a/1.jpg,3\n"])
    assert parsed.format == "csv" and parsed.entries[0].class_index == 3


def test_select_groups_per_class_in_file_order() -> None:
    entries = [UrlEntry(c, None, f"http://a/{i}", i) for i, c in enumerate([2, 0, 2, 5, 0])]
    groups = select(entries, [0, 2, 7])
    assert list(groups) == [0, 2, 7]
    assert [e.line_no for e in groups[0]] == [1, 4]
    assert [e.line_no for e in groups[2]] == [0, 2]
    assert groups[7] == []
    with pytest.raises(ValueError, match="duplicate"):
        select(entries, [0, 0])


# --------------------------------------------------------------------------
# validation / conversion units
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(noise(channels=1)),  # L
        Image.fromarray(noise(channels=1)).convert("1"),
        Image.fromarray(noise()).convert("CMYK"),
        Image.fromarray(noise(channels=4), "RGBA"),
        Image.fromarray(noise(channels=1)).convert("LA"),
        Image.fromarray(noise(channels=1).astype(np.uint16) * 257),  # I;16
        Image.fromarray(noise(channels=1).astype(np.float32) / 255.0),  # F in [0, 1]
    ],
    ids=["L", "1", "CMYK", "RGBA", "LA", "I;16", "F"],
)
def test_to_rgb_modes(image: Image.Image) -> None:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size


def test_to_rgb_scales_16_bit_and_composites_alpha_on_white() -> None:
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert to_rgb(sixteen).getpixel((0, 0)) == (255, 255, 255)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, 2:, 3] = 255  # right half opaque red-ish, left half transparent
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 3]) == (200, 0, 0)


def test_validate_refuses_when_truncated_images_are_allowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        validate_image_bytes(jpeg())
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        download_classes({0: []}, 1, tmp_path)


def test_validate_bomb_checks_do_not_leak_global_state() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageRejected) as info:
        validate_image_bytes(forge_png_size(png(), 12000, 12000))  # Pillow warns here
    assert info.value.reason == "too_many_pixels"
    with pytest.raises(ImageRejected) as info:
        validate_image_bytes(forge_png_size(png(), 20000, 20000))  # Pillow errors here
    assert info.value.reason == "too_many_pixels"
    assert Image.MAX_IMAGE_PIXELS == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --------------------------------------------------------------------------
# downloader
# --------------------------------------------------------------------------


def test_success_jpeg_and_png(server: ImageServer, tmp_path: Path) -> None:
    urls = [server.good("/ok/a.jpg", seed=1), server.good("/ok/b.png", seed=2)]
    report = download_classes({3: entries_for(3, urls, "n01440764")}, 2, tmp_path, **FAST)
    assert report.complete and report.classes[3].accepted == 2
    rows = read_manifest(tmp_path)
    assert [(r["status"], r["reason"], r["attempts"]) for r in rows] == [("accepted", "", "1")] * 2
    for image in report.classes[3].files:
        path = tmp_path / image.file
        assert path.parent.name == "n01440764" and path.suffix == ".png"
        with Image.open(path) as saved:
            assert saved.format == "PNG" and saved.mode == "RGB" and saved.size == (96, 72)
    # lossless: the PNG source round-trips exactly
    png_file = tmp_path / report.classes[3].files[1].file
    assert np.array_equal(np.asarray(Image.open(png_file)), photo(seed=2))
    json.dumps(report.to_dict())


def test_rejections_have_machine_readable_reasons(server: ImageServer, tmp_path: Path) -> None:
    good = jpeg(seed=3)
    big = png(seed=4, size=(300, 300))
    grey = np.clip(
        np.full((150, 200, 3), 128.0) + np.random.default_rng(5).normal(0, 1, (150, 200, 3)), 0, 255
    )
    uniform = encode(Image.fromarray(grey.astype(np.uint8)), "JPEG", quality=95)
    server.add("/photo_unavailable.png", Route(body=png(seed=6), content_type="image/png"))
    cases = {
        "/r/404.jpg": (Route(status=404, body=b"gone", content_type="text/html"), "http_404"),
        "/r/410.jpg": (Route(status=410, body=b"gone", content_type="text/html"), "http_410"),
        "/r/html.jpg": (
            Route(body=b"<html>" + b"x" * 5000, content_type="text/html; charset=utf-8"),
            "content_type:text/html",
        ),
        "/r/no_ctype.jpg": (Route(body=good, content_type=None), "content_type:missing"),
        "/r/truncated.jpg": (Route(body=good[: len(good) * 6 // 10]), "truncated"),
        "/r/garbage.jpg": (Route(body=bytes(range(256)) * 20), "decode_error:cannot_identify"),
        # Pillow could decode PPM, but only common web formats are allowed.
        "/r/pixmap.ppm": (
            Route(
                body=encode(Image.fromarray(noise(seed=21)), "PPM"),
                content_type="image/x-portable-pixmap",
            ),
            "decode_error:cannot_identify",
        ),
        "/r/tiny.png": (
            Route(body=png(seed=7, size=(8, 8)), content_type="image/png"),
            "too_small_bytes",
        ),
        "/r/thin.png": (
            Route(body=png(seed=8, size=(400, 40)), content_type="image/png"),
            "too_small_side",
        ),
        "/r/big.png": (Route(body=big, content_type="image/png"), "too_many_pixels"),
        "/r/bomb.png": (
            Route(body=forge_png_size(png(seed=9), 20000, 20000), content_type="image/png"),
            "too_many_pixels",
        ),
        "/r/flickr.jpg": (
            Route(status=302, location="/photo_unavailable.png", content_type=None),
            "placeholder_redirect",
        ),
        "/r/grey.jpg": (Route(body=uniform), "placeholder_uniform"),
        "/r/known.jpg": (Route(body=png(seed=10), content_type="image/png"), "placeholder_hash"),
        "/r/loop.jpg": (
            Route(status=302, location="/r/loop.jpg", content_type=None),
            "too_many_redirects",
        ),
    }
    urls = [server.add(path, route) for path, (route, _) in cases.items()]
    urls += ["ftp://127.0.0.1/x.jpg", "file:///etc/passwd"]
    known = hashlib.sha256(png(seed=10)).hexdigest()
    report = download_classes(
        {0: entries_for(0, urls)},
        quota=len(urls),
        out_dir=tmp_path,
        min_bytes=500,
        max_pixels=50_000,
        placeholder_hashes={known},
        **FAST,
    )
    got = reasons_by_url(tmp_path)
    for path, (_, reason) in cases.items():
        assert got[server.base + path] == ("rejected", reason), path
    assert got["ftp://127.0.0.1/x.jpg"] == ("rejected", "invalid_url")
    assert got["file:///etc/passwd"] == ("rejected", "invalid_url")
    assert report.classes[0].accepted == 0 and report.classes[0].rejected == len(urls)
    assert server.hits["/r/404.jpg"] == 1  # permanent: not retried
    assert server.hits["/photo_unavailable.png"] == 1
    assert report.reasons["too_many_pixels"] == 2
    assert not list(tmp_path.rglob("*.png"))


def test_timeout_is_transient_and_retried(server: ImageServer, tmp_path: Path) -> None:
    url = server.add("/slow.jpg", Route(body=jpeg(), delay=1.0))
    started = time.monotonic()
    report = download_classes(
        {0: entries_for(0, [url])}, 1, tmp_path, timeout=0.3, retries=1, backoff=0.01, workers=2
    )
    assert time.monotonic() - started < 3.0
    row = read_manifest(tmp_path)[0]
    assert (row["status"], row["reason"], row["attempts"]) == ("error", "timeout", "2")
    assert server.hits["/slow.jpg"] == 2
    assert report.classes[0].errors == 1 and not report.complete


def test_5xx_and_429_are_retried_then_succeed(server: ImageServer, tmp_path: Path) -> None:
    flaky = server.add(
        "/flaky.jpg",
        Route(status=503, body=b"busy", content_type="text/plain"),
        Route(status=500, body=b"oops", content_type="text/plain"),
        Route(body=jpeg(seed=11)),
    )
    limited = server.add(
        "/limited.jpg",
        Route(status=429, body=b"slow down", content_type="text/plain"),
        Route(body=jpeg(seed=12)),
    )
    hopeless = server.add(
        "/down.jpg", Route(status=502, body=b"bad gateway", content_type="text/plain")
    )
    report = download_classes({0: entries_for(0, [flaky, limited, hopeless])}, 3, tmp_path, **FAST)
    rows = {r["url"]: r for r in read_manifest(tmp_path)}
    assert (rows[flaky]["status"], rows[flaky]["attempts"]) == ("accepted", "3")
    assert (rows[limited]["status"], rows[limited]["attempts"]) == ("accepted", "2")
    assert (rows[hopeless]["status"], rows[hopeless]["reason"], rows[hopeless]["attempts"]) == (
        "error",
        "http_502",
        "3",
    )
    assert server.hits == Counter({"/flaky.jpg": 3, "/limited.jpg": 2, "/down.jpg": 3})
    assert report.classes[0].accepted == 2 and report.classes[0].errors == 1


def test_redirect_to_good_image_is_accepted(server: ImageServer, tmp_path: Path) -> None:
    server.good("/target.jpg", seed=13)
    url = server.add("/short/abc", Route(status=301, location="/target.jpg", content_type=None))
    report = download_classes({0: entries_for(0, [url])}, 1, tmp_path, **FAST)
    assert report.complete and report.classes[0].files[0].url == url
    assert server.hits == Counter({"/short/abc": 1, "/target.jpg": 1})


def test_modes_are_converted_to_rgb(server: ImageServer, tmp_path: Path) -> None:
    size = (96, 72)
    palette = Image.fromarray(photo(seed=14)).quantize(64)
    palette_bytes = encode(palette, "PNG", transparency=0)
    rgba = photo(seed=15, channels=4)
    rgba[:, :48, 3] = 0  # left half fully transparent
    rgba[:, 48:, 3] = 255  # right half opaque
    bodies = {
        "/m/gray.png": (encode(Image.fromarray(photo(seed=16, channels=1)), "PNG"), "image/png"),
        "/m/cmyk.jpg": (
            encode(Image.fromarray(photo(seed=17)).convert("CMYK"), "JPEG", quality=90),
            "image/jpeg",
        ),
        "/m/palette.png": (palette_bytes, "image/png"),
        "/m/rgba.png": (encode(Image.fromarray(rgba, "RGBA"), "PNG"), "image/png"),
        "/m/la.png": (
            encode(Image.fromarray(photo(seed=18, channels=1)).convert("LA"), "PNG"),
            "image/png",
        ),
        "/m/gray16.png": (
            encode(Image.fromarray(photo(seed=19, channels=1).astype(np.uint16) * 257), "PNG"),
            "image/png",
        ),
        "/m/anim.gif": (encode(Image.fromarray(photo(seed=20)).convert("P"), "GIF"), "image/gif"),
    }
    assert Image.open(io.BytesIO(bodies["/m/gray16.png"][0])).mode.startswith("I")
    urls = [
        server.add(path, Route(body=body, content_type=ctype))
        for path, (body, ctype) in bodies.items()
    ]
    report = download_classes({0: entries_for(0, urls)}, len(urls), tmp_path, **FAST)
    assert report.classes[0].accepted == len(urls), reasons_by_url(tmp_path)
    by_url = {image.url: tmp_path / image.file for image in report.classes[0].files}
    for url in urls:
        with Image.open(by_url[url]) as saved:
            assert saved.mode == "RGB" and saved.size == size
    saved_rgba = np.asarray(Image.open(by_url[urls[3]]))
    assert (saved_rgba[:, :48] == 255).all()  # transparent half composited on white
    assert np.array_equal(saved_rgba[:, 48:], rgba[:, 48:, :3])


def test_quota_respected_with_minimal_requests(server: ImageServer, tmp_path: Path) -> None:
    urls = [server.good(f"/q/{i}.jpg", seed=i, delay=0.02) for i in range(20)]
    report = download_classes({0: entries_for(0, urls)}, 5, tmp_path, workers=8, timeout=2.0)
    assert report.classes[0].accepted == 5
    assert [image.url for image in report.classes[0].files] == urls[:5]
    assert sum(server.hits.values()) == 5  # never more in flight than still missing
    assert len(list(tmp_path.rglob("*.png"))) == 5


def _mixed_class(server: ImageServer, prefix: str, n: int = 16) -> tuple[list[str], list[str]]:
    """URLs alternating bad kinds and good ones; early good ones are slow."""
    urls, good = [], []
    for i in range(n):
        path = f"/{prefix}/{i}.jpg"
        if i % 4 == 0:
            urls.append(server.dead(path))
        elif i % 4 == 2 and i % 8 == 2:
            urls.append(
                server.add(path, Route(body=b"<html>nope</html>" * 200, content_type="text/html"))
            )
        else:
            delay = max(0.0, 0.15 - 0.01 * i)  # later URLs answer first
            urls.append(server.good(path, seed=100 + i, delay=delay))
            good.append(urls[-1])
    return urls, good


def test_accepted_set_is_deterministic(server: ImageServer, tmp_path: Path) -> None:
    urls, good = _mixed_class(server, "det")
    results = []
    for workers in (1, 3, 8):
        report = download_classes(
            {4: entries_for(4, urls)}, 5, tmp_path / f"w{workers}", workers=workers, timeout=2.0
        )
        results.append([image.url for image in report.classes[4].files])
    assert results[0] == results[1] == results[2] == good[:5]


def test_resume_after_interrupt(server: ImageServer, tmp_path: Path) -> None:
    classes = {c: _mixed_class(server, f"res{c}", n=12) for c in range(3)}
    entries = {c: entries_for(c, urls, wnid=f"n0000000{c}") for c, (urls, _) in classes.items()}
    seen: list[ProgressEvent] = []

    def interrupt_after_four(event: ProgressEvent) -> None:
        seen.append(event)
        if len(seen) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_classes(
            entries, 4, tmp_path, progress=interrupt_after_four, workers=4, timeout=2.0
        )
    first_rows = read_manifest(tmp_path)
    assert len(first_rows) >= 4  # in-flight requests were recorded too
    assert not list(tmp_path.rglob("*.tmp"))

    report = download_classes(entries, 4, tmp_path, workers=4, timeout=2.0)
    assert report.complete
    for c, (_, good) in classes.items():
        assert [image.url for image in report.classes[c].files] == good[:4]
    assert report.totals()["resumed"] == sum(r["status"] == "accepted" for r in first_rows)
    for url in [row["url"] for row in read_manifest(tmp_path)]:
        assert server.hits[path_of(url)] == 1, url  # nothing fetched twice
    assert not list(tmp_path.rglob("*.tmp"))

    # A third run with everything full issues no request at all.
    before = sum(server.hits.values())
    again = download_classes(entries, 4, tmp_path, workers=4)
    assert again.complete and sum(server.hits.values()) == before
    assert again.totals()["requested"] == 0


def test_resume_with_larger_quota_and_lost_manifest(server: ImageServer, tmp_path: Path) -> None:
    urls, good = _mixed_class(server, "grow", n=12)
    (tmp_path / "7").mkdir(parents=True)
    (tmp_path / "7" / ".stray.png.abc.tmp").write_bytes(b"partial")
    small = download_classes({7: entries_for(7, urls)}, 2, tmp_path, **FAST)
    assert [i.url for i in small.classes[7].files] == good[:2]
    assert not list(tmp_path.rglob("*.tmp"))

    larger = download_classes({7: entries_for(7, urls)}, 5, tmp_path, **FAST)
    assert [i.url for i in larger.classes[7].files] == good[:5]
    assert larger.classes[7].resumed == 2 and larger.classes[7].skipped_rejected > 0
    assert all(count == 1 for count in server.hits.values())

    # Lost manifest (hard kill between image and row): files on disk are adopted.
    (tmp_path / "manifest.csv").unlink()
    before = sum(server.hits.values())
    adopted = download_classes({7: entries_for(7, urls)}, 5, tmp_path, **FAST)
    assert [i.url for i in adopted.classes[7].files] == good[:5]
    assert adopted.classes[7].resumed == 5
    assert sum(server.hits.values()) == before
    assert {r["reason"] for r in read_manifest(tmp_path)} == {"adopted_file"}


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _acceptance_server(server: ImageServer) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Three classes, 12 URLs each, half of them dead or bad."""
    server.add("/photo_unavailable.png", Route(body=png(seed=999), content_type="image/png"))
    bad_kinds: list[Callable[[str], str]] = [
        server.dead,
        lambda p: server.add(p, Route(body=b"<html>" + b"." * 4000, content_type="text/html")),
        lambda p: server.add(
            p, Route(body=_half(jpeg(seed=zlib.crc32(p.encode()) % 1000, size=(240, 180))))
        ),
        lambda p: server.add(
            p, Route(status=302, location="/photo_unavailable.png", content_type=None)
        ),
        lambda p: server.add(
            p,
            Route(
                body=encode(Image.new("RGB", (200, 150), (120, 120, 120)), "BMP"),
                content_type="image/bmp",
            ),
        ),
        lambda p: server.add(p, Route(status=503, body=b"", content_type="text/plain")),
    ]
    urls: dict[str, list[str]] = {}
    good: dict[str, list[str]] = {}
    for k, wnid in enumerate(WNIDS):
        urls[wnid], good[wnid] = [], []
        for i in range(12):
            path = f"/acc/{wnid}/{i}.jpg"
            if (i + k) % 2 == 0:
                urls[wnid].append(bad_kinds[(i // 2 + k) % len(bad_kinds)](path))
            else:
                urls[wnid].append(server.good(path, seed=1000 * k + i))
                good[wnid].append(urls[wnid][-1])
    return urls, good


@pytest.mark.parametrize("fmt", ["fall11", "csv"])
def test_acceptance_quota_filled_from_half_dead_list(
    server: ImageServer, tmp_path: Path, fmt: str
) -> None:
    urls, good = _acceptance_server(server)
    list_path = tmp_path / ("fall11_urls.txt" if fmt == "fall11" else "urls.csv")
    with open(list_path, "w", encoding="utf-8", newline="") as handle:
        if fmt == "fall11":
            for wnid, class_urls in urls.items():
                for i, url in enumerate(class_urls):
                    handle.write(f"{wnid}_{i}\t{url}\n")
            handle.write("n09999999_1\thttp://127.0.0.1:9/other-class.jpg\n")
        else:
            handle.write("url,class_index\n")
            for wnid, class_urls in urls.items():
                for url in class_urls:
                    handle.write(f"{url},{WNIDS[wnid]}\n")
    parsed = read_url_list(list_path, wnid_to_index=WNIDS)
    assert parsed.format == fmt and len(parsed) == 36
    groups = select(parsed, [0, 1, 2])
    out_dir = tmp_path / "images"
    report = download_classes(groups, 4, out_dir, timeout=2.0, retries=1, backoff=0.01, workers=6)

    assert report.complete
    for wnid, index in WNIDS.items():
        class_report = report.classes[index]
        assert class_report.wnid == wnid
        assert [image.url for image in class_report.files] == good[wnid][:4]
        assert class_report.rejected + class_report.errors > 0
        for image in class_report.files:
            assert (out_dir / image.file).is_file() and image.file.startswith(f"{wnid}/")
    rows = read_manifest(out_dir)
    assert all(row["reason"] for row in rows if row["status"] != "accepted")
    assert sum(row["status"] == "accepted" for row in rows) == 12
    metrics = json.loads(json.dumps(report.to_dict()))
    assert metrics["totals"]["accepted"] == 12 and metrics["totals"]["classes_full"] == 3
    assert metrics["classes"]["0"]["full"] is True
    assert set(metrics["reasons"]) <= {
        "http_404",
        "content_type:text/html",
        "truncated",
        "placeholder_redirect",
        "placeholder_uniform",
        "http_503",
    }


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["fall11", "csv"])
def test_data_stage_with_url_source(server: ImageServer, tmp_path: Path, fmt: str) -> None:
    """`stages/data.py` with both sets from source urls, filled from a half-dead local list."""
    import os
    import shutil
    import subprocess
    import sys

    import pandas as pd
    import yaml

    root = Path(__file__).resolve().parents[1]
    urls, good = _acceptance_server(server)
    work = tmp_path / "repo"
    (work / "stages").mkdir(parents=True)
    for script in ("data.py", "common.py"):
        shutil.copy(root / "stages" / script, work / "stages" / script)
    with open(work / "urls.txt", "w") as handle:
        if fmt == "csv":
            handle.write("url,class_index\n")
        for wnid, class_urls in urls.items():
            for i, url in enumerate(class_urls):
                handle.write(f"{url},{WNIDS[wnid]}\n" if fmt == "csv" else f"{wnid}_{i}\t{url}\n")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["urls"].update(
        list="urls.txt", timeout=2.0, retries=1, backoff=0.01, workers=4, min_bytes=512, min_side=32
    )
    params["data"]["attack_set"] = {"source": "urls", "first": 2, "indices": None, "per_class": 3}
    params["data"]["defense_set"].update(source="urls", first=None, indices=[0, 1, 2], per_class=5)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    proc = subprocess.run(
        [sys.executable, "stages/data.py"], cwd=work, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr

    attack = pd.read_csv(work / "data/attack/manifest.csv")
    assert attack["label"].value_counts().to_dict() == {0: 3, 1: 3}
    assert list(attack["source"]) == good["n01440764"][:3] + good["n01443537"][:3]
    defense = pd.read_csv(work / "data/defense/manifest.csv")
    assert defense["label"].value_counts().to_dict() == {0: 5, 1: 5, 2: 5}
    assert defense.groupby("label")["split"].value_counts().unstack().to_dict("list") == {
        "test": [1, 1, 1],
        "train": [3, 3, 3],
        "val": [1, 1, 1],
    }
    img = Image.open(work / "data/defense" / defense["file"][0])
    assert img.size == (224, 224) and img.mode == "RGB"
    metrics = json.loads((work / "metrics/data.json").read_text())
    assert metrics["defense"]["download"]["complete"] is True
    assert metrics["defense"]["download"]["totals"]["rejected"] > 0
    rows = list(csv.DictReader(open(work / "data/raw/defense/manifest.csv")))
    assert all(row["reason"] for row in rows if row["status"] != "accepted")
