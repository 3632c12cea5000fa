"""Stage 'transfer': the transfer matrix, source x target x attack x eps, on the attack set.

Every model reads the 224x224 attack set (blackbox.native_size: resized inside the model to
its native size). Writes metrics/blackbox/transfer.json, plots/blackbox/transfer.csv,
one heatmap per attack in plots/blackbox/transfer/ and timings/transfer.json.
"""

from pathlib import Path

import common
from advpipe.config import get

HEATMAPS = Path("plots/blackbox/transfer")


def main() -> None:
    p = common.params()
    from advpipe.attacks.deepfool import deepfool
    from advpipe.attacks.registry import build_attack
    from advpipe.attacks.transfer import transfer_matrix, whitebox_flags
    from advpipe.blackbox_plots import transfer_heatmaps
    from advpipe.evaluation import Timer
    from advpipe.models.native_size import build_at_input_size
    from advpipe.reporting import write_json, write_rows_csv

    names = get(p, "blackbox.transfer.models")
    size = get(p, "data.image_size")
    images, labels, _ = common.attack_set()
    weights = {get(p, "model.name"): get(p, "model.weights_path")}
    for n in names:  # fail before any work if a model's weights cannot be had
        common.log(f"model {n}: {common.check_weights(n, weights.get(n))}")
    models = {n: build_at_input_size(n, size, native=get(p, "blackbox.native_size"),
                                     weights_path=weights.get(n), seed=get(p, "seed"))
              for n in names}
    df = {k: get(p, f"attacks.deepfool.{k}") for k in ("steps", "candidates", "overshoot",
                                                        "batch_size")}
    with Timer() as total:
        result = transfer_matrix(
            models, lambda a, m: build_attack(a, m, p), images, labels,
            attacks=get(p, "blackbox.transfer.attacks"), epsilons=get(p, "blackbox.transfer.epsilons"),
            batch_size=get(p, "blackbox.batch_size"),
            deepfool=lambda m, x, y: deepfool(m, x, y, keep_adversarial=True, progress=common.log,
                                              **df),
            progress=common.log)
    metrics = result.to_metrics()
    metrics["labels"] = get(p, "attacks.labels")
    metrics["native_size"] = get(p, "blackbox.native_size")
    write_json("metrics/blackbox/transfer.json", metrics)
    write_rows_csv("plots/blackbox/transfer.csv", result.rows())

    transfer_heatmaps(result, HEATMAPS, get(p, "blackbox.transfer.heatmap_epsilon"),
                      df["overshoot"])
    common.write_timing("transfer", {"seconds": round(total.seconds, 2),
                                "per_source": result.seconds, "n_images": len(images)})
    for a in result.attacks:
        for e in result.eps_keys(a):
            common.log(f"{a} eps {e}: mean transfer top-1 {result.mean_transfer(a, e):.3f}, "
                       f"fooling {result.mean_transfer(a, e, 'fooling_rate'):.3f}")
    flags = whitebox_flags(result)
    common.log("white-box <= transfer: " + ("passed" if not flags else "FLAGGED: " +
                                               "; ".join(flags)))


if __name__ == "__main__":
    common.run(main)
