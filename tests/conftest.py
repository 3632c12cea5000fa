import contextlib
import os
import sys
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# stage-side helpers (stages/wiring.py: params -> plain arguments) are importable in tests
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "stages")
)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """A small random CNN: 32x32 RGB [0,1] -> 10 logits."""
    from advpipe.models.zoo import tiny_model

    return tiny_model(image_size=32, num_classes=10, seed=1)


@pytest.fixture(scope="session")
def batch():
    """Deterministic images in [0, 1] (with some pixels at the bounds) and int64 labels."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (12, 32, 32, 3)).astype(np.float32)
    x[:, :4] = 0.0
    x[:, -4:] = 1.0
    y = rng.integers(0, 10, 12).astype(np.int64)
    return x, y


SHARED_IMAGENETTE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenette"


def copy_repository(dest: Path) -> None:
    """Copy the tracked and untracked-but-not-ignored files of this checkout into ``dest``,
    without generated pipeline outputs, and make it a git repository (DVC needs one)."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for generated in [
        "dvc.lock",
        "metrics",
        "plots",
        "data/attack",
        "data/defense",
        "models",
        "tables",
        "timings",
    ]:
        path = dest / generated
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """The download tests talk to 127.0.0.1: no proxy from the environment in between."""
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


@contextlib.contextmanager
def local_http_server(handler: type) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a background thread; yields the base URL.
    Handler errors from clients that hang up (timeout tests) are not printed."""
    import threading
    from http.server import ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
