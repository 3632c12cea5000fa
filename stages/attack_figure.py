"""Stage 'attack_figure': original | perturbation | adversarial for chosen images and eps."""

import sys

import numpy as np
import tensorflow as tf

import common
from advpipe.attacks.registry import build_attack
from advpipe.config import get
from advpipe.data.class_index import imagenet_classes
from advpipe.data.images import to_unit_float
from advpipe.reporting import adversarial_figure


def titles(logits: np.ndarray) -> list[str]:
    classes = imagenet_classes()
    probs = tf.nn.softmax(logits).numpy()
    return [f"{classes.short_name(int(k))} ({probs[i, k]:.0%})"
            for i, k in enumerate(probs.argmax(1))]


def main() -> None:
    p = common.params()
    name = get(p, "report.figure.attack")
    chosen = get(p, "report.figure.images")
    epsilons = get(p, "report.figure.epsilons")
    images, labels, _ = common.attack_set()
    bad = [i for i in chosen if i >= len(images)]
    if bad:
        sys.exit(f"error: report.figure.images {bad} out of range: the attack set has "
                 f"{len(images)} images")
    model = common.model(p)
    attack = build_attack(name, model, p)
    x = to_unit_float(images[chosen])
    prepared = attack.prepare(x, labels[chosen], index=np.asarray(chosen))
    adversarials = [attack.perturb(prepared, e).numpy() for e in epsilons]
    adv_titles = [titles(attack.forward(tf.constant(a)).numpy()) for a in adversarials]
    classes = imagenet_classes()
    clean_titles = [f"true: {classes.short_name(int(labels[i]))}\npredicted: {t}"
                    for i, t in zip(chosen, titles(prepared.clean_logits.numpy()))]
    path = adversarial_figure(x, adversarials, epsilons, clean_titles, adv_titles,
                              "plots/attacks/examples.png", name)
    common.log(f"wrote {path}")


if __name__ == "__main__":
    main()
