"""Early stopping on catastrophic overfitting (Wong, Rice & Kolter 2020).

Single-step adversarial training (FGSM with a random start, "fast" adversarial training)
can within a few steps turn a robust model into one whose robust accuracy under PGD falls
to near 0 while its accuracy against the training attack rises: catastrophic overfitting
(Wong et al. 2020, https://arxiv.org/abs/2001.03994, Section 5.3 and Appendix D: they
check PGD accuracy on a training minibatch and, when it drops, stop and keep the model
from before the drop). :class:`OverfittingGuard` is that check:
:class:`~advpipe.defenses.loop.Trainer` calls it ``guard_checks_per_epoch`` times per
epoch. At each call it asks ``check()`` for the robust accuracy (the caller's choice; in
the paper's spirit PGD on a fixed held batch), keeps a copy of the weights, and when the
accuracy is more than ``drop`` (absolute) below the best seen so far it restores the
weights copied at the previous check and tells the loop to stop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class OverfittingGuard:
    """Watch ``check()`` (robust accuracy in [0, 1]) and undo a collapse of more than ``drop``.

    ``checks``: every check so far (``{"step", "robust_acc"}``); ``event``: ``None``, or
    after a collapse ``{"step", "before", "after", "best", "restored_step"}`` (the check
    that failed, the accuracy at the previous check, the accuracy now, the best seen and
    the step whose weights were restored).
    """

    def __init__(
        self,
        *,
        check: Callable[[], float],
        drop: float = 0.2,
        log: Callable[[str], None] | None = None,
    ):
        if not 0.0 < drop <= 1.0:
            raise ValueError(f"guard_drop must be in (0, 1], got {drop}")
        self.check = check
        self.drop = float(drop)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.checks: list[dict] = []
        self.event: dict | None = None
        self.best = float("-inf")
        self._saved: list | None = None  # the weights at the previous check

    def __call__(self, model, step: int) -> bool:
        """Check ``model`` after optimizer step ``step``; ``True``: it collapsed, the weights
        of the previous check are back in ``model`` and training should stop."""
        acc = float(self.check())
        previous = self.checks[-1] if self.checks else None
        self.checks.append({"step": int(step), "robust_acc": acc})
        if previous is not None and acc < self.best - self.drop:
            model.set_weights(self._saved)
            self.event = {
                "step": int(step),
                "before": previous["robust_acc"],
                "after": acc,
                "best": self.best,
                "restored_step": previous["step"],
            }
            self.log(
                f"catastrophic overfitting at step {step}: robust acc {acc:.3f}, more than "
                f"{self.drop:g} below the best {self.best:.3f}; stopping with the weights of "
                f"step {previous['step']} (robust acc {previous['robust_acc']:.3f})"
            )
            return True
        self._saved = model.get_weights()
        self.best = max(self.best, acc)
        return False
