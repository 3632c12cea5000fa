"""One-step least-likely class (Kurakin et al. 2016), proposal eq. (6).

x' = clip(x - eps * sign(grad_x J(x, y_LL))), y_LL = argmin_y p(y | x), with J the
cross-entropy. A targeted attack: it ignores the true label.
"""

from __future__ import annotations

import tensorflow as tf

from .base import OneStepAttack, Prepared


class StepLL(OneStepAttack):
    name = "step_ll"

    def _prepare(self, x, y, index) -> Prepared:
        logits = self.forward(x)
        y_ll = tf.argmin(logits, axis=1, output_type=tf.int64)
        _, grad = self.gradient(x, y_ll)
        return Prepared(x, logits, -tf.sign(grad))
