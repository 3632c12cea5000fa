"""Stage 'baseline': clean top-1/top-5 of the attacked model on the attack set."""

import common
from advpipe.config import get
from advpipe.inference import predict_logits
from advpipe.metrics import Timer, accuracy
from advpipe.reporting import write_json


def main() -> None:
    p = common.params()
    model = common.model(p)
    images, labels, _ = common.attack_set(p)
    common.log(f"baseline: {len(images)} images")
    with Timer() as t:
        logits = predict_logits(model, images, batch_size=get(p, "model.batch_size"))
    acc = accuracy(logits, labels)
    write_json(
        "metrics/baseline.json", {"model": get(p, "model.name"), "n_images": len(images), **acc}
    )
    common.write_timing(
        "baseline",
        {
            "seconds": round(t.seconds, 3),
            "images_per_second": round(len(images) / t.seconds, 3) if t.seconds else None,
        },
    )
    common.log(f"baseline: top-1 {acc['top1']:.4f}, top-5 {acc['top5']:.4f}")


if __name__ == "__main__":
    common.run(main)
