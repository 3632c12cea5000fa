"""Stage 'decision': a decision-based (label-only) attack under query budgets vs DeepFool.

Attacks the first blackbox.decision.n_images images of the attack set that the target
classifies correctly; DeepFool (white-box) runs on the same images. Writes
metrics/blackbox/decision.json, plots/blackbox/decision.csv,
plots/blackbox/l2_vs_queries.png and timings/decision.json.
"""

import numpy as np

import common
from advpipe.config import get


def main() -> None:
    p = common.params()
    from advpipe.attacks.decision import decision_attack, first_correct
    from advpipe.attacks.deepfool import deepfool
    from advpipe.blackbox_plots import l2_vs_queries
    from advpipe.reporting import write_json, write_rows_csv
    from wiring import deepfool_options

    name = get(p, "blackbox.decision.model")
    weights = get(p, "model.weights_path") if get(p, "model.name") == name else None
    where = common.file_model(p).describe() if name == "file" else None
    common.log(f"model {name}: {where or common.check_weights(name, weights)}")
    model = common.imagenet_model(p, name, weights_path=weights)
    images, labels, _ = common.attack_set()
    keep = first_correct(model, images, labels, get(p, "blackbox.decision.n_images"))
    images, labels = images[keep], labels[keep]
    attack = get(p, "blackbox.decision.attack")
    budgets = sorted(get(p, "blackbox.decision.budgets"))
    common.log(f"{attack} on {name}: {len(keep)} images, budgets {budgets}")
    result = decision_attack(
        model,
        images,
        labels,
        attack=attack,
        budgets=budgets,
        seed=get(p, "blackbox.decision.seed"),
        batch_size=get(p, "blackbox.decision.batch_size"),
        max_gradient_evals=get(p, "blackbox.decision.max_gradient_evals"),
        progress=common.log,
    )
    df = deepfool(model, images, labels, progress=common.log, **deepfool_options(p))
    ok = df.success
    df_median = float(np.median(df.perturbation_l2[ok])) if ok.any() else float("nan")
    final = result.at_budget(budgets[-1])
    both = ok & np.isfinite(final)
    threshold = get(p, "blackbox.decision.l2_threshold")
    per_budget = [result.summary(b, threshold) for b in budgets]
    metrics = {
        "attack": attack,
        "model": name,
        "n_images": int(len(keep)),
        "images": [int(i) for i in keep],
        "seed": get(p, "blackbox.decision.seed"),
        "queries_answered": result.queries,
        "target_calls": result.calls,
        "budgets": {
            str(s["queries"]): {k: v for k, v in s.items() if k != "queries"} for s in per_budget
        },
        "l2_threshold": threshold,
        "deepfool": {
            "success_rate": float(ok.mean()) if len(ok) else float("nan"),
            "success_rate_within_l2": float(np.mean(ok & (df.perturbation_l2 <= threshold)))
            if len(ok)
            else float("nan"),
            "l2_median": df_median,
        },
        # at the largest budget: how far the label-only attack is from the white-box one
        "l2_ratio_to_deepfool_median": (
            float(np.median(final[both] / df.perturbation_l2[both])) if both.any() else float("nan")
        ),
    }
    write_json("metrics/blackbox/decision.json", metrics)
    rows = [{"attack": attack, **s, "deepfool_l2_median": df_median} for s in per_budget]
    write_rows_csv("plots/blackbox/decision.csv", rows)
    l2_vs_queries(
        budgets,
        [s["l2_median"] for s in per_budget],
        [s["success_rate_within_l2"] for s in per_budget],
        df_median,
        "plots/blackbox/l2_vs_queries.png",
        attack,
        name,
        threshold,
    )
    common.write_timing(
        "decision",
        {
            "seconds": round(result.seconds, 2),
            "deepfool_seconds": round(df.seconds, 2),
            "queries": result.queries,
            "n_images": int(len(keep)),
        },
    )
    for s in per_budget:
        common.log(
            f"{s['queries']:>6} queries: success {s['success_rate']:.2f}, "
            f"within L2 {threshold:g} {s['success_rate_within_l2']:.2f}, "
            f"median L2 {s['l2_median']:.4f}"
        )
    common.log(f"deepfool: median L2 {df_median:.4f}; queries answered {result.queries}")


if __name__ == "__main__":
    common.run(main)
