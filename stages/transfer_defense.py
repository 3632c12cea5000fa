"""Stage 'transfer_defense': the transfer matrix among the defense models, on their test split.

The defense models (clean head, adversarially trained heads) share a label space (the
defense classes) and their own test split, so they get their own matrix: sources and
targets from blackbox.transfer_defense.models, attacks, epsilons and heatmap epsilon from
blackbox.transfer. Writes metrics/blackbox/transfer_defense.json,
plots/blackbox/transfer_defense.csv, plots/blackbox/transfer_defense/ (heatmaps) and
timings/transfer_defense.json.
"""

import common
from advpipe.config import get


def main() -> None:
    p = common.params()
    from advpipe.attacks.deepfool import deepfool
    from advpipe.attacks.registry import build_attack
    from advpipe.attacks.transfer import transfer_matrix, whitebox_flags
    from advpipe.blackbox_plots import transfer_heatmaps
    from advpipe.defenses.model import load_info, load_model
    from advpipe.defenses.registry import model_path
    from advpipe.evaluation import Timer
    from advpipe.reporting import write_json, write_rows_csv

    names = get(p, "blackbox.transfer_defense.models")
    classes = [load_info(model_path(n))["classes"] for n in names]
    if any(c != classes[0] for c in classes):
        raise ValueError(f"the defense models {names} were trained on different classes; "
                         "retrain them on the same defense set")
    split = get(p, "defense.evaluation.split")
    images, labels, _, _ = common.defense_split(split, classes[0])
    models = {n: load_model(model_path(n)) for n in names}
    df = {k: get(p, f"attacks.deepfool.{k}") for k in ("steps", "candidates", "overshoot",
                                                        "batch_size")}
    common.log(f"transfer among {names}: {len(images)} {split} images, {len(classes[0])} classes")
    with Timer() as total:
        result = transfer_matrix(
            models, lambda a, m: build_attack(a, m, p), images, labels,
            attacks=get(p, "blackbox.transfer.attacks"), epsilons=get(p, "blackbox.transfer.epsilons"),
            batch_size=get(p, "defense.evaluation.batch_size"),
            deepfool=lambda m, x, y: deepfool(m, x, y, keep_adversarial=True, progress=common.log,
                                              **df),
            progress=common.log)
    metrics = {"split": split, "classes": classes[0], **result.to_metrics(),
               "labels": get(p, "attacks.labels")}
    write_json("metrics/blackbox/transfer_defense.json", metrics)
    write_rows_csv("plots/blackbox/transfer_defense.csv", result.rows())
    transfer_heatmaps(result, "plots/blackbox/transfer_defense",
                      get(p, "blackbox.transfer.heatmap_epsilon"), df["overshoot"])
    common.write_timing("transfer_defense", {"seconds": round(total.seconds, 2),
                                        "per_source": result.seconds, "n_images": len(images)})
    flags = whitebox_flags(result)
    common.log("white-box <= transfer: " + ("passed" if not flags else "FLAGGED: " +
                                               "; ".join(flags)))


if __name__ == "__main__":
    common.run(main)
