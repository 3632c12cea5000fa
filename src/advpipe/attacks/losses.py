"""The per-example losses that APGD maximises (Croce & Hein, ICML 2020).

F. Croce and M. Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690, Section 4
(the Difference of Logits Ratio, DLR) and the authors' ``autoattack/autopgd_base.py``.

Every loss maps logits ``z`` ``[batch, classes]`` and int64 labels to one value per
example (``[batch]``), pure TensorFlow; the attack *maximises* it. With ``π`` the classes
sorted by decreasing logit (``z_π1 ≥ z_π2 ≥ …``):

* ``ce``: softmax cross-entropy ``CE(z, y)``;
* ``ce_targeted``: ``−CE(z, t)`` (maximising it pulls the target ``t`` up);
* ``dlr``: ``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)``, invariant to shifts and
  scalings of the logits;
* ``dlr_targeted``: ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)``.

The ``1e-12`` in the denominators is the authors'; it keeps a constant model (all logits
equal: numerator and denominator both 0) at a finite loss of 0. :data:`MIN_CLASSES` says
how many classes each loss needs (DLR reads the third, targeted DLR the fourth logit).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

#: The authors' guard against a zero denominator in the DLR losses.
DLR_EPS = 1e-12


def _denominator(gap):
    """``gap + 1e-12``, ``gap ≥ 0`` a difference of sorted logits. The ``maximum`` (a no-op
    here) keeps Grappler from re-associating ``(a − b) + 1e-12`` into ``a − (b − 1e-12)``
    in compiled graphs, where the 1e-12 is lost to float32 rounding and a constant model's
    DLR becomes 0/0 = NaN."""
    return tf.maximum(gap, 0.0) + DLR_EPS


def _true_logit(logits, y):
    return tf.gather(logits, tf.cast(y, tf.int32), axis=1, batch_dims=1)


def ce(logits, y):
    """Softmax cross-entropy ``CE(z, y)`` per example."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y, tf.int64), logits=logits
    )


def ce_targeted(logits, y, target):
    """``−CE(z, target)`` per example (``y`` unused: the same signature as the others)."""
    del y
    return -ce(logits, target)


def dlr(logits, y):
    """Untargeted DLR: ``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)``."""
    top = tf.math.top_k(logits, k=3).values
    is_true = tf.one_hot(tf.cast(y, tf.int32), tf.shape(logits)[1], on_value=True, off_value=False)
    best_other = tf.reduce_max(tf.where(is_true, logits.dtype.min, logits), axis=1)
    return -(_true_logit(logits, y) - best_other) / _denominator(top[:, 0] - top[:, 2])


def dlr_targeted(logits, y, target):
    """Targeted DLR: ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)``."""
    top = tf.math.top_k(logits, k=4).values
    margin = _true_logit(logits, y) - _true_logit(logits, target)
    return -margin / _denominator(top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]))


#: name → loss function; the targeted ones take ``(logits, y, target)``, the others
#: ``(logits, y)``.
LOSSES: dict[str, Callable] = {
    "ce": ce,
    "dlr": dlr,
    "ce_targeted": ce_targeted,
    "dlr_targeted": dlr_targeted,
}

#: name → the fewest classes the loss is defined for.
MIN_CLASSES: dict[str, int] = {"ce": 2, "dlr": 3, "ce_targeted": 2, "dlr_targeted": 4}

#: The losses that take a target class.
TARGETED = frozenset({"ce_targeted", "dlr_targeted"})


def check_loss(name: str, num_classes: int) -> str:
    """``name`` if it is a known loss defined for ``num_classes`` classes; else ValueError."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {name!r}")
    if num_classes < MIN_CLASSES[name]:
        raise ValueError(
            f"loss {name!r} needs at least {MIN_CLASSES[name]} classes, the model has {num_classes}"
        )
    return name


def targeted_form(name: str) -> Callable:
    """The loss as ``f(logits, y, target)`` whether or not it is targeted."""
    fn = LOSSES[name]
    return fn if name in TARGETED else (lambda logits, y, target: fn(logits, y))
