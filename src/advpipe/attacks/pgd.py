"""PGD (Madry et al. 2018, https://arxiv.org/abs/1706.06083) / BIM (Kurakin et al. 2016):
the iterative attack, L∞ or L2.

``steps`` iterations of x ← Π(x + rel_stepsize·ε·d), d = sign(∇ₓJ(x, y)) (``norm="linf"``)
or ∇ₓJ/‖∇ₓJ‖₂ (``norm="l2"``), Π the projection onto the ε-ball around the clean image
and onto [0, 1]; with ``random_start`` the first point is uniform in the ε-ball (PGD),
without it the clean image (BIM). The step size is relative to ε, as in Foolbox's
``LinfPGD`` / ``L2PGD``. One-step attacks are weak
against models trained on them (gradient masking); this is the attack that tells.
"""

from __future__ import annotations

import tensorflow as tf

from . import core
from .base import Attack


class PGD(Attack):
    name = "pgd"

    def __init__(
        self,
        model,
        *,
        labels: str = "ground_truth",
        steps: int = 10,
        rel_stepsize: float = 0.25,
        random_start: bool = True,
        norm: str = "linf",
        seed: int = 0,
    ):
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        self.norm = norm
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if rel_stepsize <= 0:
            raise ValueError(f"rel_stepsize must be > 0, got {rel_stepsize}")
        self.steps = int(steps)
        self.rel_stepsize = float(rel_stepsize)
        self.random_start = bool(random_start)
        super().__init__(model, labels=labels, seed=seed)

    def generate(self, x, y, eps, seeds=None):
        start = None
        if self.random_start:
            shape = tf.shape(x)[1:]
            eps_b = tf.broadcast_to(tf.cast(eps, tf.float32), tf.shape(x)[:1])
            start = tf.map_fn(
                lambda a: core.uniform_start(shape, a[1], a[0], self.norm),
                (seeds, eps_b),
                fn_output_signature=tf.float32,
            )
        return core.pgd(
            self.model,
            x,
            self.attack_labels(x, y),
            eps,
            self.steps,
            self.rel_stepsize,
            start,
            self.norm,
        )
