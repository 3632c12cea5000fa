"""Stage 'evaluate@<defense>': robustness of one defense model on the test split.

Usage: python stages/evaluate_defense.py {clean,kurakin_step_ll,...}
White-box attacks against the model itself, transfer from the clean head, DeepFool
(rho_2), AutoAttack (at defense.evaluation.autoattack_epsilons, default the report eps;
an interrupted run resumes per eps from resume/evaluate_<name>/), APGD-CE against PGD at
every eps (defense.evaluation.apgd_check) and the gradient-masking checks. Writes
metrics/defense/eval/<name>.json, plots/defense/eval/<name>.csv and
timings/evaluate_<name>.json.
"""

import sys

import common
from advpipe.attacks.registry import ATTACKS
from advpipe.config import get
from advpipe.defenses.registry import DEFENSES, model_path
from advpipe.reporting import write_json, write_rows_csv
from wiring import autoattack_options, build_attack, deepfool_options


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
    from advpipe.attacks.autoattack import (
        STANDARD,
        apgd_ce_correct,
        autoattack_epsilons,
        resume_store,
        sanity_checks,
    )

    batch = get(p, "defense.evaluation.batch_size")
    aa_eps = get(p, "defense.evaluation.autoattack_epsilons") or [
        get(p, "defense.evaluation.report_epsilon")
    ]
    aa_options = {**autoattack_options(p), "batch_size": batch}
    store = resume_store(f"resume/evaluate_{name}", name, model, images, labels, aa_options)
    run_autoattack = lambda m, x, y: autoattack_epsilons(  # noqa: E731
        m, x, y, aa_eps, store=store, progress=common.log, **aa_options
    )
    apgd_ce = None
    if get(p, "defense.evaluation.apgd_check"):
        settings = aa_options["settings"] if aa_options["version"] == "custom" else STANDARD
        apgd_ce = lambda m, x, y, e: apgd_ce_correct(  # noqa: E731
            m,
            x,
            y,
            e,
            settings=settings,
            batch_size=batch,
            seed=aa_options["seed"],
            progress=common.log,
        )
    out = evaluate_defense(
        model,
        images,
        labels,
        whitebox=whitebox,
        transfer=transfer,
        epsilons=get(p, "defense.evaluation.epsilons"),
        deepfool_options=deepfool_options(p),
        batch_size=batch,
        chance=1.0 / len(classes),
        margin=get(p, "defense.evaluation.chance_margin"),
        alpha=get(p, "defense.evaluation.alpha"),
        autoattack=run_autoattack,
        apgd_ce=apgd_ce,
        progress=common.log,
    )
    out["autoattack_sanity"] = sanity_checks(model, images, labels, batch_size=batch)
    seconds = out.pop("_seconds")
    out = {"model": name, "split": get(p, "defense.evaluation.split"), "classes": classes, **out}
    write_json(f"metrics/defense/eval/{name}.json", out)
    rows = [
        {"model": name, "threat": threat, "attack": attack, "eps": float(eps), "top1": acc}
        for threat in ("whitebox", "transfer")
        for attack, per in (out[threat] or {}).items()
        for eps, acc in per.items()
    ]
    rows += [
        {
            "model": name,
            "threat": "whitebox",
            "attack": "autoattack",
            "eps": float(eps),
            "top1": aa["robust_top1"],
        }
        for eps, aa in (out["autoattack"] or {}).items()
    ]
    write_rows_csv(f"plots/defense/eval/{name}.csv", rows)
    common.write_timing(f"evaluate@{name}", seconds)
    store.clear()
    m = out["masking"]
    for eps, aa in (out["autoattack"] or {}).items():
        common.log(
            f"{name}: AutoAttack at eps {eps}: robust {aa['robust_top1']:.3f}, worst case "
            f"with PGD {aa['worst_case_top1']:.3f} ("
            + ", ".join(f"{r['attack']} broke {r['broken']}" for r in aa["per_attack"])
            + ")"
        )
    common.log(
        f"{name}: clean {out['clean_top1']:.3f}; masking checks "
        f"{'passed' if m['passed'] else 'FAILED: ' + '; '.join(m['flags'])}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in DEFENSES:
        sys.exit(f"usage: python stages/evaluate_defense.py {{{','.join(DEFENSES)}}}")
    common.run(main, sys.argv[1])
