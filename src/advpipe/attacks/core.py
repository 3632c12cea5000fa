"""The attacks as pure TensorFlow: the one code path the ε sweep and the trainer share.

Every function here takes tensors and returns tensors: no NumPy, no ``.numpy()``,
no Python control flow on values, so each can run inside a compiled training step
(where the model's weights change between calls: the examples always come from
the *current* weights). ``eps`` is a scalar tensor or one value per example
(shape ``[batch]``); images are float32 in [0, 1], NHWC; labels int64.

``model`` is any callable ``model(x, training=False) -> logits`` (a Keras model).
The loss is the softmax cross-entropy summed over the batch, so each example's
gradient does not depend on the batch it is in (as in Foolbox).
"""

from __future__ import annotations

import tensorflow as tf


def per_example(eps, x):
    """Broadcast a scalar or per-example ``eps`` ([batch]) against an NHWC batch."""
    eps = tf.cast(eps, x.dtype)
    return tf.reshape(eps, [-1, 1, 1, 1]) if eps.shape.rank == 1 else eps


def loss_gradient(model, x, y):
    """``(logits, ∇ₓ Σ CE(model(x), y))`` for the summed softmax cross-entropy."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        loss = tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        )
    return logits, tape.gradient(loss, x)


def predicted(logits):
    return tf.argmax(logits, axis=1, output_type=tf.int64)


def least_likely(logits):
    return tf.argmin(logits, axis=1, output_type=tf.int64)


def step(x, direction, eps):
    """``clip(x + eps * direction, 0, 1)``; the step of every gradient-reusing attack."""
    return tf.clip_by_value(x + per_example(eps, x) * direction, 0.0, 1.0)


# ------------------------------------------------------------------ directions
# What a one-step attack adds to x per unit of ε. They depend on x and the labels
# only, so an ε sweep computes them once per batch and reuses them for every ε.


def fgsm_direction(model, x, y):
    """FGSM, eq. (2): sign(∇ₓJ(x, y)). Returns ``(clean logits, direction)``."""
    logits, grad = loss_gradient(model, x, y)
    return logits, tf.sign(grad)


def fgm_direction(model, x, y, scale=1.0):
    """FGM, eq. (3): ``scale · g/‖g‖₂`` per example (scale 1: ε is the L2 norm)."""
    logits, grad = loss_gradient(model, x, y)
    flat = tf.reshape(grad, [tf.shape(grad)[0], -1])
    norms = tf.maximum(tf.norm(flat, axis=1), 1e-12)
    return logits, grad / tf.reshape(norms, [-1, 1, 1, 1]) * scale


def step_ll_direction(model, x):
    """Step-LL, eq. (6): −sign(∇ₓJ(x, y_LL)), y_LL the least likely class of the clean x."""
    logits = model(x, training=False)
    _, grad = loss_gradient(model, x, least_likely(logits))
    return logits, -tf.sign(grad)


# ------------------------------------------------------------------ whole attacks
def fgsm(model, x, y, eps):
    return step(x, fgsm_direction(model, x, y)[1], eps)


def fgm(model, x, y, eps, scale=1.0):
    return step(x, fgm_direction(model, x, y, scale)[1], eps)


def step_ll(model, x, eps):
    return step(x, step_ll_direction(model, x)[1], eps)


def rfgsm(model, x, y, eps, noise_sign, alpha_fraction=0.5):
    """R-FGSM, eqs. (4)–(5), with ``noise_sign`` = sign(ξ), ξ ~ N(0, I), given by the caller.

    x̂ = clip(x + α·sign(ξ)); x' = clip(x + α·sign(ξ) + (ε − α)·sign(∇J(x̂, y))), α = fraction·ε.
    Returns ``(x', η)`` with η the perturbation before the final clip.
    """
    eps = per_example(eps, x)
    alpha = alpha_fraction * eps
    x_hat = tf.clip_by_value(x + alpha * noise_sign, 0.0, 1.0)
    _, grad = loss_gradient(model, x_hat, y)
    eta = alpha * noise_sign + (eps - alpha) * tf.sign(grad)
    return tf.clip_by_value(x + eta, 0.0, 1.0), eta


def noise_sign(shape, seed):
    """sign(ξ), ξ ~ N(0, I), from a stateless seed (a [2] int tensor): same seed, same noise."""
    return tf.sign(tf.random.stateless_normal(shape, seed=seed))


def pgd(model, x, y, eps, steps, rel_stepsize, start=None, norm="linf"):
    """PGD / BIM (Madry et al. 2018; Kurakin et al. 2016), untargeted, cross-entropy.

    ``steps`` iterations of x ← Π(x + rel_stepsize·ε·d), d = sign(∇J(x, y)) for L∞ or
    ∇J/‖∇J‖₂ for L2, Π projecting onto the ε-ball (of ``norm``) around the clean x and
    onto [0, 1]; ``start`` is the starting point's offset (e.g. :func:`uniform_start`
    for PGD's random start; ``None``: the clean x, BIM).
    """
    eps = per_example(eps, x)
    size = rel_stepsize * eps
    x0 = x
    adv = x0 if start is None else _project(x0, x0 + start, eps, norm)

    def body(i, adv):
        _, grad = loss_gradient(model, adv, y)
        return i + 1, _project(x0, adv + size * _unit(grad, norm), eps, norm)

    # a graph loop, not an unrolled one: one gradient graph whatever the number of steps
    _, adv = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), adv))
    return adv


def _l2(v):
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=[1, 2, 3], keepdims=True))


def _unit(grad, norm):
    """The steepest-ascent direction of unit norm: sign (L∞) or the normalised gradient (L2)."""
    return tf.sign(grad) if norm == "linf" else grad / tf.maximum(_l2(grad), 1e-12)


def _project(x0, adv, eps, norm):
    """Onto the ε-ball of ``norm`` around ``x0`` (``eps`` broadcastable), then onto [0, 1]."""
    delta = adv - x0
    if norm == "linf":
        delta = tf.clip_by_value(delta, -eps, eps)
    else:
        delta = delta * tf.minimum(1.0, eps / tf.maximum(_l2(delta), 1e-12))
    return tf.clip_by_value(x0 + delta, 0.0, 1.0)


def uniform_start(shape, eps, seed, norm="linf"):
    """PGD's random start, from a stateless seed: U(−ε, ε) per pixel (L∞), or a point
    uniform in the L2 ε-ball (a Gaussian direction, radius ε·u^(1/d); Foolbox's L2PGD)."""
    if norm == "linf":
        u = tf.random.stateless_uniform(shape, seed=seed, minval=-1.0, maxval=1.0)
        return u * per_example(eps, u)
    g = tf.random.stateless_normal(shape, seed=seed)
    d = tf.cast(tf.size(g), tf.float32)
    r = tf.random.stateless_uniform([], seed=seed + 1) ** (1.0 / d)
    return g / tf.maximum(tf.norm(g), 1e-12) * r * tf.cast(eps, tf.float32)
