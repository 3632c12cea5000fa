"""Deep Defense (Yan, Guo & Zhang 2018), proposal eqs. (10)–(13).

The regulariser is built from the DeepFool perturbation itself, computed inside the
training step by :func:`advpipe.attacks.deepfool.deepfool_tf` with
``differentiable=True`` (the graph of every DeepFool step is kept, so the loss is
differentiated through r with respect to the weights):

    L = 1/m [ Σ_i CE(x_i, y_i) + μ Σ_{i∈T} exp(−c‖r_i‖₂/‖x_i‖₂) + μ Σ_{i∈F} exp(d‖r_i‖₂/‖x_i‖₂) ]

T / F are the examples the current model classifies correctly / incorrectly (eqs.
12–13). For T, DeepFool pushes each example off its prediction towards the nearest
other class (``candidates`` classes by logit); for F, towards its true label (as in
the authors' code). Norms are in [0, 1] pixel space. The authors' defaults: μ = 15,
c = 25, d = 5, 5 DeepFool steps, overshoot 0.02, SGD with momentum 0.9, lr 5e-4,
batch norm frozen. The sums are divided by the batch size m (the authors average
over the batch); that only rescales the learning rate.
"""

from __future__ import annotations

import tensorflow as tf

from ..attacks.deepfool import deepfool_tf
from .loop import correct, cross_entropy


def regulariser(r_norm_ratio, is_correct, mu, c, d):
    """Per-example μ·exp(−c·t) for correct, μ·exp(d·t) for wrong examples; t = ‖r‖/‖x‖."""
    return mu * tf.where(is_correct, tf.exp(-c * r_norm_ratio), tf.exp(d * r_norm_ratio))


class DeepDefense:
    """The Deep Defense loss for :class:`~advpipe.defenses.loop.Trainer`."""

    name = "deep_defense"

    def __init__(
        self,
        *,
        mu: float = 15.0,
        c: float = 25.0,
        d: float = 5.0,
        steps: int = 5,
        overshoot: float = 0.02,
        candidates: int = 10,
    ):
        self.mu, self.c, self.d = float(mu), float(c), float(d)
        self.steps, self.overshoot, self.candidates = int(steps), float(overshoot), int(candidates)

    def perturbation_ratio(self, model, x, y, logits):
        """‖r‖₂/‖x‖₂ per example, r from a differentiable DeepFool; and the T mask."""
        pred = tf.argmax(logits, axis=1, output_type=tf.int64)
        is_correct = tf.equal(pred, y)
        targets = tf.where(is_correct, tf.constant(-1, tf.int64), y)
        _, r = deepfool_tf(
            lambda t: model(t, training=False),
            x,
            steps=self.steps,
            candidates=self.candidates,
            overshoot=self.overshoot,
            differentiable=True,
            targets=targets,
            clean_logits=logits,
        )
        flat = lambda t: tf.reshape(t, [tf.shape(t)[0], -1])  # noqa: E731
        r_norm = tf.sqrt(tf.reduce_sum(tf.square(flat(r)), axis=1) + 1e-12)
        return r_norm / tf.norm(flat(x), axis=1), is_correct

    def loss(self, model, x, y, step):
        m = tf.cast(tf.shape(x)[0], tf.float32)
        logits = model(x, training=True)
        ce = cross_entropy(y, logits)
        ratio, is_correct = self.perturbation_ratio(model, x, y, model(x, training=False))
        reg = regulariser(ratio, is_correct, self.mu, self.c, self.d)
        loss = (tf.reduce_sum(ce) + tf.reduce_sum(reg)) / m
        stats = {
            "loss_sum": loss * m,
            "n": m,
            "clean_correct": correct(y, logits),
            "clean_n": m,
            "adv_correct": tf.constant(0.0),
            "adv_n": tf.constant(0.0),
        }
        return loss, stats
