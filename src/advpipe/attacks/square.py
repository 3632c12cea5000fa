"""The Square attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): random search.

"Square Attack: a query-efficient black-box adversarial attack via random search",
https://arxiv.org/abs/1912.00049. Untargeted, margin loss ``z_y − max_{i≠y} z_i`` on the
model's logits; the attack sees only those outputs (no gradient anywhere) and succeeds
when the margin is negative. It follows the authors' code (``autoattack/square.py`` in
fra31/auto-attack):

* **L∞**: start from vertical stripes of ±ε (one sign per column and channel), then at
  each iteration propose a random square of side ``s = round(sqrt(p·H·W))`` set to ±ε
  (one sign per channel) and keep it if the margin decreases;
* **L2**: start from a 5x5 grid of "meta-pseudo-Gaussian" windows (:func:`eta`) of random
  sign per channel, scaled to norm ε; each iteration moves the mass of a second random
  window into a new pseudo-Gaussian window (the first), keeping the norm at ε;
* ``p`` (the fraction of the image a square covers) halves at iterations 10, 50, 200,
  500, 1000, 2000, 4000, 6000 and 8000 of 10,000, rescaled to the iterations there are
  (:func:`p_selection`); square positions are drawn in ``[0, H − s)`` as in the authors'
  code (the last row/column is only ever moved by the initialisation).

Queries (model evaluations) are counted per image and include the clean evaluation and
each restart's initialisation; ``queries`` is the whole budget per image, split evenly
between the restarts. The random draws come from one NumPy generator per image, seeded
from :func:`.bounded.image_seeds` ``(seed, index)``, so results do not depend on the
batch; the proposals, the forward pass and the acceptance run in one compiled function
per norm (built once, free batch dimension) on the still-active images only.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf

from ..inference import image_spec
from ..runtime import compiled
from .bounded import AttackResult, BoundedAttack, image_seeds

#: Iteration thresholds (of 10,000) after which p is halved again (the authors' schedule).
P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

_INT = tf.TensorSpec([None], tf.int32)
_SCALAR = tf.TensorSpec([], tf.float32)
_SIDE = tf.TensorSpec([], tf.int32)
_VECTOR = tf.TensorSpec([None], tf.float32)
_SIGNS = tf.TensorSpec([None, None], tf.float32)


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """The fraction of pixels a square covers at iteration ``it`` of ``n_iters``."""
    if n_iters > 0:
        it = int(it / n_iters * 10000)
    return p_init / 2 ** sum(it > t for t in P_THRESHOLDS)


def square_side(p: float, h: int, w: int, norm: str) -> int:
    """``round(sqrt(p·H·W))``, at least 1 (L∞) or an odd number ≥ 3 (L2), at most min(H, W)."""
    s = int(round(math.sqrt(p * h * w)))
    if norm == "linf":
        s = max(s, 1)
    else:
        s = max(s, 3)
        s += 1 - s % 2
    return min(s, h, w)


def _eta_rectangle(rows: int, cols: int) -> np.ndarray:
    """Nested centred rectangles weighted 1/(k+1)², unit L2 norm (the authors'
    ``eta_rectangles``)."""
    delta = np.zeros((rows, cols), np.float64)
    r0, c0 = rows // 2, cols // 2
    for k in range(max(r0, c0) + 1):
        top, left = r0 - k, c0 - k
        delta[max(top, 0) : top + 2 * k + 1, max(left, 0) : left + 2 * k + 1] += 1 / (k + 1) ** 2
    return delta / max(np.sqrt((delta**2).sum()), 1e-12)


@functools.lru_cache(maxsize=64)
def eta(s: int) -> np.ndarray:
    """The ``s x s`` meta-pseudo-Gaussian window: a positive top half and a negative
    bottom half, unit L2 norm (float32; the caller transposes it at random)."""
    delta = np.concatenate([_eta_rectangle(s // 2, s), -_eta_rectangle(s - s // 2, s)])
    return (delta / max(np.sqrt((delta**2).sum()), 1e-12)).astype(np.float32)


def _signs(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 2, shape).astype(np.float32) * 2 - 1


def _start(rng: np.random.Generator, side: int, s: int) -> int:
    """A square's first row/column, uniform in ``[0, side − s)`` (0 when ``s == side``)."""
    return int(rng.integers(0, max(side - s, 1)))


def linf_init(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """Vertical stripes: one ±1 per column and channel, ``[H, W, C]``."""
    return np.broadcast_to(_signs(rng, (1, w, c)), (h, w, c))


def l2_init(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """The authors' L2 start (unnormalised): a grid of ``H//5``-sided :func:`eta` windows,
    each transposed at random and signed at random per channel, ``[H, W, C]``."""
    delta = np.zeros((h, w, c), np.float32)
    s = h // 5
    if s < 1:
        return _signs(rng, (h, w, c))
    start = (h - 5 * s) // 2
    for i in range(h // s):
        for j in range(w // s):
            top, left = start + i * s, start + j * s
            window = eta(s)
            if rng.random() > 0.5:
                window = window.T
            signs = _signs(rng, (c,))
            if top + s <= h and left + s <= w:
                delta[top : top + s, left : left + s] += window[:, :, None] * signs
    return delta


def margin(logits, y):
    """``z_y − max_{i≠y} z_i`` per example (negative: misclassified)."""
    logits = tf.cast(logits, tf.float32)
    true = tf.gather(logits, y, axis=1, batch_dims=1)
    mask = tf.one_hot(y, tf.shape(logits)[1], on_value=True, off_value=False)
    return true - tf.reduce_max(tf.where(mask, -np.inf, logits), axis=1)


def window_mask(top, left, s, h, w):
    """``[n, H, W, 1]`` float mask of the ``s x s`` windows starting at ``(top, left)``."""
    rows = tf.range(h)[None, :] - top[:, None]
    cols = tf.range(w)[None, :] - left[:, None]
    inside_r = (rows >= 0) & (rows < s)
    inside_c = (cols >= 0) & (cols < s)
    return tf.cast(inside_r[:, :, None] & inside_c[:, None, :], tf.float32)[..., None]


def place(patterns, flip, top, left, h, w):
    """``patterns[flip_i]`` (``[2, s, s]``) written at ``(top_i, left_i)`` of an
    ``[n, H, W, 1]`` zero image (a batched gather, no per-image graph)."""
    s = tf.shape(patterns)[1]
    chosen = tf.gather(patterns, flip)
    rows = tf.clip_by_value(tf.range(h)[None, :] - top[:, None], 0, s - 1)
    cols = tf.clip_by_value(tf.range(w)[None, :] - left[:, None], 0, s - 1)
    full = tf.gather(tf.gather(chosen, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
    return full[..., None] * window_mask(top, left, s, h, w)


def _sum_hw(v):
    return tf.reduce_sum(v, axis=[1, 2], keepdims=True)


def linf_proposal(x0, x_best, eps, top, left, s, signs):
    """Square i of side ``s`` at ``(top_i, left_i)`` moved to ±ε (``signs``: ``[n, C]``),
    projected onto the ε-ball and [0, 1] (the authors' L∞ update)."""
    h, w = tf.shape(x0)[1], tf.shape(x0)[2]
    x_new = x_best + window_mask(top, left, s, h, w) * (2.0 * eps) * signs[:, None, None, :]
    return tf.clip_by_value(tf.clip_by_value(x_new, x0 - eps, x0 + eps), 0.0, 1.0)


def l2_proposal(x0, x_best, eps, top, left, top2, left2, patterns, flip, signs):
    """The authors' L2 update: the perturbation in window 2 (at ``(top2, left2)``) and
    window 1 (at ``(top, left)``) is replaced, per channel, by window 1's old content
    (unit norm) plus a signed pseudo-Gaussian ``patterns[flip]``, rescaled to carry the
    energy of both windows and what is left of the ε budget; the whole perturbation is
    then rescaled to norm ε and clipped to [0, 1]."""
    h, w, c = tf.shape(x0)[1], tf.shape(x0)[2], tf.cast(tf.shape(x0)[3], tf.float32)
    s = tf.shape(patterns)[1]
    delta = x_best - x0
    mask1 = window_mask(top, left, s, h, w)
    mask2 = window_mask(top2, left2, s, h, w)
    norm_window1 = tf.sqrt(_sum_hw((delta * mask1) ** 2))  # [n, 1, 1, C]
    norm_image = tf.sqrt(tf.reduce_sum(delta**2, axis=[1, 2, 3], keepdims=True))
    norm_windows = tf.sqrt(_sum_hw((delta * tf.maximum(mask1, mask2)) ** 2))
    new = place(patterns, flip, top, left, h, w) * signs[:, None, None, :]
    new += delta * mask1 / (1e-12 + norm_window1)
    energy = tf.maximum(eps**2 - norm_image**2, 0.0) / c + norm_windows**2
    new = new / (1e-12 + tf.sqrt(_sum_hw(new**2))) * tf.sqrt(energy)
    delta = delta * (1.0 - mask2)
    delta = delta * (1.0 - mask1) + new * mask1
    norms = tf.sqrt(tf.reduce_sum(delta**2, axis=[1, 2, 3], keepdims=True))
    return tf.clip_by_value(x0 + delta / (norms + 1e-12) * eps, 0.0, 1.0)


class Square(BoundedAttack):
    """Square attack, untargeted, margin loss; ``run(x, y, eps, index)`` on one batch.

    ``queries``: the model evaluations allowed per image (clean evaluation and
    initialisations included), split evenly between ``restarts``; ``p_init``: the initial
    fraction of the image a square covers; ``early_exit=False`` keeps fooled images in
    the batch (same results, more work: a check of the early exit).
    """

    name = "square"

    def __init__(
        self,
        model,
        *,
        norm: str = "linf",
        queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        seed: int = 0,
        early_exit: bool = True,
    ):
        super().__init__(model, norm=norm, seed=seed)
        if restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {restarts}")
        if queries < 1 + restarts:
            raise ValueError(
                f"queries must be >= 1 + restarts (the clean evaluation and one "
                f"initialisation per restart), got {queries}"
            )
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.queries = int(queries)
        self.p_init = float(p_init)
        self.restarts = int(restarts)
        self.early_exit = bool(early_exit)
        spec = image_spec(model)
        self._h, self._w, self._c = (int(d) for d in spec.shape[1:])
        labels = tf.TensorSpec([None], tf.int64)
        self._margin = compiled(self._margin_of, input_signature=[spec, labels])
        self._init = compiled(self._init_fn, input_signature=[spec, spec, labels, _SCALAR])
        state = [spec, spec, _VECTOR, labels, _SCALAR]
        if self.norm == "linf":
            extra = [_INT, _INT, _SIDE, _SIGNS]
            self._step = compiled(self._linf_step, input_signature=state + extra)
        else:
            patterns = tf.TensorSpec([2, None, None], tf.float32)
            extra = [_INT, _INT, _INT, _INT, patterns, _INT, _SIGNS]
            self._step = compiled(self._l2_step, input_signature=state + extra)

    # -- compiled: proposal, forward pass, acceptance --------------------------------------
    def _init_fn(self, x0, direction, y, eps):
        if self.norm == "l2":
            norms = tf.sqrt(tf.reduce_sum(direction**2, axis=[1, 2, 3], keepdims=True))
            direction = direction / (norms + 1e-12)
        x_best = tf.clip_by_value(x0 + eps * direction, 0.0, 1.0)
        return x_best, self._margin_of(x_best, y)

    def _margin_of(self, x, y):
        return margin(self.model(x, training=False), y)

    def _accept(self, x_best, m_best, x_new, y):
        m_new = self._margin_of(x_new, y)
        better = m_new < m_best
        x_best = tf.where(better[:, None, None, None], x_new, x_best)
        return x_best, tf.where(better, m_new, m_best)

    def _linf_step(self, x0, x_best, m_best, y, eps, top, left, s, signs):
        return self._accept(x_best, m_best, linf_proposal(x0, x_best, eps, top, left, s, signs), y)

    def _l2_step(self, x0, x_best, m_best, y, eps, *draws):
        return self._accept(x_best, m_best, l2_proposal(x0, x_best, eps, *draws), y)

    # -- the random draws (NumPy, one generator per image) ---------------------------------
    def _draw_init(self, rngs):
        init = linf_init if self.norm == "linf" else l2_init
        return np.stack([init(r, self._h, self._w, self._c) for r in rngs]).astype(np.float32)

    def _draw_step(self, rngs, it, n_iters):
        h, w, c = self._h, self._w, self._c
        s = square_side(p_selection(self.p_init, it, n_iters), h, w, self.norm)
        if self.norm == "linf":
            draws = [(_start(r, h, s), _start(r, w, s), _signs(r, (c,))) for r in rngs]
            top, left, signs = zip(*draws)
            return (_ints(top), _ints(left), tf.constant(s, tf.int32), _floats(signs))
        draws = [
            (
                _start(r, h, s),
                _start(r, w, s),
                _start(r, h, s),
                _start(r, w, s),
                int(r.random() > 0.5),
                _signs(r, (c,)),
            )
            for r in rngs
        ]
        top, left, top2, left2, flip, signs = zip(*draws)
        patterns = tf.constant(np.stack([eta(s), eta(s).T]))
        return (
            _ints(top),
            _ints(left),
            _ints(top2),
            _ints(left2),
            patterns,
            _ints(flip),
            _floats(signs),
        )

    # -- the driver -----------------------------------------------------------------------
    def run(self, x, y, eps: float, index=None) -> AttackResult:
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int64)
        n = len(x)
        index = np.arange(n) if index is None else np.asarray(index, np.int64)
        adversarial = x.copy()
        queries = np.ones(n, np.int64)  # the clean evaluation
        best_margin = np.full(n, np.inf, np.float32)
        if n == 0:
            return AttackResult(adversarial, np.zeros(0, bool), queries)
        eps_t = tf.constant(float(eps), tf.float32)
        clean = self._margin(tf.constant(x), tf.constant(y)).numpy()
        success = clean < 0
        best_margin[:] = clean
        seeds = image_seeds(self.seed, index).numpy()
        rngs = [np.random.default_rng([int(v) % 2**63 for v in s]) for s in seeds]
        started = np.flatnonzero(~success)
        budget = self.queries - 1
        for restart in range(self.restarts):
            per_restart = budget // self.restarts + (restart < budget % self.restarts)
            work = started if not self.early_exit else started[~success[started]]
            if len(work) == 0:
                break
            self._one_restart(
                x, y, eps_t, work, rngs, per_restart, adversarial, success, queries, best_margin
            )
        return AttackResult(adversarial, success, queries, extra={"margin": best_margin})

    def _one_restart(
        self, x, y, eps, work, rngs, n_queries, adversarial, success, queries, best_margin
    ):
        """One restart of ``n_queries`` evaluations (initialisation included) on the images
        ``work``; records the first misclassified iterate of each, in place."""
        x0, labels = tf.constant(x[work]), tf.constant(y[work])
        direction = tf.constant(self._draw_init([rngs[i] for i in work]))
        x_best, m_best = self._init(x0, direction, labels, eps)
        n_iters = n_queries - 1
        for it in range(n_queries):
            if it > 0:
                draws = self._draw_step([rngs[i] for i in work], it - 1, n_iters)
                x_best, m_best = self._step(x0, x_best, m_best, labels, eps, *draws)
            m = m_best.numpy()
            live = ~success[work]
            queries[work[live]] += 1
            best_margin[work[live]] = np.minimum(best_margin[work[live]], m[live])
            fooled = live & (m < 0)
            if fooled.any():
                adversarial[work[fooled]] = tf.gather(x_best, np.flatnonzero(fooled)).numpy()
                success[work[fooled]] = True
            if success[work].all():
                return
            if self.early_exit and fooled.any():
                keep = np.flatnonzero(~fooled)
                work = work[keep]
                x0, labels, x_best, m_best = (
                    tf.gather(t, keep) for t in (x0, labels, x_best, m_best)
                )


def _ints(values) -> tf.Tensor:
    return tf.constant(np.asarray(values, np.int32))


def _floats(values) -> tf.Tensor:
    return tf.constant(np.asarray(values, np.float32))
