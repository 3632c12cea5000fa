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


def paired_test(a_correct, b_correct) -> dict:
    """Is model/attack A's accuracy higher than B's on the same images? Exact McNemar.

    ``a_correct``/``b_correct``: bool per image (the same images, in the same order).
    Only the discordant pairs carry information: ``a_only`` images A got right and B wrong,
    ``b_only`` the reverse. Under H0 (no difference) ``a_only ~ Binomial(a_only + b_only,
    1/2)``; ``p_value`` is the one-sided exact binomial tail P(X ≥ a_only) (H1: A is more
    accurate than B), 1.0 with no discordant pair.
    """
    from scipy.stats import binomtest

    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same images: {a.shape} vs {b.shape}")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    p = binomtest(a_only, n, 0.5, alternative="greater").pvalue if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": float(p)}


def _top1(correct) -> float:
    c = np.asarray(correct, dtype=bool)
    return float(c.mean()) if c.size else float("nan")


def masking_checks(
    whitebox: dict,
    transfer: dict | None,
    *,
    chance: float,
    margin: float = 0.1,
    alpha: float = 0.05,
    iterative: str = "pgd",
) -> dict:
    """The gradient-masking checks of Carlini et al. (2019) for one model, as paired tests.

    ``whitebox`` / ``transfer``: ``{attack: {eps: bool per image}}`` (correct after the
    attack) on the same images. A comparison fails only when the data say so: a one-sided
    exact McNemar test (:func:`paired_test`) with p < ``alpha``; each comparison's p-value
    is stored under ``tests``.

    * ``iterative_beats_one_step``: at every ε, white-box accuracy under the iterative
      attack is not significantly higher than under the best one-step attack;
    * ``whitebox_beats_transfer``: at every ε and attack, white-box accuracy is not
      significantly higher than transfer accuracy from the source model (``None`` without
      transfer);
    * ``falls_towards_chance``: at the largest ε, white-box accuracy under the iterative
      attack is within ``margin`` of chance (a level, not a comparison: no test).

    A check that fails names the cells in ``flags``; a defense that fails one is
    flagged in the report, not hidden.
    """
    flags: list[str] = []
    tests: list[dict] = []

    def compare(kind, a_name, a, b_name, b, eps) -> bool:
        t = paired_test(a, b)
        row = {
            "check": kind,
            "eps": eps,
            "a": a_name,
            "b": b_name,
            "a_top1": _top1(a),
            "b_top1": _top1(b),
            **t,
        }
        tests.append(row)
        if t["p_value"] < alpha:
            flags.append(
                f"{a_name} {row['a_top1']:.3f} > {b_name} {row['b_top1']:.3f} at eps {eps} "
                f"(paired p = {t['p_value']:.2g}, {t['a_only']} vs {t['b_only']} images)"
            )
            return False
        return True

    pgd = whitebox.get(iterative, {})
    one_step = {a: v for a, v in whitebox.items() if a != iterative}
    iterative_ok = True
    for eps, correct in pgd.items():
        candidates = [(a, v[eps]) for a, v in one_step.items() if eps in v]
        if not candidates:
            continue
        best_name, best = min(candidates, key=lambda av: _top1(av[1]))
        iterative_ok &= compare(
            "iterative_beats_one_step",
            iterative,
            correct,
            f"best one-step ({best_name})",
            best,
            eps,
        )
    transfer_ok = None
    if transfer:
        transfer_ok = True
        for attack, per in whitebox.items():
            for eps, correct in per.items():
                t = transfer.get(attack, {}).get(eps)
                if t is not None:
                    transfer_ok &= compare(
                        "whitebox_beats_transfer",
                        f"white-box {attack}",
                        correct,
                        f"transfer {attack}",
                        t,
                        eps,
                    )
    chance_ok = None
    if pgd:
        largest = max(pgd, key=float)
        top1 = _top1(pgd[largest])
        chance_ok = bool(top1 <= chance + margin)
        if not chance_ok:
            flags.append(
                f"{iterative} top-1 {top1:.3f} at the largest eps {largest} is "
                f"not within {margin} of chance ({chance:.3f})"
            )
    return {
        "iterative_beats_one_step": bool(iterative_ok),
        "whitebox_beats_transfer": None if transfer_ok is None else bool(transfer_ok),
        "falls_towards_chance": chance_ok,
        "chance": chance,
        "alpha": alpha,
        "tests": tests,
        "flags": flags,
        "passed": bool(iterative_ok and transfer_ok is not False and chance_ok is not False),
    }
