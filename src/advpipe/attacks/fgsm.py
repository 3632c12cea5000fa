"""FGSM (Goodfellow et al. 2014), proposal eq. (2): x' = clip(x + eps * sign(grad_x J(x, y)))."""

from __future__ import annotations

import tensorflow as tf

from .base import OneStepAttack, Prepared


class FGSM(OneStepAttack):
    name = "fgsm"

    def _prepare(self, x, y, index) -> Prepared:
        logits, grad = self._logits_and_gradient(x, y)
        return Prepared(x, logits, tf.sign(grad))
