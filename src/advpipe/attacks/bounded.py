"""The shared base of the norm-bounded robustness attacks (APGD, FAB-T, Square, AutoAttack).

These attacks answer one question per image: *is there an adversarial example within
distance ε of it?* Unlike the ε-sweep attacks of :mod:`.base` (one perturbation per ε,
accuracy counted afterwards), each one runs on a batch for one ε and returns, per image,
the adversarial example it found and whether it succeeded (:class:`AttackResult`).

Conventions, shared by every attack here:

* images float32 in [0, 1], NHWC; labels int64; the model returns logits;
* ``norm`` is ``"linf"`` or ``"l2"``; ε a distance in [0, 1] pixel space; every returned
  example satisfies ``‖x' − x‖ ≤ ε`` (up to float32 rounding) and lies in [0, 1];
* **per-image early exit**: an image leaves the working batch as soon as the model
  misclassifies it; the attack does no more work on it. The returned example of a fooled
  image is the *first* misclassified iterate, so running every iteration on every image
  gives the same result (tested exactly on small models; on a real network the logits
  move by ~1e-5 with the batch size, through the CPU kernels, which can change the
  iteration at which an image is first fooled, not whether the attack is sound);
* randomness (random starts, Square's squares) comes from stateless per-image seeds
  ``(seed, index_i)``, ``index`` the images' positions in the data set, so results do not
  depend on the batch an image is in (up to the float effect above);
* images the model already misclassifies count as successes with zero perturbation
  (the AutoAttack convention: robust accuracy ≤ clean accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

NORMS = ("linf", "l2")


@dataclass
class AttackResult:
    """What a bounded attack returns for one batch and one ε.

    ``adversarial``: float32 ``[n, H, W, C]``, the clean image where the attack failed;
    ``success``: bool ``[n]``, misclassified at distance ≤ ε (clean misclassifications
    included); ``queries``: int64 ``[n]`` model evaluations spent per image (forward
    passes; a gradient counts as one), ``None`` when not counted.
    """

    adversarial: np.ndarray
    success: np.ndarray
    queries: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_success(self) -> int:
        return int(np.sum(self.success))


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _flat_norm(v, norm: str):
    flat = tf.reshape(v, [tf.shape(v)[0], -1])
    if norm == "linf":
        return tf.reduce_max(tf.abs(flat), axis=1)
    return tf.sqrt(tf.reduce_sum(flat * flat, axis=1))


def lp_norm(v, norm: str):
    """Per-example L∞ or L2 norm of a batch ``v`` (a TF tensor), shape ``[batch]``."""
    return _flat_norm(v, norm)


def as_column(v, like):
    """A ``[batch]`` tensor reshaped to broadcast against the NHWC batch ``like``."""
    return tf.reshape(tf.cast(v, like.dtype), [-1] + [1] * (like.shape.rank - 1))


def normalize(g, norm: str):
    """The steepest-ascent direction for unit step: ``sign(g)`` (L∞) or ``g/‖g‖₂`` (L2)."""
    if norm == "linf":
        return tf.sign(g)
    return g / as_column(tf.maximum(_flat_norm(g, "l2"), 1e-12), g)


def project(x0, adv, eps, norm: str):
    """Project ``adv`` onto the ε-ball (``eps`` scalar or ``[batch]``) around ``x0`` and
    onto [0, 1]. For L2, the ball is projected first and the box after, as the authors'
    APGD does (the result can lie strictly inside the ball)."""
    eps = as_column(tf.broadcast_to(tf.cast(eps, adv.dtype), tf.shape(adv)[:1]), adv)
    delta = adv - x0
    if norm == "linf":
        delta = tf.clip_by_value(delta, -eps, eps)
    else:
        n = as_column(_flat_norm(delta, "l2"), adv)
        delta = delta * tf.minimum(1.0, eps / tf.maximum(n, 1e-12))
    return tf.clip_by_value(x0 + delta, 0.0, 1.0)


def random_start(x0, eps, norm: str, seeds):
    """A random point of the ε-ball around ``x0`` (clipped to [0, 1]), one stateless seed
    per image (``seeds``: int64 ``[batch, 2]``): uniform per pixel for L∞, a Gaussian
    direction at radius ε for L2 (the authors' APGD start)."""
    shape = tf.shape(x0)[1:]
    draws = tf.map_fn(
        lambda s: (
            tf.random.stateless_normal(shape, seed=s)
            if norm == "l2"
            else tf.random.stateless_uniform(shape, seed=s, minval=-1.0, maxval=1.0)
        ),
        seeds,
        fn_output_signature=tf.float32,
    )
    eps = as_column(tf.broadcast_to(tf.cast(eps, tf.float32), tf.shape(x0)[:1]), x0)
    if norm == "l2":
        draws = draws / as_column(tf.maximum(_flat_norm(draws, "l2"), 1e-12), draws)
    return tf.clip_by_value(x0 + eps * draws, 0.0, 1.0)


def image_seeds(seed: int, index) -> tf.Tensor:
    """Per-image stateless seeds ``[(seed, index_i)]``, int64 ``[batch, 2]``."""
    index = np.asarray(index, dtype=np.int64)
    return tf.constant(np.stack([np.full_like(index, int(seed)), index], axis=1))


def perturbation_norms(x, adv, norm: str) -> np.ndarray:
    """``‖adv − x‖`` per image, computed in float64 (for the ≤ ε assertion)."""
    d = np.asarray(adv, np.float64).reshape(len(adv), -1) - np.asarray(x, np.float64).reshape(
        len(x), -1
    )
    if norm == "linf":
        return np.abs(d).max(axis=1) if d.size else np.zeros(len(d))
    return np.sqrt((d * d).sum(axis=1))


#: Relative tolerance of the ε check: float32 rounding of x + δ on [0, 1] pixels.
NORM_RTOL = 1e-5
NORM_ATOL = 1e-6


def check_norms(x, adv, eps: float, norm: str) -> np.ndarray:
    """The float64 norms of ``adv − x``; raises if one exceeds ε beyond rounding."""
    norms = perturbation_norms(x, adv, norm)
    limit = eps * (1 + NORM_RTOL) + NORM_ATOL
    if norms.size and norms.max() > limit:
        worst = int(np.argmax(norms))
        raise AssertionError(
            f"{norm} perturbation of image {worst} is {norms[worst]:.8g} > eps {eps:.8g}"
        )
    return norms


class BoundedAttack:
    """Base class: subclasses set :attr:`name` and implement :meth:`run`.

    ``run(x, y, eps, index=None) -> AttackResult`` on one batch (NumPy float32 [0, 1]
    images, int64 labels, ``index`` the images' dataset positions for the per-image seeds;
    default ``arange(n)``). Compiled functions are built once in ``__init__`` with a free
    batch dimension, so the shrinking working batch never retraces.
    """

    name = "bounded"

    def __init__(self, model, *, norm: str = "linf", seed: int = 0):
        self.model = model
        self.norm = check_norm(norm)
        self.seed = int(seed)

    def run(self, x, y, eps: float, index=None) -> AttackResult:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, x, y, eps: float, index=None) -> AttackResult:
        return self.run(x, y, eps, index)
