"""Stage 'attack_plots': top-1 and top-5 vs eps, one line per attack (PNG, log-scale eps).

The top-1 plot also shows AutoAttack's robust accuracy (attack@autoattack; no top-5)."""

import json

import pandas as pd

import common
from advpipe.attacks.registry import ATTACKS
from advpipe.config import get
from advpipe.reporting import plot_accuracy_vs_eps


def main() -> None:
    p = common.params()
    names = [*ATTACKS, "autoattack"]
    curves = {name: pd.read_csv(f"plots/attacks/{name}.csv") for name in names}
    n = {json.loads(open(f"metrics/attacks/{name}.json").read())["n_images"] for name in names}
    n_text = f"n = {n.pop()}" if len(n) == 1 else f"n = {sorted(n)}"
    for metric in ("top1", "top5"):
        title = (
            f"{metric.replace('top', 'top-')} accuracy vs ε — {get(p, 'model.name')}, "
            f"{n_text} images, {get(p, 'attacks.labels').replace('_', ' ')} labels"
        )
        shown = {k: v for k, v in curves.items() if metric in v.columns}
        path = plot_accuracy_vs_eps(shown, metric, f"plots/attacks/{metric}_vs_eps.png", title)
        common.log(f"wrote {path}")


if __name__ == "__main__":
    common.run(main)
