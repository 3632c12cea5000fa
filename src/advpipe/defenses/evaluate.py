"""Robustness of one defense model, measured honestly (Carlini et al. 2019).

On the same test images for every attack, ε and model:

* clean top-1;
* **white-box** top-1 under every ε-attack (one-step and PGD), the examples crafted
  against this model itself;
* **transfer** top-1: the same attacks crafted on a source model (the clean head)
  and evaluated on this one;
* DeepFool success and ρ₂ (eq. 14) against this model;
* the **gradient-masking checks** of :func:`advpipe.metrics.masking_checks`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..inference import iterate_batches
from ..metrics import Timer, TopKCounter, masking_checks


def _eps_key(e: float) -> str:
    return f"{e:g}"


def attack_accuracies(
    attacks: Mapping[str, object],
    target,
    images,
    labels,
    epsilons: Sequence[float],
    batch_size: int,
    progress: Callable[[str], None],
    tag: str,
) -> tuple[dict, float]:
    """Top-1 of ``target`` on examples from each attack (crafted on the attack's own model).

    Returns ``({attack: {eps: top1}}, clean top-1 of the attacks' source model)``; the
    attack's model is ``target`` for white-box, another model for transfer.
    """
    from ..inference import compiled_forward

    forward = compiled_forward(target)
    counters = {name: {e: TopKCounter() for e in epsilons} for name in attacks}
    source_clean = TopKCounter()
    timer = Timer()
    for start, x, y in iterate_batches(images, labels, batch_size):
        with timer:
            index = np.arange(start, start + len(x))
            for j, (name, attack) in enumerate(attacks.items()):
                prepared = attack.prepare(x, y, index=index)
                if j == 0:
                    source_clean.update(prepared.clean_logits.numpy(), y)
                for e in epsilons:
                    counters[name][e].update(forward(attack.perturb(prepared, e)).numpy(), y)
        progress(
            f"[{tag}] {start + len(x)}/{len(images)} images, {len(attacks)} attacks x "
            f"{len(epsilons)} eps, {timer.seconds:.0f} s"
        )
    return (
        {
            name: {_eps_key(e): c.as_dict()["top1"] for e, c in per.items()}
            for name, per in counters.items()
        },
        source_clean.as_dict()["top1"],
    )


def evaluate_defense(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    whitebox: Mapping[str, object],
    transfer: Mapping[str, object] | None,
    epsilons: Sequence[float],
    deepfool_options: Mapping,
    batch_size: int = 32,
    chance: float,
    margin: float,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Every measurement above for ``model`` on ``(images, labels)`` (labels: its class ids).

    ``whitebox``: attacks built on ``model``; ``transfer``: the same attacks built on the
    source model (``None`` when ``model`` is the source). Returns nested, JSON-ready metrics
    and a timing dict under ``"_seconds"``.
    """
    from ..attacks.deepfool import deepfool

    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    epsilons = sorted(float(e) for e in epsilons)
    seconds = {}
    with Timer() as t:
        wb, clean = attack_accuracies(
            whitebox, model, images, labels, epsilons, batch_size, say, "white-box"
        )
    seconds["whitebox"] = t.seconds
    out: dict = {
        "n_images": int(len(images)),
        "clean_top1": clean,
        "epsilons": [_eps_key(e) for e in epsilons],
        "whitebox": wb,
    }
    if transfer:
        with Timer() as t:
            out["transfer"], out["transfer_source_clean_top1"] = attack_accuracies(
                transfer, model, images, labels, epsilons, batch_size, say, "transfer"
            )
        seconds["transfer"] = t.seconds
    else:
        out["transfer"] = None
    with Timer() as t:
        df = deepfool(model, images, labels, progress=say, **deepfool_options).to_metrics()
    seconds["deepfool"] = t.seconds
    out["deepfool"] = {
        k: df[k]
        for k in (
            "success_rate",
            "success_rate_on_correct",
            "n_correct",
            "rho2",
            "l2_median",
            "l2_mean",
        )
    }
    out["deepfool"]["top1_after"] = df["adversarial"]["top1"]
    out["masking"] = masking_checks(out["whitebox"], out["transfer"], chance=chance, margin=margin)
    out["_seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return out
