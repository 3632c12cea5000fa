"""Epsilon sweeps: top-1/top-5 accuracy of a model under a one-step attack.

Streams the image set in batches: for each batch, one :meth:`prepare` (the
gradient, for attacks that can reuse it) and, per epsilon, one perturbation and
one forward pass. Only counters are kept, so memory stays at one batch whatever
the number of images.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..inference import iterate_batches
from ..metrics import Timer, TopKCounter
from .base import Attack


@dataclass
class SweepResult:
    attack: str
    epsilons: list[float]
    clean: dict[str, float]
    by_epsilon: dict[float, dict[str, float]]
    n_images: int
    seconds: float

    def to_metrics(self) -> dict:
        """Nested, JSON-ready metrics (what the attack stages write); no timing."""
        return {
            "attack": self.attack,
            "n_images": self.n_images,
            "clean": self.clean,
            "eps": {f"{e:g}": self.by_epsilon[e] for e in self.epsilons},
        }

    def timing(self) -> dict:
        """Wall-clock figures (not metrics: they change on every run)."""
        per_image = self.seconds / self.n_images if self.n_images else float("nan")
        return {
            "seconds": round(self.seconds, 3),
            "n_images": self.n_images,
            "n_epsilons": len(self.epsilons),
            "seconds_per_image": round(per_image, 5),
            "images_per_second": round(1.0 / per_image, 3) if per_image else None,
        }

    def rows(self) -> list[dict]:
        """Plot rows ``{eps, top1, top5}``, clean accuracy first at eps = 0."""
        rows = [{"eps": 0.0, **self.clean}]
        rows += [{"eps": e, **self.by_epsilon[e]} for e in self.epsilons]
        return rows


def sweep(
    attack: Attack,
    images: np.ndarray,
    labels: np.ndarray,
    epsilons: Sequence[float],
    batch_size: int = 32,
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """Accuracy of ``attack.model`` on adversarial versions of ``images`` for every epsilon.

    ``images``: uint8 (N, H, W, 3) or float [0, 1]; ``labels``: true class indices.
    """
    from ..runtime import require_float32

    require_float32(attack.model, "attacks")
    epsilons = sorted(float(e) for e in epsilons)
    clean = TopKCounter()
    adv = {e: TopKCounter() for e in epsilons}
    timer = Timer()
    report = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    n = len(images)
    if n:  # trace the compiled functions once, outside the timed region
        _, x0, y0 = next(iterate_batches(images[:1], labels[:1], 1))
        attack.forward(attack.perturb(attack.prepare(x0, y0, index=[0]), epsilons[0]))
    for start, x, y in iterate_batches(images, labels, batch_size):
        with timer:
            prepared = attack.prepare(x, y, index=np.arange(start, start + len(x)))
            clean.update(prepared.clean_logits.numpy(), y)
            for e in epsilons:
                adv[e].update(attack.forward(attack.perturb(prepared, e)).numpy(), y)
        done = start + len(x)
        report(
            f"[{attack.name}] {done}/{n} images, {len(epsilons)} eps, "
            f"{done / timer.seconds:.2f} img/s"
        )
    return SweepResult(
        attack.name,
        epsilons,
        clean.as_dict(),
        {e: c.as_dict() for e, c in adv.items()},
        n,
        timer.seconds,
    )
