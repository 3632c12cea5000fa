"""Turning logits into figures: accuracy, rho_2, the masking checks, wall-clock seconds.

One place used by the baseline, the sweeps, the defenses and the transfer matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean per example: is the label among the ``k`` largest logits?"""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


@dataclass
class TopKCounter:
    """Running top-1 / top-5 accuracy over batches."""

    n: int = 0
    top1: int = 0
    top5: int = 0

    def update(self, logits, labels) -> None:
        logits = np.asarray(logits)
        self.n += len(labels)
        self.top1 += int(topk_hits(logits, labels, 1).sum())
        self.top5 += int(topk_hits(logits, labels, 5).sum())

    def as_dict(self) -> dict[str, float]:
        if self.n == 0:
            return {"top1": float("nan"), "top5": float("nan")}
        return {"top1": self.top1 / self.n, "top5": self.top5 / self.n}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    counter = TopKCounter()
    counter.update(logits, labels)
    return counter.as_dict()


@dataclass
class Timer:
    """Accumulates wall-clock seconds over ``with timer:`` blocks."""

    seconds: float = 0.0
    _start: float = field(default=0.0, repr=False)

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._start
        return False


def rho2(perturbation_l2, image_l2, success) -> float:
    """Robustness rho_2 (proposal eq. 14): mean of ||r||_2 / ||x||_2 over the successful examples.

    ``perturbation_l2``: ||x' - x||_2 per example; ``image_l2``: ||x||_2; ``success``: bool,
    the attack changed the prediction (the reference class is the model's prediction).
    NaN when no example succeeded.
    """
    r = np.asarray(perturbation_l2, dtype=np.float64)
    x = np.asarray(image_l2, dtype=np.float64)
    ok = np.asarray(success, dtype=bool)
    if not ok.any():
        return float("nan")
    return float(np.mean(r[ok] / np.maximum(x[ok], 1e-12)))


def masking_checks(
    whitebox: dict,
    transfer: dict | None,
    *,
    chance: float,
    margin: float = 0.1,
    iterative: str = "pgd",
) -> dict:
    """The gradient-masking checks of Carlini et al. (2019) for one model.

    ``whitebox`` / ``transfer``: ``{attack: {eps: top1}}`` on the same images.

    * ``iterative_beats_one_step``: at every ε, white-box top-1 under the iterative
      attack is no higher than under the best one-step attack;
    * ``whitebox_beats_transfer``: at every ε and attack, white-box top-1 is no higher
      than transfer top-1 from the source model (``None`` without transfer);
    * ``falls_towards_chance``: at the largest ε, white-box top-1 under the iterative
      attack is within ``margin`` of chance.

    A check that fails names the cells in ``flags``; a defense that fails one is
    flagged in the report, not hidden.
    """
    flags = []
    pgd = whitebox.get(iterative, {})
    one_step = {a: v for a, v in whitebox.items() if a != iterative}
    iterative_ok = True
    for eps, acc in pgd.items():
        best = min((v[eps] for v in one_step.values() if eps in v), default=None)
        if best is not None and acc > best:
            iterative_ok = False
            flags.append(f"{iterative} {acc:.3f} > best one-step {best:.3f} at eps {eps}")
    transfer_ok = None
    if transfer:
        transfer_ok = True
        for attack, per in whitebox.items():
            for eps, acc in per.items():
                t = transfer.get(attack, {}).get(eps)
                if t is not None and acc > t:
                    transfer_ok = False
                    flags.append(f"white-box {attack} {acc:.3f} > transfer {t:.3f} at eps {eps}")
    chance_ok = None
    if pgd:
        largest = max(pgd, key=float)
        chance_ok = pgd[largest] <= chance + margin
        if not chance_ok:
            flags.append(
                f"{iterative} top-1 {pgd[largest]:.3f} at the largest eps {largest} is "
                f"not within {margin} of chance ({chance:.3f})"
            )
    return {
        "iterative_beats_one_step": iterative_ok,
        "whitebox_beats_transfer": transfer_ok,
        "falls_towards_chance": chance_ok,
        "chance": chance,
        "flags": flags,
        "passed": bool(iterative_ok and transfer_ok is not False and chance_ok is not False),
    }
