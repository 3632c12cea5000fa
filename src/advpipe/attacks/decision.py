"""Decision-based attacks: the attacker sees only the target's top-1 label.

Foolbox's HopSkipJump (Chen et al. 2020) or Boundary attack (Brendel et al. 2018)
runs against :class:`LabelOnlyModel`, a Foolbox model that

* answers every query with the **top-1 label only** (one-hot, so Foolbox's
  misclassification criterion, an argmax, works unchanged) — never logits;
* **raises** :class:`GradientRequestError` if anything asks for a gradient through it;
* **counts** every query (one image = one query; Foolbox has no counter) and refuses,
  with :class:`QueryBudgetExhausted`, a query beyond the budget;
* keeps, per image, the smallest-L2 adversarial it has been asked about so far, and
  after every query the best distance so far: the attack's result at any query budget
  (the bookkeeping Foolbox 2's ``Adversarial`` object did).

One run up to the largest budget gives the success rate and the median ‖r‖₂ at
every budget. Images are attacked in batches; HopSkipJump and Boundary query the
whole batch at every call, so each image's query count is the batch's call count.
Randomness (Foolbox draws with TensorFlow's global generator) is seeded per batch
from ``(seed, first image index)``, so results do not depend on earlier batches.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ..inference import compiled_forward, iterate_batches
from ..metrics import Timer
from .registry import DECISION_ATTACKS


class GradientRequestError(RuntimeError):
    """Something asked a label-only model for a gradient."""


class QueryBudgetExhausted(Exception):
    """A query beyond the budget was refused (stops the attack)."""


@tf.custom_gradient
def _label_only(x, one_hot):
    """``one_hot`` as an output of ``x`` whose gradient raises (the attack must not ask)."""

    def grad(dy):
        raise GradientRequestError(
            "a decision-based attack asked the label-only model for a gradient"
        )

    return tf.identity(one_hot), grad


def _foolbox_model_base():
    import foolbox as fb

    return fb.models.Model


class LabelOnlyModel(_foolbox_model_base()):
    """A Foolbox model over a Keras model that returns one-hot top-1 labels and counts queries.

    ``max_queries``: per-image budget (``None``: unlimited). After :meth:`track`, every
    query must be a full batch of the tracked images (row *i* is image *i*).
    """

    def __init__(self, model, *, max_queries: int | None = None):
        self._forward = compiled_forward(model)
        self.num_classes = int(model.output_shape[-1])
        self.max_queries = max_queries
        self.queries = 0  # images (rows) the target was asked about
        self.calls = 0
        self._originals = None

    @property
    def bounds(self):
        import foolbox as fb

        return fb.types.Bounds(0.0, 1.0)

    def track(self, originals: np.ndarray, labels: np.ndarray) -> None:
        """Start counting per image and keeping the best adversarial of each."""
        self._originals = np.asarray(originals, np.float32).reshape(len(originals), -1)
        self._labels = np.asarray(labels, np.int64)
        n = len(originals)
        self.per_image = 0  # queries each image has had
        self.best_l2 = np.full(n, np.inf)
        self.best = np.array(originals, np.float32, copy=True)
        self.history: list[np.ndarray] = []  # best_l2 after each query per image

    def __call__(self, inputs):
        import eagerpy as ep

        x, restore = ep.astensor_(inputs)
        raw = x.raw
        n = int(raw.shape[0])
        if self._originals is not None and n != len(self._originals):
            raise ValueError(
                f"label-only model tracks {len(self._originals)} images, got a query of {n}"
            )
        if self.max_queries is not None and self._per_image_after(n) > self.max_queries:
            raise QueryBudgetExhausted(f"query budget {self.max_queries} reached")
        labels = tf.argmax(self._forward(tf.convert_to_tensor(raw, tf.float32)), axis=1)
        self.queries += n
        self.calls += 1
        if self._originals is not None:
            self.per_image += 1
            self._record(np.asarray(raw, np.float32), labels.numpy())
        one_hot = tf.one_hot(labels, self.num_classes, dtype=tf.float32)
        return restore(ep.astensor(_label_only(raw, one_hot)))

    def _per_image_after(self, n: int) -> int:
        if self._originals is not None:
            return self.per_image + 1
        return self.queries + n

    def _record(self, x: np.ndarray, labels: np.ndarray) -> None:
        adv = labels != self._labels
        l2 = np.linalg.norm(x.reshape(len(x), -1) - self._originals, axis=1)
        better = adv & (l2 < self.best_l2)
        self.best_l2[better] = l2[better]
        self.best[better] = x[better]
        self.history.append(self.best_l2.copy())


def make_decision_attack(name: str, *, max_gradient_evals: int = 100):
    """Foolbox's decision-based attack ``name`` with effectively unlimited steps (the budget
    stops it); the starting point comes from Foolbox's blended-noise search (label-only)."""
    import foolbox as fb

    init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=50)
    if name == "hopskipjump":
        return fb.attacks.HopSkipJumpAttack(
            init_attack=init,
            steps=100000,
            initial_gradient_eval_steps=min(100, max_gradient_evals),
            max_gradient_eval_steps=max_gradient_evals,
        )
    if name == "boundary":
        return fb.attacks.BoundaryAttack(init_attack=init, steps=10**9)
    raise ValueError(f"unknown decision-based attack '{name}'; choose one of {DECISION_ATTACKS}")


@dataclass
class DecisionResult:
    attack: str
    budgets: list[int]
    history: np.ndarray  # [max budget, N]: best ||r||_2 after q queries (inf: none yet)
    queries: int  # queries the label-only model answered, all images
    calls: int
    best: np.ndarray  # the best adversarials at the largest budget
    seconds: float

    def at_budget(self, budget: int) -> np.ndarray:
        """Best ||r||_2 of each image within ``budget`` queries (inf: no adversarial yet)."""
        n = self.history.shape[1]
        if budget <= 0 or not len(self.history):
            return np.full(n, np.inf)
        return self.history[min(budget, len(self.history)) - 1]

    def summary(self, budget: int, l2_threshold: float | None = None) -> dict:
        """Success rate (an adversarial found), median ||r||_2 over the successes and over all
        images (inf for a failure) within ``budget`` queries; with ``l2_threshold``, also the
        share of images with an adversarial within that distance."""
        l2 = self.at_budget(budget)
        ok = np.isfinite(l2)
        mean = lambda a: float(a.mean()) if len(a) else float("nan")  # noqa: E731
        out = {
            "queries": int(budget),
            "success_rate": mean(ok),
            "l2_median": float(np.median(l2[ok])) if ok.any() else float("nan"),
            "l2_median_all": float(np.median(l2)) if len(l2) else float("nan"),
        }
        if l2_threshold is not None:
            out["success_rate_within_l2"] = mean(l2 <= l2_threshold)
        return out


def decision_attack(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    attack: str = "hopskipjump",
    budgets: Sequence[int],
    seed: int = 0,
    batch_size: int = 10,
    max_gradient_evals: int = 100,
    progress: Callable[[str], None] | None = None,
) -> DecisionResult:
    """Run ``attack`` label-only against ``model`` up to ``max(budgets)`` queries per image.

    ``labels``: the labels whose change counts as success (the true labels of images
    the model classifies correctly).
    """
    import foolbox as fb

    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    budgets = sorted(int(b) for b in budgets)
    budget = budgets[-1]
    fb_attack = make_decision_attack(attack, max_gradient_evals=max_gradient_evals)
    histories, bests = [], []
    queries = calls = 0
    timer = Timer()
    for start, x, y in iterate_batches(images, labels, batch_size):
        target = LabelOnlyModel(model, max_queries=budget)
        target.track(x, y)
        with timer:
            tf.random.set_seed(int(seed) * 1_000_003 + start)
            try:
                fb_attack.run(
                    target, tf.constant(x), fb.criteria.Misclassification(tf.constant(y, tf.int64))
                )
            except QueryBudgetExhausted:
                pass
            except ValueError as exc:  # the starting-point search failed for some image
                if "init_attack failed" not in str(exc):
                    raise
                say(f"[{attack}] {exc}; those images count as failures")
        hist = np.array(target.history) if target.history else np.zeros((0, len(x)))
        if len(hist) < budget:  # the attack stopped early: its best stays its best
            last = hist[-1] if len(hist) else np.full(len(x), np.inf)
            hist = np.concatenate([hist, np.repeat(last[None], budget - len(hist), 0)])
        histories.append(hist)
        bests.append(target.best)
        queries += target.queries
        calls += target.calls
        done = start + len(x)
        say(
            f"[{attack}] {done}/{len(images)} images, {target.per_image} queries each, "
            f"{timer.seconds:.0f} s"
        )
    history = np.concatenate(histories, axis=1) if histories else np.zeros((budget, 0))
    best = np.concatenate(bests) if bests else np.zeros((0,), np.float32)
    return DecisionResult(attack, budgets, history, queries, calls, best, timer.seconds)


def first_correct(
    model, images: np.ndarray, labels: np.ndarray, n: int, batch_size: int = 32
) -> np.ndarray:
    """Indices of the first ``n`` images ``model`` classifies correctly (attack-set order)."""
    forward = compiled_forward(model)
    keep = []
    for start, x, y in iterate_batches(images, labels, batch_size):
        pred = forward(tf.constant(x)).numpy().argmax(1)
        keep += [start + i for i in np.flatnonzero(pred == y)]
        if len(keep) >= n:
            break
    return np.asarray(keep[:n], dtype=np.int64)
