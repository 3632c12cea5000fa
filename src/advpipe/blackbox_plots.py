"""Figures of the black-box attacks: transfer heatmaps and ‖r‖₂ against queries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .reporting import _save_figure


def _short(name: str) -> str:
    return name.replace("efficientnet_", "")


def transfer_heatmap(
    matrix: np.ndarray,
    models: Sequence[str],
    clean: Sequence[float],
    path: str | Path,
    title: str,
    flagged: np.ndarray | None = None,
) -> Path:
    """Top-1 of each target (columns) on adversarials crafted on each source (rows).

    The diagonal is white-box; darker = lower accuracy = a stronger attack. Column labels
    carry each target's clean top-1; a flagged cell (white-box above transfer) gets a '!'.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(models)
    fig, ax = plt.subplots(figsize=(2.0 + 1.25 * n, 1.9 + 1.1 * n), dpi=110)
    im = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(n):
        for j in range(n):
            v = matrix[i, j]
            mark = "!" if flagged is not None and flagged[i, j] else ""
            ax.text(
                j,
                i,
                f"{v:.2f}{mark}",
                ha="center",
                va="center",
                color="white" if v < 0.5 else "black",
                fontweight="bold" if i == j else "normal",
                fontsize=10,
            )
    ax.set_xticks(
        range(n), [f"{_short(m)}\n(clean {c:.2f})" for m, c in zip(models, clean)], fontsize=8
    )
    ax.set_yticks(range(n), [_short(m) for m in models], fontsize=8)
    ax.set_xlabel("target (evaluated on)")
    ax.set_ylabel("source (crafted on)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="target top-1")
    return _save_figure(fig, path)


def transfer_heatmaps(
    result, directory: str | Path, shown_eps: float, deepfool_overshoot: float | None = None
) -> list[Path]:
    """One heatmap per attack of a :class:`~advpipe.attacks.transfer.TransferResult` at
    ``shown_eps`` (DeepFool: its own minimal perturbation) in ``directory``, emptied first."""
    import shutil

    from .attacks.transfer import DEEPFOOL_KEY, eps_key, flagged_cells

    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    clean = [float(np.mean(result.clean_correct[m])) for m in result.models]
    paths = []
    for attack in result.attacks:
        e = DEEPFOOL_KEY if attack == DEEPFOOL_KEY else eps_key(shown_eps)
        what = (
            f"DeepFool's own minimal perturbation (overshoot {deepfool_overshoot:g})"
            if attack == DEEPFOOL_KEY
            else f"ε = {float(e) * 255:.3g}/255 = {e}"
        )
        paths.append(
            transfer_heatmap(
                result.matrix(attack, e),
                result.models,
                clean,
                directory / f"{attack}.png",
                f"Transfer top-1, {attack}, {what}",
                flagged_cells(result, attack, e),
            )
        )
    return paths


def l2_vs_queries(
    budgets: Sequence[int],
    medians: Sequence[float],
    success: Sequence[float],
    whitebox_l2: float,
    path: str | Path,
    attack: str,
    model: str,
    threshold: float,
) -> Path:
    """Median ‖r‖₂ of the decision-based attack at each query budget, DeepFool's as a line.

    ``success``: the share of images with an adversarial within ``threshold`` (point labels).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(budgets, medians, marker="o", label=f"{attack} (label only), median ‖r‖₂")
    for b, m, s in zip(budgets, medians, success):
        if np.isfinite(m):
            ax.annotate(
                f"{s:.0%}",
                (b, m),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
    if np.isfinite(whitebox_l2):
        ax.axhline(
            whitebox_l2,
            color="C3",
            linestyle="--",
            label=f"DeepFool (white-box), median ‖r‖₂ = {whitebox_l2:.3f}",
        )
    ax.axhline(threshold, color="grey", linestyle=":", label=f"‖r‖₂ = {threshold:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("queries per image (top-1 label only)")
    ax.set_ylabel("median ‖r‖₂ ([0, 1] pixels)")
    ax.set_title(
        f"Decision-based attack on {_short(model)}: distance vs queries\n"
        f"(labels: share of images fooled within ‖r‖₂ ≤ {threshold:g} at that budget)",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(0.02, 0.35))
    return _save_figure(fig, path)
