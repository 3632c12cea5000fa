"""Stage 'deepfool': our compiled DeepFool on the attack set -> success, accuracy, rho_2."""

import common
from advpipe.attacks import deepfool
from advpipe.reporting import write_json
from wiring import deepfool_options


def main() -> None:
    p = common.params()
    model = common.model(p)
    images, labels, _ = common.attack_set(p)
    result = deepfool(model, images, labels, progress=common.log, **deepfool_options(p))
    metrics = result.to_metrics()
    common.write_timing("deepfool", metrics.pop("timing", None) or {"seconds": result.seconds})
    write_json("metrics/attacks/deepfool.json", metrics)
    common.log(
        f"deepfool: success {metrics['success_rate']:.3f} "
        f"(on correct: {metrics['success_rate_on_correct']:.3f}), "
        f"rho2 {metrics['rho2']:.5f}, median L2 {metrics['l2_median']:.4f}"
    )


if __name__ == "__main__":
    common.run(main)
