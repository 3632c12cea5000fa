"""Learning-rate schedules over a training run, as one pure function of the step.

:class:`~advpipe.defenses.loop.Trainer` assigns ``learning_rate_at(step, total_steps, ...)``
to the optimizer before every optimizer step when ``TrainConfig.lr_schedule`` is not
``"constant"`` (``total_steps``: epochs x steps per epoch, capped by ``max_steps``):

* ``constant``: ``peak`` throughout (the loop's ``lr_decay_at`` halving applies to this
  schedule only, per epoch, as before);
* ``cosine``: cosine decay from ``peak`` at step 0 towards 0 at ``total_steps``
  (Loshchilov & Hutter 2017, SGDR without restarts, https://arxiv.org/abs/1608.03983),
  ``peak · ½ (1 + cos(π t))`` with ``t = step / total_steps``;
* ``cyclic``: the one-cycle schedule of fast adversarial training (Wong, Rice & Kolter
  2020, https://arxiv.org/abs/2001.03994, after Smith & Topin 2018,
  https://arxiv.org/abs/1708.07120): linear from 0 up to ``peak`` at the fraction
  ``peak_at`` of the run, then linear down to 0 at its end; as in Wong et al.'s code the
  value used at step ``s`` is the one at ``t = (s + 1) / total_steps``, so the first step
  already moves and the last one has a learning rate of 0;
* ``step``: piecewise constant, ``peak`` then divided by 10 at 50 % and again at 75 % of
  the steps, the schedule of PGD adversarial training (Madry et al. 2018,
  https://arxiv.org/abs/1706.06083; Rice, Wong & Kolter 2020,
  https://arxiv.org/abs/2002.11569).
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "cyclic", "step")
STEP_MILESTONES = (0.5, 0.75)  # fractions of the run where ``step`` divides by 10


def learning_rate_at(
    step: int, total_steps: int, *, schedule: str, peak: float, peak_at: float = 0.4
) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a ``total_steps`` run."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0.0 <= peak_at <= 1.0:
        raise ValueError(f"lr_peak_at must be in [0, 1], got {peak_at}")
    if schedule == "constant":
        return float(peak)
    if schedule == "cosine":
        t = min(max(step / total_steps, 0.0), 1.0)
        return float(peak * 0.5 * (1.0 + math.cos(math.pi * t)))
    if schedule == "cyclic":
        t = min(max((step + 1) / total_steps, 0.0), 1.0)
        if t <= peak_at:
            return float(peak * (t / peak_at if peak_at > 0 else 1.0))
        return float(peak * (1.0 - t) / (1.0 - peak_at))
    passed = sum(step >= m * total_steps for m in STEP_MILESTONES)
    return float(peak * 0.1**passed)
