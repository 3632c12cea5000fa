"""Stage 'attack_plots': top-1 and top-5 vs eps, one line per attack (PNG, log-scale eps)."""

import pandas as pd

import common
from advpipe.attacks.registry import ATTACKS
from advpipe.reporting import plot_accuracy_vs_eps


def main() -> None:
    curves = {name: pd.read_csv(f"plots/attacks/{name}.csv") for name in ATTACKS}
    for metric in ("top1", "top5"):
        path = plot_accuracy_vs_eps(curves, metric, f"plots/attacks/{metric}_vs_eps.png")
        common.log(f"wrote {path}")


if __name__ == "__main__":
    main()
