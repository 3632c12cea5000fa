"""FAB-T: the targeted Fast Adaptive Boundary attack, L∞ and L2, compiled in TensorFlow.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020 (https://arxiv.org/abs/1907.02044); the targeted version is the one
AutoAttack runs (Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690), with the
authors' AutoAttack defaults (``fab-t``: 100 steps, 1 restart, 9 target classes,
α_max = 0.1, η = 1.05, β = 0.9).

FAB is a *minimum-norm* attack. For each target class t (the k-th highest non-true clean
logit, k = 1..min(n_target_classes, C − 1); one run per target, on the images still
robust) it iterates, from the clean image x₀ (random points at radius ε/2 for the
restarts after the first, as the authors do):

1. linearise g = f_t − f_y at the current point x₁ (one gradient per image per step):
   the hyperplane {z : ⟨∇g, z⟩ = ⟨∇g, x₁⟩ − g(x₁)};
2. project x₁ and x₀ onto that hyperplane intersected with the box [0, 1]
   (:func:`projection_linf` / :func:`projection_l2`, the authors' exact box-constrained
   projections, batched and written with sorting and a binary search): steps d₁, d₂;
3. the biased step x₁ ← clip((x₁ + η·d₁)(1 − α) + (x₀ + η·d₂)·α), α = min(‖d₁‖/(‖d₁‖ +
   ‖d₂‖), α_max): η extrapolates beyond the hyperplane, α pulls towards x₀;
4. when x₁ is misclassified, record it and step back towards x₀: x₁ ← x₀ + β(x₁ − x₀).

The attack counts as a success for an image when an iterate is misclassified (argmax ≠
true label, AutoAttack's check) **and** lies within ε of x₀; that iterate (the first one)
is returned, the clean image otherwise. With ``early_exit`` the image then leaves the
working batch (FAB would go on shrinking the norm; AutoAttack only needs ≤ ε). Without
it, every correctly classified image runs every step of every run, and the first iterate
within ε is still the one returned: the same flags and examples.

Differences from the authors' code: the hyperplane, the projections and the step are
computed in float64 (in float32, the projections' sums over 150 528 ImageNet pixels
cannot resolve the small logit gaps near the boundary: the iterates stall, and FAB-T
at ε = 1/255 left 5 of 20 EfficientNet-Lite0 samples robust, 0 in float64); the L∞
random start is uniform in the ε/2-box (:func:`~.bounded.random_start`) where the
authors rescale it to L∞ norm exactly ε/2 (the default, one restart, never draws one);
the per-image seeds are stateless.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from ..inference import compiled_forward, image_spec
from ..runtime import compiled
from ..sharding import sharded
from .bounded import AttackResult, BoundedAttack, as_column, image_seeds, lp_norm, random_start

#: The value the authors use for "no saturation" in the L2 projection.
_BIG = 1e12
#: Below this |w_i| the L2 projection treats a coordinate as zero (the authors' threshold).
_TINY_W = 1e-8


def _search_steps(n: int) -> int:
    return math.ceil(math.log2(n)) if n > 1 else 0


def _at(values, positions):
    """``values[row, positions[row]]`` for a ``[rows, n]`` tensor and ``[rows]`` positions."""
    return tf.gather(values, positions, batch_dims=1)


def _sign(v):
    """+1 where ``v ≥ 0``, −1 elsewhere (the authors' ``2·(v ≥ 0) − 1``), ``v``'s dtype."""
    return 2 * tf.cast(v >= 0, v.dtype) - 1


def _bisect(n: int, rows, below):
    """The authors' binary search over sorted positions 0..n−1: keep ``lb`` while
    ``below(position)`` (a ``[rows]`` bool) holds, ``ub`` otherwise; returns ``lb``."""
    lb = tf.zeros([rows], tf.int32)
    ub = tf.fill([rows], tf.constant(n - 1, tf.int32))
    for _ in range(_search_steps(n)):
        mid = (lb + ub) // 2
        go_up = below(mid)
        lb = tf.where(go_up, mid, lb)
        ub = tf.where(go_up, ub, mid)
    return lb


def projection_linf(t, w, b):
    """The step ``d`` of least L∞ norm with ``⟨w, t + d⟩ = b`` and ``t + d ∈ [0, 1]``.

    ``t``, ``w``: ``[rows, n]`` (``n`` static), ``b``: ``[rows]``, one float dtype (the
    attack uses float64: see :meth:`FABTargeted._fab_step`). Coordinate i
    moves by ``−sign(w_i)·min(λ, p_i)`` (``p_i`` the room to the box face), λ found by
    sorting the rooms and a binary search (the authors' ``projection_linf``). When the
    hyperplane misses the box, ``d`` moves to the box corner closest to it. Coordinates
    with ``w_i = 0`` do not move.
    """
    n = int(t.shape[1])
    rows = tf.shape(t)[0]
    sign = _sign(tf.reduce_sum(w * t, 1) - b)
    w = w * sign[:, None]
    b = b * sign  # now ⟨w, t⟩ ≥ b: ⟨w, ·⟩ has to decrease
    a = tf.cast(w < 0, t.dtype)
    moving = tf.cast(tf.not_equal(w, 0.0), t.dtype)
    d = (a - t) * moving  # the full move towards the box corner
    room = a - t * (2 * a - 1)
    room_desc, order = tf.math.top_k(room, k=n, sorted=True)
    b = b - tf.reduce_sum(w * t, 1)  # the change of ⟨w, ·⟩ needed (≤ 0)
    b0 = tf.reduce_sum(w * d, 1)  # the largest decrease the box allows
    ws = tf.gather(w, order, batch_dims=1)
    s = tf.cumsum(tf.abs(ws), axis=1)
    sb = tf.cumsum(-ws * tf.gather(d, order, batch_dims=1), axis=1) + b0[:, None]
    # ⟨w, d(λ)⟩ = sb[k] − s[k]·λ while the k + 1 largest rooms exceed λ
    none_saturated = b - (sb[:, -1] - s[:, -1] * tf.reduce_min(room, 1)) > 0
    searched = (b - b0 > 0) & ~none_saturated
    lb = _bisect(n, rows, lambda k: b - (_at(sb, k) - _at(s, k) * _at(room_desc, k)) > 0)
    lam_all = tf.maximum((b - sb[:, -1]) / -s[:, -1], 0.0)[:, None]
    lam = tf.maximum((b - _at(sb, lb)) / -_at(s, lb), 0.0)[:, None]
    d_all = (2 * a - 1) * lam_all
    d_searched = tf.minimum(lam, d) * a + tf.maximum(-lam, d) * (1 - a)
    d = tf.where(none_saturated[:, None], d_all, tf.where(searched[:, None], d_searched, d))
    return d * moving


def projection_l2(t, w, b):
    """The step ``d`` of least L2 norm with ``⟨w, t + d⟩ = b`` and ``t + d ∈ [0, 1]``.

    Same arguments as :func:`projection_linf`. ``d = clip(t − λw, 0, 1) − t``: the
    coordinates saturate in the order of the λ at which they reach the box (sorted), λ
    found by a binary search on the piecewise-linear ``⟨w, d(λ)⟩`` (the authors'
    ``projection_l2``). When the hyperplane misses the box, every coordinate saturates
    (the closest box corner). Coordinates with ``|w_i| < 1e-8`` do not move.
    """
    n = int(t.shape[1])
    rows = tf.shape(t)[0]
    c = tf.reduce_sum(w * t, 1) - b
    sign = _sign(c)
    w = w * sign[:, None]
    c = c * sign  # ⟨w, ·⟩ has to decrease by c ≥ 0
    tiny = tf.abs(w) < _TINY_W
    moving = tf.cast(~tiny, t.dtype)
    r = tf.clip_by_value(tf.maximum(t / w, (t - 1) / w), -_BIG, _BIG)  # λ of saturation
    r = tf.where(tiny | tf.equal(r, -_BIG), tf.constant(_BIG, r.dtype), r)
    neg_rs, order = tf.math.top_k(-r, k=n, sorted=True)
    rs = -neg_rs
    rs_next = tf.concat([rs[:, 1:], tf.zeros_like(rs[:, :1])], axis=1)
    rs = tf.where(tf.equal(rs, _BIG), tf.zeros_like(rs), rs)
    rs_next = tf.where(tf.equal(rs_next, _BIG), tf.zeros_like(rs_next), rs_next)
    w2s = tf.gather(w * w, order, batch_dims=1)
    w2_sum = tf.reduce_sum(w2s, 1, keepdims=True)
    ws = w2_sum - tf.cumsum(w2s, axis=1)  # ‖w‖² of the coordinates not yet saturated
    d = -(r * w) * moving  # every coordinate saturated
    start = -w2_sum * rs[:, :1]
    s = tf.concat([start, tf.cumsum((rs - rs_next) * ws, axis=1) + start], axis=1)
    unsaturated = s[:, 0] + c < 0
    unreachable = tf.reduce_sum(d * w, 1) + c > 0
    searched = ~(unsaturated | unreachable)
    lb = _bisect(n, rows, lambda k: _at(s, k) + c > 0)
    d_free = -(c / w2_sum[:, 0])[:, None] * w
    ws_lb = _at(ws, lb)
    lam = (_at(s, lb) + c) / ws_lb + _at(rs, lb)
    lam = tf.where(tf.equal(ws_lb, 0.0), tf.zeros_like(lam), lam)[:, None]
    d_searched = tf.where(lam > r, d, -lam * w)
    d = tf.where(unsaturated[:, None], d_free, tf.where(searched[:, None], d_searched, d))
    return d * moving


PROJECTIONS = {"linf": projection_linf, "l2": projection_l2}


def _flat_norm(v, norm: str):
    return tf.reduce_max(tf.abs(v), 1) if norm == "linf" else tf.norm(v, axis=1)


class FABTargeted(BoundedAttack):
    """Targeted FAB (AutoAttack's ``fab-t``), L∞ or L2; see the module docstring.

    ``run(x, y, eps, index=None) -> AttackResult``; ``queries`` counts the clean forward
    pass and, per step, one gradient and one forward pass; ``extra["targets"]`` holds
    the target classes (int64 ``[n, runs]``).
    """

    name = "fab-t"

    def __init__(
        self,
        model,
        *,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int = 9,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        seed: int = 0,
        early_exit: bool = True,
    ):
        super().__init__(model, norm=norm, seed=seed)
        for key, value in (("steps", steps), ("restarts", restarts)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if n_target_classes < 1:
            raise ValueError(f"n_target_classes must be >= 1, got {n_target_classes}")
        if not 0 <= alpha_max <= 1:
            raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max}")
        if eta <= 0 or not 0 < beta < 1:
            raise ValueError(f"need eta > 0 and 0 < beta < 1, got eta={eta}, beta={beta}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.n_target_classes = int(n_target_classes)
        self.alpha_max = float(alpha_max)
        self.eta = float(eta)
        self.beta = float(beta)
        self.early_exit = bool(early_exit)
        self._project = PROJECTIONS[self.norm]
        spec = image_spec(model)
        self._pixels = int(np.prod(spec.shape[1:]))  # static: the projections sort rows
        labels = tf.TensorSpec([None], tf.int64)
        self._forward = compiled_forward(model)
        self._step = sharded(compiled(self._fab_step, input_signature=[spec, spec, labels, labels]))
        self._start = sharded(
            compiled(
                lambda x0, radius, seeds: random_start(x0, radius, self.norm, seeds),
                input_signature=[
                    spec,
                    tf.TensorSpec([], tf.float32),
                    tf.TensorSpec([None, 2], tf.int64),
                ],
            ),
            replicated=(1,),
        )

    # -- one FAB iteration, compiled once ------------------------------------------------
    def _fab_step(self, x1, x0, y, target):
        """``(candidate, next point, misclassified, ‖candidate − x0‖)`` for one step.

        The hyperplane, the projections and the biased step are computed in float64: the
        projections compare the needed change of ⟨w, ·⟩ (a logit gap, ~1e-2) with sums
        over every pixel of ⟨w, x⟩ (~1e3 for ImageNet), which float32 cannot resolve
        (the iterates then stall short of the boundary)."""
        with tf.GradientTape() as tape:
            tape.watch(x1)
            logits = self.model(x1, training=False)
            diff = _at(logits, target) - _at(logits, y)  # f_t − f_y, one per image
        grad = tape.gradient(diff, x1, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        n = tf.shape(x1)[0]
        w, p1, p0 = (tf.cast(tf.reshape(v, [n, self._pixels]), tf.float64) for v in (grad, x1, x0))
        b = tf.reduce_sum(w * p1, 1) - tf.cast(diff, tf.float64)
        d = self._project(tf.concat([p1, p0], 0), tf.concat([w, w], 0), tf.concat([b, b], 0))
        size = tf.maximum(_flat_norm(d, self.norm), 1e-8)
        a1, a2 = size[:n], size[n:]
        alpha = tf.clip_by_value(a1 / (a1 + a2), 0.0, self.alpha_max)[:, None]
        moved = (p1 + self.eta * d[:n]) * (1 - alpha) + (p0 + self.eta * d[n:]) * alpha
        moved = tf.cast(tf.clip_by_value(moved, 0.0, 1.0), tf.float32)
        cand = tf.reshape(moved, tf.shape(x1))
        pred = tf.argmax(self.model(cand, training=False), axis=1, output_type=tf.int64)
        fooled = tf.not_equal(pred, y)
        back = x0 + self.beta * (cand - x0)
        nxt = tf.where(as_column(fooled, cand) > 0, back, cand)
        return cand, nxt, fooled, lp_norm(cand - x0, self.norm)

    # -- the runs ----------------------------------------------------------------------
    def target_classes(self, logits, y) -> np.ndarray:
        """The k-th highest non-true clean logit per image, k = 1..runs: int64 ``[n, runs]``."""
        logits = np.array(logits, np.float64)
        runs = min(self.n_target_classes, logits.shape[1] - 1)
        logits[np.arange(len(y)), y] = -np.inf
        return np.argsort(-logits, axis=1, kind="stable")[:, :runs].astype(np.int64)

    def run(self, x, y, eps: float, index=None) -> AttackResult:
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int64)
        n = len(x)
        index = np.arange(n) if index is None else np.asarray(index, np.int64)
        adv = x.copy()
        queries = np.zeros(n, np.int64)
        if n == 0:
            return AttackResult(adv, np.zeros(0, bool), queries)
        logits = self._forward(tf.constant(x)).numpy()
        queries += 1
        success = logits.argmax(1) != y
        correct = ~success
        targets = self.target_classes(logits, y)
        state = (x, y, float(eps), index, adv, success, queries)
        for k in range(targets.shape[1]):
            for restart in range(self.restarts):
                todo = np.flatnonzero(~success if self.early_exit else correct)
                if todo.size == 0:
                    break
                run_id = k * self.restarts + restart
                self._single_run(state, todo, targets[todo, k], restart > 0, run_id)
        return AttackResult(adv, success, queries, extra={"targets": targets})

    def _single_run(self, state, todo, target, random: bool, run_id: int) -> None:
        """One FAB run towards ``target`` on the images ``todo``; updates ``state``."""
        x, y, eps, index, adv, success, queries = state
        x0 = tf.constant(x[todo])
        x1 = x0
        if random:
            seeds = image_seeds(self.seed + 1_000_003 * run_id, index[todo])
            x1 = self._start(x0, tf.constant(0.5 * eps, tf.float32), seeds)
        labels = tf.constant(y[todo])
        goal = tf.constant(target)
        for _ in range(self.steps):
            cand, x1, fooled, dist = self._step(x1, x0, labels, goal)
            queries[todo] += 2
            hit = fooled.numpy() & (dist.numpy() <= eps) & ~success[todo]
            if hit.any():
                adv[todo[hit]] = tf.boolean_mask(cand, hit).numpy()
                success[todo[hit]] = True
            if self.early_exit and hit.any():
                keep = np.flatnonzero(~hit)
                if keep.size == 0:
                    return
                todo = todo[keep]
                x0, x1, labels, goal = (tf.gather(v, keep) for v in (x0, x1, labels, goal))
