"""APGD, Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum and a step-size schedule
that needs no tuning.

F. Croce and M. Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690, Algorithm 1,
with the details of the authors' ``autoattack/autopgd_base.py``:

* start at a random point of the ε-ball (:func:`.bounded.random_start`), step size η = 2ε;
* z = Π(x_k + η·s(∇f(x_k))), ``s`` the sign (L∞) or the L2-normalised gradient, and
  x_{k+1} = Π(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1})), α = 0.75 (α = 1 at the first
  step: no momentum), Π the projection onto the ε-ball and [0, 1];
* at the checkpoints (:func:`checkpoints`), for each image, η is halved and the iterate
  restarts from the best point found when (:func:`halve_step`) the loss increased in at
  most a fraction ρ of the steps since the last checkpoint (condition 1; ``≤`` as in the
  authors' code, the paper writes ``<``), or η was not halved at the previous checkpoint
  and the best loss has not changed since (condition 2);
* ``restarts`` random starts, each on the images still robust; the targeted losses run
  once per target (the k-th highest non-true clean logit, k = 1..``n_target_classes``),
  each target run on the images still robust.

One deviation: the first window of condition 1 compares the first iterate's loss with the
loss at the starting point, as in the paper (the authors' code compares it with an
unfilled row of zeros, an indexing artefact).

Success is ``argmax(logits) ≠ y`` for every loss (as AutoAttack counts the targeted runs).
The state (iterate, previous iterate, best point, its gradient, best loss, step size) is
per image, so fooled images leave the working batch between iterations (per-image early
exit, see :mod:`.bounded`); the returned example of a fooled image is its first
misclassified iterate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ..inference import compiled_forward, image_spec
from ..runtime import compiled
from ..sharding import sharded
from .bounded import (
    AttackResult,
    BoundedAttack,
    image_seeds,
    normalize,
    project,
    random_start,
)
from .losses import TARGETED, check_loss, targeted_form

LABELS = tf.TensorSpec([None], tf.int64)
SEEDS = tf.TensorSpec([None, 2], tf.int64)
SCALAR = tf.TensorSpec([], tf.float32)
PER_IMAGE = tf.TensorSpec([None], tf.float32)
MASK = tf.TensorSpec([None], tf.bool)


def checkpoints(steps: int) -> list[int]:
    """The iteration counts after which the step size is checked (0 excluded).

    The windows between checkpoints are ``max(int(0.22·steps), 1)`` iterations long at
    first, then shrink by ``max(int(0.03·steps), 1)`` down to ``max(int(0.06·steps), 1)``
    (the authors' integer form of p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03,
    0.06)). ``checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]``.
    """
    window = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    out, at = [], window
    while at <= steps:
        out.append(at)
        window = max(window - shrink, shortest)
        at += window
    return out


def halve_step(
    window, *, best, best_at_last_check, reduced_at_last_check, rho: float = 0.75
) -> np.ndarray:
    """Which images halve their step size (and restart from their best point) at a checkpoint.

    ``window``: ``[batch, k + 1]`` (or ``[k + 1]``) losses, the one at the previous
    checkpoint (the starting point for the first) then the ``k`` iterates since;
    ``best``: the best loss now; ``best_at_last_check`` and ``reduced_at_last_check``: the
    best loss and this decision at the previous checkpoint (``True`` before the first, so
    condition 2 cannot fire there). Condition 1: at most ``rho·k`` of the ``k`` steps
    increased the loss; condition 2: not halved last time and the best loss unchanged.
    """
    window = np.asarray(window)
    k = window.shape[-1] - 1
    increases = np.sum(window[..., 1:] > window[..., :-1], axis=-1)
    oscillating = increases <= rho * k
    stalled = ~np.asarray(reduced_at_last_check, bool) & (
        np.asarray(best_at_last_check) >= np.asarray(best)
    )
    return oscillating | stalled


def target_classes(logits, y, count: int) -> np.ndarray:
    """``[n, count]``: column k−1 holds the class of the k-th highest non-true logit."""
    masked = np.array(logits, np.float64)
    masked[np.arange(len(masked)), np.asarray(y)] = -np.inf
    return np.argsort(-masked, axis=1, kind="stable")[:, :count].astype(np.int64)


def _where_image(mask, a, b):
    """``a`` for the images where ``mask`` ([batch] bool) holds, ``b`` elsewhere."""
    return tf.where(tf.reshape(mask, [-1] + [1] * (a.shape.rank - 1)), a, b)


@dataclass
class _RunState:
    """One run's per-image state; row i belongs to image ``pos[i]`` of the batch."""

    pos: np.ndarray  # positions in the batch
    x0: tf.Tensor
    y: tf.Tensor
    target: tf.Tensor
    x: tf.Tensor
    x_prev: tf.Tensor
    grad: tf.Tensor
    x_best: tf.Tensor
    grad_best: tf.Tensor
    loss_best: np.ndarray
    step: np.ndarray
    reset: np.ndarray
    history: np.ndarray  # [batch, steps + 1] losses, the starting point first
    best_at_last_check: np.ndarray
    reduced_at_last_check: np.ndarray

    def keep(self, rows: np.ndarray) -> _RunState:
        """The state of the images ``rows`` only (the early-exit gather)."""
        idx = tf.constant(rows, tf.int64)
        return _RunState(
            **{
                name: (tf.gather(value, idx) if isinstance(value, tf.Tensor) else value[rows])
                for name, value in vars(self).items()
            }
        )


class APGD(BoundedAttack):
    """APGD with the CE, DLR or targeted losses (:mod:`.losses`), L∞ or L2.

    ``steps`` iterations per run; ``restarts`` random starts per target (per run for the
    untargeted losses); ``n_target_classes`` targets for ``ce_targeted``/``dlr_targeted``
    (capped at classes − 1); ``rho`` the checkpoint threshold; ``alpha`` the momentum
    weight; ``early_exit=False`` keeps every image in every iteration of every run (same
    results, for testing).

    :meth:`run` returns ``queries`` = gradient evaluations per image (the start point and
    each step, up to the first misclassified iterate) and ``extra``: ``loss`` (the best
    loss of the image's last run, up to its fooling iterate; at the clean image for clean
    misclassifications), ``step_size`` (the step size then), ``run`` and ``iteration``
    (where the image was first misclassified, 0 = the random start; −1: never or clean),
    ``target`` (the target class of the fooling run, −1 for untargeted losses),
    ``clean_correct`` and ``checkpoints``.
    """

    name = "apgd"

    def __init__(
        self,
        model,
        *,
        norm: str = "linf",
        loss: str = "ce",
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int = 9,
        rho: float = 0.75,
        alpha: float = 0.75,
        seed: int = 0,
        early_exit: bool = True,
    ):
        super().__init__(model, norm=norm, seed=seed)
        self.num_classes = int(model.output_shape[-1])
        self.loss = check_loss(loss, self.num_classes)
        for option, value, low in (
            ("steps", steps, 1),
            ("restarts", restarts, 1),
            ("n_target_classes", n_target_classes, 1),
        ):
            if int(value) < low:
                raise ValueError(f"{option} must be >= {low}, got {value}")
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.targeted = self.loss in TARGETED
        self.n_targets = min(int(n_target_classes), self.num_classes - 1) if self.targeted else 1
        self.rho = float(rho)
        self.alpha = float(alpha)
        self.early_exit = bool(early_exit)
        self.checkpoints = checkpoints(self.steps)
        self._loss_fn = targeted_form(self.loss)

        spec = image_spec(model)
        self._forward = compiled_forward(model)
        self._logit_loss = sharded(
            compiled(
                self._loss_fn,
                input_signature=[
                    tf.TensorSpec([None, self.num_classes], tf.float32),
                    LABELS,
                    LABELS,
                ],
            )
        )
        self._start = sharded(
            compiled(self._start_fn, input_signature=[spec, SEEDS, SCALAR, LABELS, LABELS]),
            replicated=(2,),
        )
        self._step = compiled(
            self._step_fn,
            input_signature=[
                spec, spec, spec, spec, spec, spec,  # x0, x, x_prev, grad, x_best, grad_best
                PER_IMAGE, MASK, PER_IMAGE,  # loss_best, reset, step size
                SCALAR, SCALAR, LABELS, LABELS,  # eps, alpha, y, target
            ],
        )  # fmt: skip
        self._step = sharded(self._step, replicated=(9, 10))

    # -- compiled ------------------------------------------------------------------------
    def _loss_gradient(self, x, y, target):
        """``(logits, per-example loss, ∇ₓ Σ loss)``."""
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = self.model(x, training=False)
            loss = self._loss_fn(logits, y, target)
            total = tf.reduce_sum(loss)
        return logits, loss, tape.gradient(total, x)

    def _start_fn(self, x0, seeds, eps, y, target):
        x = random_start(x0, eps, self.norm, seeds)
        return (x, *self._loss_gradient(x, y, target))

    def _step_fn(
        self, x0, x, x_prev, grad, x_best, grad_best, loss_best, reset, step, eps, alpha, y, target
    ):
        x = _where_image(reset, x_best, x)
        grad = _where_image(reset, grad_best, grad)
        step = tf.reshape(step, [-1] + [1] * (x.shape.rank - 1))
        z = project(x0, x + step * normalize(grad, self.norm), eps, self.norm)
        x_new = project(x0, x + alpha * (z - x) + (1.0 - alpha) * (x - x_prev), eps, self.norm)
        logits, loss, grad_new = self._loss_gradient(x_new, y, target)
        better = loss > loss_best
        return (
            x_new,
            x,  # the next step's previous iterate
            grad_new,
            _where_image(better, x_new, x_best),
            _where_image(better, grad_new, grad_best),
            tf.where(better, loss, loss_best),
            loss,
            logits,
        )

    # -- driver --------------------------------------------------------------------------
    def run(self, x, y, eps: float, index=None) -> AttackResult:
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int64)
        n = len(x)
        index = np.arange(n, dtype=np.int64) if index is None else np.asarray(index, np.int64)
        logits = self._forward(tf.constant(x)).numpy() if n else np.zeros((0, self.num_classes))
        targets = (
            target_classes(logits, y, self.n_targets) if self.targeted else y[:, None]
        ).astype(np.int64)
        out = _Outcome(x, y, logits, targeted=self.targeted)
        if n:
            out.loss[:] = self._logit_loss(
                tf.constant(logits, tf.float32), tf.constant(y), tf.constant(targets[:, 0])
            ).numpy()
        runs = [(t, r) for t in range(targets.shape[1]) for r in range(self.restarts)]
        for run_id, (t, _) in enumerate(runs):
            rows = np.flatnonzero(~out.success) if self.early_exit else np.arange(n)
            if rows.size == 0:
                break
            seeds = image_seeds(self.seed, index[rows] * len(runs) + run_id)
            self._single_run(out, rows, targets[rows, t], seeds, float(eps), run_id)
        return out.result(self.checkpoints)

    def _single_run(self, out: _Outcome, rows, target, seeds, eps: float, run_id: int) -> None:
        x0 = tf.constant(out.x[rows])
        y = tf.constant(out.y[rows])
        target = tf.constant(target)
        eps_t = tf.constant(eps, tf.float32)
        x, logits, loss, grad = self._start(x0, seeds, eps_t, y, target)
        loss = loss.numpy()
        b = len(rows)
        history = np.zeros((b, self.steps + 1), np.float32)
        history[:, 0] = loss
        s = _RunState(
            pos=rows, x0=x0, y=y, target=target, x=x, x_prev=x, grad=grad, x_best=x,
            grad_best=grad, loss_best=loss.copy(), step=np.full(b, 2.0 * eps, np.float32),
            reset=np.zeros(b, bool), history=history, best_at_last_check=loss.copy(),
            reduced_at_last_check=np.ones(b, bool),
        )  # fmt: skip
        out.record(s, logits.numpy(), s.x, s.loss_best, run_id, iteration=0)
        checks, last_check = set(self.checkpoints), 0
        for i in range(self.steps):
            if self.early_exit:
                alive = np.flatnonzero(~out.success[s.pos])
                if alive.size == 0:
                    return
                if alive.size < len(s.pos):
                    s = s.keep(alive)
            alpha = 1.0 if i == 0 else self.alpha
            s.x, s.x_prev, s.grad, s.x_best, s.grad_best, loss_best, loss, logits = self._step(
                s.x0, s.x, s.x_prev, s.grad, s.x_best, s.grad_best,
                tf.constant(s.loss_best), tf.constant(s.reset), tf.constant(s.step),
                eps_t, tf.constant(alpha, tf.float32), s.y, s.target,
            )  # fmt: skip
            s.loss_best = loss_best.numpy()
            s.history[:, i + 1] = loss.numpy()
            out.record(s, logits.numpy(), s.x, s.loss_best, run_id, iteration=i + 1)
            if i + 1 in checks:
                s.reset = halve_step(
                    s.history[:, last_check : i + 2],
                    best=s.loss_best,
                    best_at_last_check=s.best_at_last_check,
                    reduced_at_last_check=s.reduced_at_last_check,
                    rho=self.rho,
                )
                s.step = np.where(s.reset, s.step / 2, s.step).astype(np.float32)
                s.reduced_at_last_check = s.reset.copy()
                s.best_at_last_check = s.loss_best.copy()
                last_check = i + 1
            else:
                s.reset = np.zeros(len(s.pos), bool)
        pending = ~out.success[s.pos]
        out.loss[s.pos[pending]] = s.loss_best[pending]
        out.step_size[s.pos[pending]] = s.step[pending]


class _Outcome:
    """The batch's results so far; :meth:`record` books one evaluated iterate."""

    def __init__(self, x, y, logits, *, targeted: bool):
        n = len(x)
        self.x, self.y, self.targeted = x, y, targeted
        self.clean_correct = np.argmax(logits, axis=1) == y if n else np.zeros(0, bool)
        self.success = ~self.clean_correct
        self.adversarial = x.copy()
        self.queries = np.zeros(n, np.int64)
        self.loss = np.zeros(n, np.float32)
        self.step_size = np.zeros(n, np.float32)
        self.run = np.full(n, -1, np.int64)
        self.iteration = np.full(n, -1, np.int64)
        self.target = np.full(n, -1, np.int64)

    def record(self, s: _RunState, logits, x, loss_best, run_id: int, iteration: int) -> None:
        """One gradient evaluation at ``x`` for the run's images not fooled yet; the first
        misclassified iterate of each becomes its adversarial example."""
        pending = ~self.success[s.pos]
        self.queries[s.pos[pending]] += 1
        fooled = np.flatnonzero(pending & (np.argmax(logits, axis=1) != self.y[s.pos]))
        if fooled.size == 0:
            return
        at = s.pos[fooled]
        self.adversarial[at] = tf.gather(x, tf.constant(fooled, tf.int64)).numpy()
        self.success[at] = True
        self.loss[at] = loss_best[fooled]
        self.step_size[at] = s.step[fooled]
        self.run[at] = run_id
        self.iteration[at] = iteration
        if self.targeted:
            self.target[at] = s.target.numpy()[fooled]

    def result(self, schedule: list[int]) -> AttackResult:
        return AttackResult(
            adversarial=self.adversarial,
            success=self.success.copy(),
            queries=self.queries,
            extra={
                "loss": self.loss,
                "step_size": self.step_size,
                "clean_correct": self.clean_correct,
                "run": self.run,
                "iteration": self.iteration,
                "target": self.target,
                "checkpoints": schedule,
            },
        )
