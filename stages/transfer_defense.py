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
    from advpipe.defenses.model import load_info, load_model
    from advpipe.defenses.registry import model_path
    from advpipe.reporting import write_json

    names = get(p, "blackbox.transfer_defense.models")
    classes = [load_info(model_path(n))["classes"] for n in names]
    if any(c != classes[0] for c in classes):
        raise ValueError(
            f"the defense models {names} were trained on different classes; "
            "retrain them on the same defense set"
        )
    split = get(p, "defense.evaluation.split")
    images, labels, _, _ = common.defense_split(split, classes[0])
    models = {n: load_model(model_path(n)) for n in names}
    common.log(f"transfer among {names}: {len(images)} {split} images, {len(classes[0])} classes")
    result = common.transfer(
        "transfer_defense", p, models, images, labels, get(p, "defense.evaluation.batch_size")
    )
    write_json(
        "metrics/blackbox/transfer_defense.json",
        {
            "split": split,
            "classes": classes[0],
            **result.to_metrics(),
            "labels": get(p, "attacks.labels"),
        },
    )


if __name__ == "__main__":
    common.run(main)
