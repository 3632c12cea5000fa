"""R-FGSM (Tramer et al. 2017), proposal eqs. (4)-(5).

    x_hat = x + alpha * sign(xi),   xi ~ N(0, I)
    x'    = clip(x + alpha * sign(xi) + (eps - alpha) * sign(grad J(clip(x_hat), y)))

``alpha = alpha_fraction * eps`` (the paper's alpha = eps/2 by default). The noisy
point is clipped to [0, 1] before the model sees it (every model takes [0, 1]
inputs); before the final clip, x' - x is exactly alpha*sign(xi) + (eps-alpha)*sign(g).

The noise of an example depends only on its stateless seed: in the sweep
``(seed, dataset index)``, so results do not depend on the batch size and one image
sees the same sign(xi) at every eps; in training ``(seed, step·m + i)``, so it
differs at every step. The gradient is taken at x_hat, which moves with eps: one
gradient per eps.
"""

from __future__ import annotations

import tensorflow as tf

from . import core
from .base import Attack


class RFGSM(Attack):
    name = "rfgsm"

    def __init__(
        self, model, *, labels: str = "ground_truth", alpha_fraction: float = 0.5, seed: int = 0
    ):
        if not 0.0 < alpha_fraction < 1.0:
            raise ValueError(
                f"alpha_fraction must be in (0, 1) (alpha < eps), got {alpha_fraction}"
            )
        self.alpha_fraction = float(alpha_fraction)
        super().__init__(model, labels=labels, seed=seed)

    def noise(self, x, seeds):
        """sign(xi) for each example of ``x`` from its seed."""
        shape = tf.shape(x)[1:]
        return tf.map_fn(lambda s: core.noise_sign(shape, s), seeds, fn_output_signature=tf.float32)

    def generate(self, x, y, eps, seeds=None):
        return self.unclipped_tf(x, y, eps, seeds)[0]

    def unclipped_tf(self, x, y, eps, seeds):
        return core.rfgsm(
            self.model, x, self.attack_labels(x, y), eps, self.noise(x, seeds), self.alpha_fraction
        )

    def unclipped(self, prepared, epsilon) -> tuple[tf.Tensor, tf.Tensor]:
        """(clipped x', the perturbation eta before clipping) for one eps."""
        y, seeds = prepared.state
        return self.unclipped_tf(prepared.x, y, tf.constant(float(epsilon), tf.float32), seeds)
