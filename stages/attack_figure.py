"""Stage 'attack_figure': each chosen original once, then perturbation | adversarial per eps.

``report.figure.images``: positions in the attack set, or null for the first
``report.figure.n_images`` images the model classifies correctly.
"""

import common  # first: it quiets TensorFlow's start-up messages

# isort: split
import numpy as np
import tensorflow as tf

from advpipe.config import get
from advpipe.data.class_index import imagenet_classes
from advpipe.data.images import to_unit_float
from advpipe.inference import first_correct
from advpipe.reporting import adversarial_figure
from wiring import build_attack


def titles(logits: np.ndarray) -> list[str]:
    classes = imagenet_classes()
    z = logits - logits.max(1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return [
        f"{classes.short_name(int(k))} ({probs[i, k]:.0%})" for i, k in enumerate(probs.argmax(1))
    ]


def choose(p: dict, attack, images: np.ndarray, labels: np.ndarray) -> list[int]:
    chosen = get(p, "report.figure.images")
    if chosen is not None:
        bad = [i for i in chosen if i >= len(images)]
        if bad:
            raise ValueError(
                f"report.figure.images: {bad} out of range: the attack set has {len(images)} images"
            )
        return list(chosen)
    n = get(p, "report.figure.n_images")
    chosen = first_correct(attack.forward, images, labels, n, get(p, "model.batch_size"))
    if not chosen:
        raise ValueError(
            "report.figure.images is null (the first images the model gets "
            f"right) but the model gets none of the {len(images)} right: list "
            "image positions instead"
        )
    return chosen


def main() -> None:
    p = common.params()
    name = get(p, "report.figure.attack")
    epsilons = get(p, "report.figure.epsilons")
    images, labels, _ = common.attack_set(p)
    model = common.model(p)
    attack = build_attack(name, model, p)
    chosen = choose(p, attack, images, labels)
    x = to_unit_float(images[chosen])
    prepared = attack.prepare(x, labels[chosen], index=np.asarray(chosen))
    adversarials = [attack.perturb(prepared, e).numpy() for e in epsilons]
    adv_titles = [titles(attack.forward(tf.constant(a)).numpy()) for a in adversarials]
    classes = imagenet_classes()
    clean_titles = [
        f"#{i} true: {classes.short_name(int(labels[i]))}\npredicted: {t}"
        for i, t in zip(chosen, titles(prepared.clean_logits.numpy()))
    ]
    title = (
        f"{name} on {get(p, 'model.name')}: {len(chosen)} of the {len(images)} "
        f"attack-set images ({get(p, 'attacks.labels').replace('_', ' ')} labels)"
    )
    path = adversarial_figure(
        x,
        adversarials,
        epsilons,
        clean_titles,
        adv_titles,
        "plots/attacks/examples.png",
        name,
        title=title,
    )
    common.log(f"wrote {path} (images {chosen})")


if __name__ == "__main__":
    common.run(main)
