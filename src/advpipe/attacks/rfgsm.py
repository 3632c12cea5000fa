"""R-FGSM (Tramer et al. 2017), proposal eqs. (4)-(5).

    x_hat = x + alpha * sign(xi),   xi ~ N(0, I)
    x'    = clip(x + alpha * sign(xi) + (eps - alpha) * sign(grad J(clip(x_hat), y)))

``alpha = alpha_fraction * eps`` (the paper's alpha = eps/2 by default). The noisy
point is clipped to [0, 1] before the model sees it (every model takes [0, 1]
inputs); before the final clip, x' - x is exactly alpha*sign(xi) + (eps-alpha)*sign(g).

The noise of image ``i`` depends only on ``(seed, i)`` (stateless RNG), so results
do not depend on the batch size and one image sees the same sign(xi) at every eps.
The gradient is taken at x_hat, which moves with eps: one gradient per eps.
"""

from __future__ import annotations

import tensorflow as tf

from ..evaluation import image_spec
from .base import OneStepAttack, Prepared


class RFGSM(OneStepAttack):
    name = "rfgsm"

    def __init__(self, model, *, labels: str = "ground_truth", alpha_fraction: float = 0.5,
                 seed: int = 0):
        if not 0.0 < alpha_fraction < 1.0:
            raise ValueError(f"alpha_fraction must be in (0, 1) (alpha < eps), got {alpha_fraction}")
        super().__init__(model, labels=labels)
        self.alpha_fraction = float(alpha_fraction)
        self.seed = int(seed)
        shape = model.input_shape[1:]
        spec = image_spec(model)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
        def noise_sign(index):
            seeds = tf.stack([tf.fill(tf.shape(index), tf.constant(self.seed, tf.int64)), index], 1)
            return tf.map_fn(lambda s: tf.sign(tf.random.stateless_normal(shape, seed=s)),
                             seeds, fn_output_signature=tf.float32)

        grad_fn = self.gradient._fn

        @tf.function(input_signature=[spec, spec, tf.TensorSpec([None], tf.int64),
                                      tf.TensorSpec([], tf.float32)])
        def step(x, noise, y, eps):
            alpha = self.alpha_fraction * eps
            x_hat = tf.clip_by_value(x + alpha * noise, 0.0, 1.0)
            _, grad = grad_fn(x_hat, y)
            eta = alpha * noise + (eps - alpha) * tf.sign(grad)
            return tf.clip_by_value(x + eta, 0.0, 1.0), eta

        self._noise_sign = noise_sign
        self._step = step

    def _prepare(self, x, y, index) -> Prepared:
        logits = self.forward(x)
        labels = self._attack_labels(y, logits)
        return Prepared(x, logits, (self._noise_sign(index), labels))

    def _perturb(self, prepared: Prepared, epsilon: tf.Tensor) -> tf.Tensor:
        return self.unclipped(prepared, epsilon)[0]

    def unclipped(self, prepared: Prepared, epsilon) -> tuple[tf.Tensor, tf.Tensor]:
        """(clipped x', the perturbation eta before clipping) for one eps."""
        noise, labels = prepared.state
        return self._step(prepared.x, noise, labels, tf.constant(float(epsilon), tf.float32))
