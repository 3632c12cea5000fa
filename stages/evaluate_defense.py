"""Stage 'evaluate@<defense>': robustness of one defense model on the test split.

Usage: python stages/evaluate_defense.py {clean,kurakin_step_ll,...}
White-box attacks against the model itself, transfer from the clean head, DeepFool
(rho_2) and the gradient-masking checks. Writes metrics/defense/eval/<name>.json,
plots/defense/eval/<name>.csv and timings/evaluate_<name>.json.
"""

import sys

import common
from advpipe.attacks.registry import ATTACKS
from advpipe.config import get
from advpipe.defenses.registry import DEFENSES, model_path
from advpipe.reporting import write_json, write_rows_csv
from wiring import build_attack, deepfool_options


def main(name: str) -> None:
    p = common.params()
    from advpipe.defenses.evaluate import evaluate_defense
    from advpipe.defenses.model import load_info, load_model

    classes = load_info(model_path(name))["classes"]
    images, labels, _, _ = common.defense_split(get(p, "defense.evaluation.split"), classes)
    model = load_model(model_path(name))
    whitebox = {a: build_attack(a, model, p) for a in ATTACKS}
    transfer = None
    if name != "clean":
        source = load_model(model_path("clean"))
        transfer = {a: build_attack(a, source, p) for a in ATTACKS}
    common.log(f"evaluate {name}: {len(images)} images, {len(classes)} classes")
    out = evaluate_defense(
        model,
        images,
        labels,
        whitebox=whitebox,
        transfer=transfer,
        epsilons=get(p, "defense.evaluation.epsilons"),
        deepfool_options=deepfool_options(p),
        batch_size=get(p, "defense.evaluation.batch_size"),
        chance=1.0 / len(classes),
        margin=get(p, "defense.evaluation.chance_margin"),
        progress=common.log,
    )
    seconds = out.pop("_seconds")
    out = {"model": name, "split": get(p, "defense.evaluation.split"), "classes": classes, **out}
    write_json(f"metrics/defense/eval/{name}.json", out)
    rows = [
        {"model": name, "threat": threat, "attack": attack, "eps": float(eps), "top1": acc}
        for threat in ("whitebox", "transfer")
        for attack, per in (out[threat] or {}).items()
        for eps, acc in per.items()
    ]
    write_rows_csv(f"plots/defense/eval/{name}.csv", rows)
    common.write_timing(f"evaluate@{name}", seconds)
    m = out["masking"]
    common.log(
        f"{name}: clean {out['clean_top1']:.3f}; masking checks "
        f"{'passed' if m['passed'] else 'FAILED: ' + '; '.join(m['flags'])}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in DEFENSES:
        sys.exit(f"usage: python stages/evaluate_defense.py {{{','.join(DEFENSES)}}}")
    common.run(main, sys.argv[1])
