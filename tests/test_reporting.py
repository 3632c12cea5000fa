"""Figures and metric files: layout, size, and atomic writes that leave nothing behind."""

import numpy as np
import pytest
from PIL import Image

from advpipe import reporting


def _figure(tmp_path, originals, adversarials, epsilons, name="fig.png"):
    n = len(originals)
    return reporting.adversarial_figure(
        originals,
        adversarials,
        epsilons,
        [f"clean {i}" for i in range(n)],
        [[f"adv {i}" for i in range(n)] for _ in epsilons],
        tmp_path / name,
        "fgsm",
        title="fgsm on tiny: 2 of 20 images",
    )


def _solid(n, rgb):
    return np.broadcast_to(np.asarray(rgb, np.float32), (n, 64, 64, 3)).copy()


def _count(pixels, rgb):
    return int(np.all(np.abs(pixels.astype(int) - rgb) <= 12, axis=-1).sum())


@pytest.mark.parametrize("n,n_eps", [(2, 3), (1, 2), (3, 1)])
def test_each_original_once_then_one_row_per_eps(tmp_path, n, n_eps):
    red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    eps = [0.01 * (j + 1) for j in range(n_eps)]
    path = _figure(tmp_path, _solid(n, red), [_solid(n, blue)] * n_eps, eps)
    img = np.asarray(Image.open(path).convert("RGB"))
    # size follows the grid: 2 columns per image, 1 + len(eps) rows
    assert img.shape[1] == round(3.6 * n * 80) and img.shape[0] == round(
        (2.0 * (1 + n_eps) + 0.4) * 80
    )
    reds, blues = _count(img, (255, 0, 0)), _count(img, (0, 0, 255))
    assert reds > 0 and blues > 0
    # every panel has the same size: n originals, n * n_eps adversarials
    assert 0.7 * n_eps <= blues / reds <= 1.3 * n_eps
    # the originals sit in the top row only, the adversarials below it
    red_rows = np.flatnonzero(np.all(np.abs(img.astype(int) - (255, 0, 0)) <= 12, -1).any(1))
    blue_rows = np.flatnonzero(np.all(np.abs(img.astype(int) - (0, 0, 255)) <= 12, -1).any(1))
    assert red_rows.max() < blue_rows.min()
    # the perturbation blue - red = (-1, 0, 1), amplified: (0, 0.5, 1)
    assert _count(img, (0, 128, 255)) > 0 or _count(img, (0, 127, 255)) > 0


def test_default_sized_figure_stays_under_1_mb(tmp_path):
    rng = np.random.default_rng(0)
    originals = rng.uniform(0, 1, (2, 224, 224, 3)).astype(np.float32)  # noise: worst case
    adversarials = [
        np.clip(originals + rng.choice([-e, e], originals.shape), 0, 1) for e in (0.001, 0.01, 0.05)
    ]
    path = _figure(tmp_path, originals, adversarials, [0.001, 0.01, 0.05])
    assert path.stat().st_size < 1_000_000


def test_amplified_perturbation():
    eta = np.array([[-0.02, 0.0, 0.01]], np.float32)
    shown, gain = reporting.amplified(eta)
    np.testing.assert_allclose(shown, [[0.0, 0.5, 0.75]])
    assert gain == pytest.approx(25.0)
    shown, gain = reporting.amplified(np.zeros((2, 2)))
    assert gain == 0.0 and (shown == 0.5).all()


def test_interrupted_figure_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    import matplotlib.figure

    path = tmp_path / "examples.png"
    Image.new("RGB", (5, 5), (1, 2, 3)).save(path)
    old = path.read_bytes()

    def dies_half_way(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt  # a kill during the write

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        _figure(tmp_path, _solid(1, (1, 0, 0)), [_solid(1, (0, 0, 1))], [0.1], "examples.png")
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples.png"]


def test_interrupted_text_write_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    reporting.write_json(path, {"a": 1})
    monkeypatch.setattr(reporting.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError, match="full"):
        reporting.write_json(path, {"a": 2})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_temporary_names_are_ignored_by_git():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for rel in [
        "plots/attacks/examples.png.tmp",
        "metrics/x.json.tmp",
        "plots/attacks/examples.tmp.png",
    ]:
        proc = subprocess.run(["git", "check-ignore", "-q", rel], cwd=root)
        assert proc.returncode == 0, f"{rel} is not ignored by git"


def test_accuracy_plot_is_log_scale_with_clean_line(tmp_path):
    import pandas as pd

    curves = {
        "a": pd.DataFrame(
            {
                "eps": [0.0, 0.001, 0.01, 0.1],
                "top1": [0.9, 0.5, 0.3, 0.1],
                "top5": [1.0, 0.8, 0.6, 0.4],
            }
        )
    }
    path = reporting.plot_accuracy_vs_eps(curves, "top1", tmp_path / "p.png", "t")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (round(4.2 * 120), round(6.4 * 120), 3)
    assert _count(img, (31, 119, 180)) > 50  # matplotlib's first line colour (C0) is drawn
