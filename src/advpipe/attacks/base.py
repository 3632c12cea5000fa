"""The shared base of the ε-parameterised attacks (FGSM, FGM, R-FGSM, step-LL, PGD).

Each attack has one pure-TensorFlow entry point, :meth:`Attack.generate`
``(x, y, eps, seeds) -> x'`` (ε a scalar or one value per example), built from
:mod:`advpipe.attacks.core`. The trainer calls it inside its compiled training step;
the ε sweep calls the same code through two compiled helpers, so that the
expensive part is computed once per batch:

* :meth:`Attack.prepare` runs the model on the clean batch (its logits give the clean
  accuracy for free) and, for FGSM, FGM and step-LL, the whole gradient direction;
* :meth:`Attack.perturb` returns the clipped adversarial batch for one ε (a single
  fused multiply-add for the gradient-reusing attacks).

Randomised attacks (R-FGSM's noise, PGD's random start) draw their noise from
per-example stateless seeds ``[batch, 2]``: the sweep uses ``(seed, dataset index)``,
so results do not depend on the batch size; the trainer uses ``(seed, step·m + i)``,
so the noise differs at every training step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from ..inference import compiled_forward, image_spec
from ..runtime import compiled
from ..sharding import sharded
from . import core

LABEL_MODES = ("ground_truth", "predicted")
SEED_SPEC = tf.TensorSpec([None, 2], tf.int64)


class LossGradient:
    """Compiled ``(logits, dJ/dx)`` for the summed softmax cross-entropy of a model."""

    def __init__(self, model):
        self._fn = sharded(
            compiled(
                lambda x, y: core.loss_gradient(model, x, y),
                input_signature=[image_spec(model), tf.TensorSpec([None], tf.int64)],
            )
        )

    def __call__(self, x, y):
        return self._fn(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y, tf.int64))


@dataclass
class Prepared:
    """What :meth:`Attack.prepare` hands to :meth:`Attack.perturb`."""

    x: tf.Tensor
    clean_logits: tf.Tensor
    state: Any


def example_seeds(seed: int, index) -> tf.Tensor:
    """Per-example stateless seeds ``[(seed, index_i)]`` as an int64 ``[batch, 2]`` tensor."""
    index = tf.convert_to_tensor(np.asarray(index, dtype=np.int64))
    return tf.stack([tf.fill(tf.shape(index), tf.constant(int(seed), tf.int64)), index], axis=1)


class Attack:
    """Base class. Subclasses set :attr:`name` and implement :meth:`generate`.

    Gradient-reusing attacks implement :meth:`direction` instead (``generate`` is then
    ``clip(x + ε·direction)``). ``labels="ground_truth"`` attacks the given labels;
    ``"predicted"`` attacks the model's own clean prediction (avoids label leaking,
    Kurakin et al. 2016).
    """

    name = "attack"
    reuses_gradient = False  # True: direction() does not depend on eps

    def __init__(self, model, *, labels: str = "ground_truth", seed: int = 0):
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
        self.model = model
        self.labels = labels
        self.seed = int(seed)
        self.forward = compiled_forward(model)
        spec = image_spec(model)
        eps = tf.TensorSpec([], tf.float32)
        labels_spec = tf.TensorSpec([None], tf.int64)
        if self.reuses_gradient:
            self._direction_c = sharded(
                compiled(self._direction_with_labels, input_signature=[spec, labels_spec])
            )
            self._step_c = sharded(
                compiled(core.step, input_signature=[spec, spec, eps]), replicated=(2,)
            )
        else:
            self._generate_c = sharded(
                compiled(self.generate, input_signature=[spec, labels_spec, eps, SEED_SPEC]),
                replicated=(2,),
            )

    # -- the pure-TensorFlow entry point ------------------------------------------------
    def attack_labels(self, x, y, logits=None):
        """The labels the attack pushes away from (true or predicted), as a tensor."""
        if self.labels == "predicted":
            return core.predicted(self.model(x, training=False) if logits is None else logits)
        return y

    def generate(self, x, y, eps, seeds=None):
        """Adversarial ``x`` (clipped to [0, 1]); ``eps`` scalar or ``[batch]``; pure TF."""
        return core.step(x, self._direction_with_labels(x, y)[1], eps)

    def direction(self, x, y):  # pragma: no cover - abstract for gradient-reusing attacks
        """``(clean logits, direction)`` for the attacked labels ``y``."""
        raise NotImplementedError

    def _direction_with_labels(self, x, y):
        if self.labels == "predicted":
            return self.direction(x, self.attack_labels(x, y))
        return self.direction(x, y)

    # -- the sweep: prepare once per batch, perturb per eps -----------------------------
    def prepare(self, x, y, index=None) -> Prepared:
        """Per-batch work that does not depend on epsilon. ``index``: dataset positions."""
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.convert_to_tensor(np.asarray(y, dtype=np.int64))
        if index is None:
            index = np.arange(x.shape[0])
        if self.reuses_gradient:
            logits, direction = self._direction_c(x, y)
            return Prepared(x, logits, direction)
        return Prepared(x, self.forward(x), (y, example_seeds(self.seed, index)))

    def perturb(self, prepared: Prepared, epsilon: float) -> tf.Tensor:
        """Adversarial batch for one epsilon, clipped to [0, 1]."""
        eps = tf.constant(float(epsilon), tf.float32)
        if self.reuses_gradient:
            return self._step_c(prepared.x, prepared.state, eps)
        y, seeds = prepared.state
        return self._generate_c(prepared.x, y, eps, seeds)

    def __call__(self, x, y, epsilons: float | Sequence[float], index=None):
        """Convenience: adversarial examples as NumPy, one array per epsilon."""
        single = np.isscalar(epsilons)
        prepared = self.prepare(x, y, index)
        out = [self.perturb(prepared, e).numpy() for e in ([epsilons] if single else epsilons)]
        return out[0] if single else out
