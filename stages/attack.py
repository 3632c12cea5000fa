"""Stage 'attack@<name>': accuracy-vs-eps sweep of one attack (one-step or PGD).

Usage: python stages/attack.py {fgsm,fgm,rfgsm,step_ll,pgd}
Writes metrics/attacks/<name>.json, plots/attacks/<name>.csv and timings/attack_<name>.json.
"""

import sys

import common
from advpipe.attacks.registry import ATTACKS
from advpipe.attacks.sweep import sweep
from advpipe.config import get
from advpipe.reporting import write_json, write_rows_csv
from wiring import attack_options, build_attack


def main(name: str) -> None:
    if name not in ATTACKS:
        sys.exit(f"error: unknown attack '{name}'; choose one of {list(ATTACKS)}")
    p = common.params()
    model = common.model(p)
    images, labels, _ = common.attack_set()
    attack = build_attack(name, model, p)
    result = sweep(
        attack,
        images,
        labels,
        get(p, f"attacks.{name}.epsilons"),
        batch_size=get(p, "model.batch_size"),
        progress=common.log,
    )
    metrics = result.to_metrics()
    common.write_timing(f"attack@{name}", result.timing())
    metrics["labels"] = get(p, "attacks.labels")
    metrics.update(attack_options(p, name))
    write_json(f"metrics/attacks/{name}.json", metrics)
    write_rows_csv(f"plots/attacks/{name}.csv", [{"attack": name, **row} for row in result.rows()])
    common.log(
        f"{name}: clean top-1 {result.clean['top1']:.3f}; "
        + ", ".join(f"eps {e:g}: {result.by_epsilon[e]['top1']:.3f}" for e in result.epsilons)
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python stages/attack.py {{{','.join(ATTACKS)}}}")
    common.run(main, sys.argv[1])
