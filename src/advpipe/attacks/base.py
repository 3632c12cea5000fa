"""The shared base of the one-step attacks (FGSM, FGM, R-FGSM, step-LL).

An attack works on a batch in two steps, so that a sweep over several epsilons
computes the expensive part once:

* :meth:`OneStepAttack.prepare` runs the model on the clean batch (its logits give
  the clean accuracy for free) and computes whatever does not depend on epsilon --
  for FGSM, FGM and step-LL that is the whole gradient direction;
* :meth:`OneStepAttack.perturb` returns the clipped adversarial batch for one
  epsilon (a single fused multiply-add for the gradient-reuse attacks).

Both run inside TensorFlow functions compiled once per attack object, with a free
batch dimension, so no graph is ever rebuilt per image or per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from ..evaluation import compiled_forward, image_spec

LABEL_MODES = ("ground_truth", "predicted")


class LossGradient:
    """Compiled ``(logits, dJ/dx)`` for the summed softmax cross-entropy of a model.

    The loss is summed over the batch (as Foolbox does), so each example's
    gradient is independent of the batch it is in.
    """

    def __init__(self, model):
        spec = image_spec(model)

        @tf.function(input_signature=[spec, tf.TensorSpec([None], tf.int64)])
        def value_and_grad(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = model(x, training=False)
                loss = tf.reduce_sum(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            return logits, tape.gradient(loss, x)

        self._fn = value_and_grad

    def __call__(self, x, y):
        return self._fn(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y, tf.int64))


@dataclass
class Prepared:
    """What :meth:`OneStepAttack.prepare` hands to :meth:`OneStepAttack.perturb`."""

    x: tf.Tensor
    clean_logits: tf.Tensor
    state: Any


class OneStepAttack:
    """Base class. Subclasses set :attr:`name` and implement ``_prepare``/``_perturb``.

    ``labels="ground_truth"`` attacks the given labels; ``"predicted"`` attacks the model's
    own clean prediction instead (avoids label leaking, Kurakin et al. 2016).
    """

    name = "one_step"

    def __init__(self, model, *, labels: str = "ground_truth"):
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
        self.model = model
        self.labels = labels
        self.forward = compiled_forward(model)
        self.gradient = LossGradient(model)
        spec = image_spec(model)
        self._clip_step = tf.function(_clip_step, input_signature=[
            spec, spec, tf.TensorSpec([], tf.float32)])

    # -- public API -----------------------------------------------------------------
    def prepare(self, x, y, index=None) -> Prepared:
        """Per-batch work that does not depend on epsilon. ``index``: dataset positions."""
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.convert_to_tensor(np.asarray(y, dtype=np.int64))
        if index is None:
            index = np.arange(x.shape[0])
        return self._prepare(x, y, tf.convert_to_tensor(np.asarray(index, dtype=np.int64)))

    def perturb(self, prepared: Prepared, epsilon: float) -> tf.Tensor:
        """Adversarial batch for one epsilon, clipped to [0, 1]."""
        return self._perturb(prepared, tf.constant(float(epsilon), tf.float32))

    def __call__(self, x, y, epsilons: float | Sequence[float], index=None):
        """Convenience: adversarial examples as NumPy, one array per epsilon."""
        single = np.isscalar(epsilons)
        prepared = self.prepare(x, y, index)
        out = [self.perturb(prepared, e).numpy() for e in ([epsilons] if single else epsilons)]
        return out[0] if single else out

    # -- helpers for subclasses -------------------------------------------------------
    def _attack_labels(self, y, clean_logits):
        if self.labels == "predicted":
            return tf.argmax(clean_logits, axis=1, output_type=tf.int64)
        return y

    def _logits_and_gradient(self, x, y):
        """Clean logits and the loss gradient at ``x`` for the attacked labels."""
        if self.labels == "predicted":
            logits = self.forward(x)
            _, grad = self.gradient(x, self._attack_labels(y, logits))
            return logits, grad
        return self.gradient(x, y)

    def _prepare(self, x, y, index) -> Prepared:  # pragma: no cover - abstract
        raise NotImplementedError

    def _perturb(self, prepared: Prepared, epsilon: tf.Tensor) -> tf.Tensor:
        """Default for gradient-reuse attacks: ``clip(x + eps * direction)``."""
        return self._clip_step(prepared.x, prepared.state, epsilon)


def _clip_step(x, direction, epsilon):
    return tf.clip_by_value(x + epsilon * direction, 0.0, 1.0)
