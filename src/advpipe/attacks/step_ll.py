"""One-step least-likely class (Kurakin et al. 2016), proposal eq. (6).

x' = clip(x - eps * sign(grad_x J(x, y_LL))), y_LL = argmin_y p(y | x), with J the
cross-entropy. A targeted attack: it ignores the true label (and ``labels``).
"""

from __future__ import annotations

from . import core
from .base import Attack


class StepLL(Attack):
    name = "step_ll"
    reuses_gradient = True

    def _direction_with_labels(self, x, y):
        return core.step_ll_direction(self.model, x)
