"""Stage 'transfer': the transfer matrix, source x target x attack x eps, on the attack set.

Every model reads the 224x224 attack set (blackbox.native_size: resized inside the model to
its native size). Writes metrics/blackbox/transfer.json, plots/blackbox/transfer.csv,
one heatmap per attack in plots/blackbox/transfer/ and timings/transfer.json.
"""

import common
from advpipe.config import get


def main() -> None:
    p = common.params()
    from advpipe.reporting import write_json

    names = get(p, "blackbox.transfer.models")
    images, labels, _ = common.attack_set()
    weights = {get(p, "model.name"): get(p, "model.weights_path")}
    for n in names:  # fail before any work if a model's weights cannot be had
        where = common.file_model(p).describe() if n == "file" else None
        common.log(f"model {n}: {where or common.check_weights(n, weights.get(n))}")
    models = {n: common.imagenet_model(p, n, weights_path=weights.get(n)) for n in names}
    result = common.transfer("transfer", p, models, images, labels, get(p, "blackbox.batch_size"))
    write_json(
        "metrics/blackbox/transfer.json",
        {
            **result.to_metrics(),
            "labels": get(p, "attacks.labels"),
            "native_size": get(p, "blackbox.native_size"),
        },
    )
    for a in result.attacks:
        for e in result.eps_keys(a):
            common.log(
                f"{a} eps {e}: mean transfer top-1 {result.mean_transfer(a, e):.3f}, "
                f"fooling {result.mean_transfer(a, e, 'fooling_rate'):.3f}"
            )


if __name__ == "__main__":
    common.run(main)
