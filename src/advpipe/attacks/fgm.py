"""FGM / fast gradient L2 (Kurakin et al. 2016), proposal eq. (3).

x' = clip(x + s * g / ||g||_2), one L2 norm per example, where ``s`` depends on
``norm``:

* ``"l2"``: s = eps, the L2 norm of the step in [0, 1] pixel space;
* ``"linf_equivalent"``: s = eps * sqrt(d), the L2 norm of an FGSM step of the same
  eps (d = number of input values), so FGM and FGSM compare at equal eps.
"""

from __future__ import annotations

import math

from . import core
from .base import Attack

NORMS = ("l2", "linf_equivalent")


class FGM(Attack):
    name = "fgm"
    reuses_gradient = True

    def __init__(self, model, *, labels: str = "ground_truth", norm: str = "l2", seed: int = 0):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        d = math.prod(model.input_shape[1:])
        self.scale = 1.0 if norm == "l2" else math.sqrt(d)
        super().__init__(model, labels=labels, seed=seed)

    def direction(self, x, y):
        return core.fgm_direction(self.model, x, y, self.scale)
