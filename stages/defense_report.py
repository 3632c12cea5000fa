"""Stage 'defense_report': the final tables and plots over every defense model.

Writes tables/defense.md and tables/defense.csv (models as rows), one
accuracy-vs-eps plot per attack with one line per model
(plots/defense/<attack>_vs_eps.png) and metrics/defense/summary.json.
"""

import json
from pathlib import Path

import pandas as pd

import common
from advpipe.attacks.registry import ATTACKS
from advpipe.config import get
from advpipe.defenses.registry import DEFENSES
from advpipe.reporting import (
    atomic_write_text,
    defense_markdown,
    defense_table,
    plot_defense_curves,
    write_json,
)


def main() -> None:
    p = common.params()
    read = lambda path: json.loads(Path(path).read_text())  # noqa: E731
    evals = {n: read(f"metrics/defense/eval/{n}.json") for n in DEFENSES}
    trains = {n: read(f"metrics/defense/train/{n}.json") for n in DEFENSES}
    eps = get(p, "defense.evaluation.report_epsilon")
    if f"{eps:g}" not in evals["clean"]["epsilons"]:
        common.log(
            f"warning: defense.evaluation.report_epsilon {eps:g} is not in "
            "defense.evaluation.epsilons: the attack columns will be empty"
        )
    attacks = list(ATTACKS)
    table = defense_table(evals, trains, {n: e.label for n, e in DEFENSES.items()}, attacks, eps)
    smoke = get(p, "data.defense_set.source") == "samples" or int(table["n_train"].min()) < 100
    notes = [
        f"White-box: the attack crafted against the model itself; transfer: crafted on the "
        f"clean head. {attacks[-1]} is the iterative attack. ρ₂ (eq. 14) over the images "
        f"DeepFool fooled. Split: {get(p, 'defense.evaluation.split')}. AutoAttack: "
        f"robust accuracy under the {get(p, 'attacks.autoattack.version')} cascade; worst "
        "case: robust only if both AutoAttack and PGD fail on the image (the headline figure)."
    ]
    atomic_write_text(
        Path("tables/defense.md"), defense_markdown(table, attacks, eps, smoke, notes)
    )
    atomic_write_text(Path("tables/defense.csv"), table.to_csv(index=False))
    curves = pd.concat([pd.read_csv(f"plots/defense/eval/{n}.csv") for n in DEFENSES])
    for attack in attacks:
        plot_defense_curves(
            curves,
            attack,
            f"plots/defense/{attack}_vs_eps.png",
            title=f"{attack}: white-box top-1 vs ε (n = {evals['clean']['n_images']} test images)",
        )
    summary = {
        "smoke_run": smoke,
        "epsilon": eps,
        "models": {
            r["model"]: {
                k: r[k]
                for k in ["clean", *attacks, "autoattack", "worst_case", "rho2", "masking_checks"]
            }
            for _, r in table.iterrows()
        },
    }
    write_json("metrics/defense/summary.json", summary)
    common.log(Path("tables/defense.md").read_text())


if __name__ == "__main__":
    common.run(main)
