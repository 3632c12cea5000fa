"""FGSM (Goodfellow et al. 2014), proposal eq. (2): x' = clip(x + eps * sign(grad_x J(x, y)))."""

from __future__ import annotations

from . import core
from .base import Attack


class FGSM(Attack):
    name = "fgsm"
    reuses_gradient = True

    def direction(self, x, y):
        return core.fgsm_direction(self.model, x, y)
