"""Stage 'attack@<name>': accuracy-vs-eps sweep of one attack (one-step or PGD), or
'attack@autoattack': the AutoAttack robust accuracy at each ε of attacks.autoattack.

Usage: python stages/attack.py {fgsm,fgm,rfgsm,step_ll,pgd,autoattack}
Writes metrics/attacks/<name>.json, plots/attacks/<name>.csv and timings/attack_<name>.json.
"""

import sys

import common
from advpipe.attacks.registry import ATTACKS
from advpipe.attacks.sweep import sweep
from advpipe.config import get
from advpipe.reporting import write_json, write_rows_csv
from wiring import attack_options, autoattack_options, build_attack

NAMES = [*ATTACKS, "autoattack"]
RESUME = "resume/attack_autoattack"


def main(name: str) -> None:
    if name not in NAMES:
        sys.exit(f"error: unknown attack '{name}'; choose one of {NAMES}")
    p = common.params()
    if name == "autoattack":
        return run_autoattack(p)
    model = common.model(p)
    images, labels, _ = common.attack_set(p)
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


def run_autoattack(p) -> None:
    from advpipe.attacks.autoattack import (
        autoattack_epsilons,
        resume_store,
        sanity_checks,
        square_warning,
    )

    model = common.model(p)
    images, labels, _ = common.attack_set(p)
    options = autoattack_options(p)
    batch = get(p, "model.batch_size")
    sanity = sanity_checks(model, images, labels, batch_size=batch)
    for warning in sanity["warnings"]:
        common.log(f"autoattack sanity check: {warning}")
    options["batch_size"] = batch
    store = resume_store(RESUME, get(p, "model.name"), model, images, labels, options)
    results = autoattack_epsilons(
        model,
        images,
        labels,
        get(p, "attacks.autoattack.epsilons"),
        store=store,
        progress=common.log,
        **options,
    )
    first = next(iter(results.values()))
    metrics = {
        "attack": "autoattack",
        "n_images": first.n_images,
        "version": get(p, "attacks.autoattack.version"),
        "standard": first.standard,
        "note": first.note,
        "norm": first.norm,
        "attacks": first.attacks,
        "clean": {"top1": first.to_dict()["clean_top1"]},
        "sanity": sanity,
        "eps": {},
    }
    for eps, r in results.items():
        d = r.to_dict()
        metrics["eps"][f"{eps:g}"] = {
            "top1": d["robust_top1"],
            "per_attack": d["per_attack"],
            "max_norm": d["max_norm"],
            "square_warning": square_warning(r),
        }
    write_json("metrics/attacks/autoattack.json", metrics)
    rows = [{"attack": "autoattack", "eps": 0.0, "top1": metrics["clean"]["top1"]}]
    rows += [
        {"attack": "autoattack", "eps": e, "top1": r.to_dict()["robust_top1"]}
        for e, r in results.items()
    ]
    write_rows_csv("plots/attacks/autoattack.csv", rows)
    common.write_timing(
        "attack@autoattack",
        {f"{e:g}": {a: round(s, 2) for a, s in r.seconds.items()} for e, r in results.items()},
    )
    store.clear()
    common.log(
        "autoattack: clean top-1 "
        f"{metrics['clean']['top1']:.3f}; "
        + ", ".join(f"eps {e}: robust {v['top1']:.3f}" for e, v in metrics["eps"].items())
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python stages/attack.py {{{','.join(NAMES)}}}")
    common.run(main, sys.argv[1])
