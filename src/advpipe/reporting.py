"""Metrics files, plot data and figures.

Files are written atomically (temporary file + rename), so an interrupted stage
never leaves a half-written metric behind.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def _temporary(path: Path) -> Path:
    """A temporary name beside ``path`` that .gitignore ignores (``*.tmp``)."""
    return path.with_name(path.name + ".tmp")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary name: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _json_safe(obj):
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else round(f, 6)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Save a matplotlib figure as PNG atomically and close it.

    The PNG goes to ``<name>.tmp`` first (ignored by git), then replaces ``path``; if
    anything fails, the temporary file is removed and ``path`` keeps its old content.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        fig.savefig(tmp, format="png", **savefig_kwargs)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, data: Mapping) -> Path:
    """Nested metrics JSON (NaN becomes null; floats rounded to 6 decimals)."""
    return atomic_write_text(Path(path), json.dumps(_json_safe(data), indent=2) + "\n")


def write_rows_csv(path: str | Path, rows: Iterable[Mapping]) -> Path:
    """Plot data as CSV (one row per point), for ``dvc plots``."""
    return atomic_write_text(Path(path), pd.DataFrame(list(rows)).to_csv(index=False))


def plot_accuracy_vs_eps(
    curves: Mapping[str, pd.DataFrame], metric: str, path: str | Path, title: str | None = None
) -> Path:
    """One line per attack of ``metric`` (top1/top5) against eps, log-scale eps axis.

    The clean accuracy (eps = 0, which a log axis cannot show) is a dashed line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    clean = None
    for name, df in curves.items():
        pos = df[df["eps"] > 0].sort_values("eps")
        ax.plot(pos["eps"], pos[metric], marker="o", markersize=3.5, label=name)
        zero = df[df["eps"] == 0]
        if len(zero):
            clean = float(zero[metric].iloc[0])
    if clean is not None:
        ax.axhline(clean, color="grey", linestyle="--", linewidth=1, label="clean")
    ax.set_xscale("log")
    ax.set_xlabel("ε (L∞ distance in [0, 1] pixel space; FGM: see params)")
    ax.set_ylabel(f"{metric} accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or f"{metric} accuracy vs ε", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def amplified(eta: np.ndarray) -> tuple[np.ndarray, float]:
    """A perturbation made visible: eta / (2 max|eta|) + 0.5 (grey = no change), and the gain."""
    peak = float(np.abs(eta).max())
    if peak == 0:
        return np.full_like(eta, 0.5), 0.0
    return eta / (2 * peak) + 0.5, 0.5 / peak


def adversarial_figure(
    originals: np.ndarray,
    adversarials: Sequence[np.ndarray],
    epsilons: Sequence[float],
    clean_titles: Sequence[str],
    adv_titles: Sequence[Sequence[str]],
    path: str | Path,
    attack: str,
    title: str | None = None,
) -> Path:
    """The proposal's Figure 4, one column block per image.

    Row 0 shows each original once; then one row per eps with the perturbation
    (amplified, grey = no change) and the adversarial image side by side.
    ``adversarials[j]`` holds the batch for ``epsilons[j]``; ``adv_titles[j][i]`` its titles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, rows = len(originals), 1 + len(epsilons)
    fig = plt.figure(figsize=(3.6 * n, 2.0 * rows + 0.4), dpi=80)
    grid = fig.add_gridspec(rows, 2 * n)

    def panel(cell, img, text):
        ax = fig.add_subplot(cell)
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        ax.set_title(text, fontsize=8)
        ax.axis("off")

    for i in range(n):
        panel(grid[0, 2 * i : 2 * i + 2], originals[i], f"original\n{clean_titles[i]}")
        for j, eps in enumerate(epsilons):
            shown, gain = amplified(adversarials[j][i] - originals[i])
            panel(
                grid[1 + j, 2 * i],
                shown,
                f"ε = {eps:g}: perturbation\n" + (f"(×{gain:.0f})" if gain else "(none)"),
            )
            panel(
                grid[1 + j, 2 * i + 1],
                adversarials[j][i],
                f"{attack}, ε = {eps:g}\n{adv_titles[j][i]}",
            )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path)


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def defense_table(
    evals: Mapping[str, Mapping],
    trains: Mapping[str, Mapping],
    labels: Mapping[str, str],
    attacks: Sequence[str],
    eps: float,
) -> pd.DataFrame:
    """The final table: one row per defense model; top-1 in % at ``eps`` (white-box and
    transfer from the clean head), DeepFool ρ₂, n per split and the masking checks."""
    key = f"{eps:g}"
    rows = []
    for name, ev in evals.items():
        tr = trains.get(name, {})
        row = {
            "model": name,
            "description": labels.get(name, name),
            "n_train": tr.get("n_train"),
            "n_val": tr.get("n_val"),
            "n_test": ev["n_images"],
            "clean": ev["clean_top1"],
        }
        for a in attacks:
            row[a] = ev["whitebox"].get(a, {}).get(key)
        for a in attacks:
            row[f"transfer_{a}"] = (ev["transfer"] or {}).get(a, {}).get(key)
        aa = (ev.get("autoattack") or {}).get(key)
        row["autoattack"] = None if aa is None else aa["robust_top1"]
        row["worst_case"] = None if aa is None else aa["worst_case_top1"]
        row["autoattack_broken_by"] = (
            None
            if aa is None
            else "; ".join(f"{r['attack']} {r['broken']}" for r in aa["per_attack"] if r["broken"])
        )
        row["autoattack_standard"] = None if aa is None else bool(aa["standard"])
        row["deepfool_success"] = ev["deepfool"]["success_rate"]
        row["rho2"] = ev["deepfool"]["rho2"]
        leak = tr.get("label_leaking")
        row["label_leaking"] = None if leak is None else bool(leak["leaking"])
        m = ev["masking"]
        row["masking_checks"] = "passed" if m["passed"] else "FLAGGED"
        row["masking_flags"] = "; ".join(m["flags"])
        rows.append(row)
    return pd.DataFrame(rows)


def defense_markdown(
    table: pd.DataFrame, attacks: Sequence[str], eps: float, smoke: bool, notes: Sequence[str] = ()
) -> str:
    """The table as Markdown (top-1 in %), with a smoke-run warning when it applies."""
    lines = [f"# Defense results (top-1 %, ε = {eps:g} ≈ {eps * 255:.0f}/255)", ""]
    if smoke:
        lines += [
            "> **Smoke run.** These models were trained and tested on a handful of images "
            "(see n_train / n_test): the numbers show that every stage runs, not how "
            "robust anything is. The README publishes the real-data results.",
            "",
        ]
    head = (
        ["model", "n train/val/test", "clean"]
        + [f"{a}" for a in attacks]
        + ["AutoAttack", "worst case (AA ∧ PGD)"]
        + [f"transfer {a}" for a in attacks]
        + ["DeepFool success", "ρ₂", "label leaking", "masking checks"]
    )
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [f"{r['model']}", f"{r['n_train']}/{r['n_val']}/{r['n_test']}", _pct(r["clean"])]
        cells += [_pct(r[a]) for a in attacks]
        cells += [_pct(r["autoattack"]), _pct(r["worst_case"])]
        cells += [_pct(r[f"transfer_{a}"]) for a in attacks]
        rho = r["rho2"]
        cells += [
            _pct(r["deepfool_success"]),
            "–" if rho is None or (isinstance(rho, float) and math.isnan(rho)) else f"{rho:.2e}",
            "–" if r["label_leaking"] is None else ("yes" if r["label_leaking"] else "no"),
            r["masking_checks"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    broken = table[table["autoattack_broken_by"].fillna("") != ""]
    if len(broken):
        lines += ["", "Which AutoAttack component broke how many test images (in cascade order):"]
        lines += [f"- **{r['model']}**: {r['autoattack_broken_by']}" for _, r in broken.iterrows()]
    if (table["autoattack_standard"] == False).any():  # noqa: E712 (None: not run)
        lines += [
            "",
            "AutoAttack ran its few-class variant (fewer than 4 classes: APGD-DLR and "
            "targeted-CE APGD replace APGD-T); not the standard protocol.",
        ]
    flagged = table[table["masking_flags"] != ""]
    if len(flagged):
        lines += ["", "Masking-check flags:"]
        lines += [f"- **{r['model']}**: {r['masking_flags']}" for _, r in flagged.iterrows()]
    lines += ["", *notes]
    return "\n".join(lines).rstrip() + "\n"


def plot_defense_curves(
    curves: pd.DataFrame, attack: str, path: str | Path, title: str | None = None
) -> Path:
    """White-box top-1 vs ε for one attack, one line per defense model (log ε axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    part = curves[(curves["attack"] == attack) & (curves["threat"] == "whitebox")]
    for model, df in part.groupby("model", sort=False):
        df = df.sort_values("eps")
        ax.plot(df["eps"], df["top1"], marker="o", markersize=3.5, label=model)
    ax.set_xscale("log")
    ax.set_xlabel("ε (L∞ distance in [0, 1] pixel space)")
    ax.set_ylabel("white-box top-1 accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or f"{attack}: white-box top-1 vs ε")
    ax.legend(fontsize=8)
    return _save_figure(fig, path)
