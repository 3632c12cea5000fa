"""The ε ramp of the robust training methods, and their per-step noise seed.

Training against the full ε from the first step can stall a model that does not yet
classify clean images well. Every method here (PGD-AT, TRADES, fast AT) can therefore
grow ε linearly from 0 over the first ``warmup_steps`` training steps,

    ε(step) = ε · min(1, (step + 1) / warmup_steps),        ε(step) = ε if warmup_steps = 0,

the linear ε ramp-up of Gowal et al. 2018, "On the Effectiveness of Interval Bound
Propagation for Training Verifiably Robust Models" (https://arxiv.org/abs/1810.12715). The
caller converts ``eps_warmup_epochs`` to steps. ``step`` is the global step (0 for the
first step, which therefore trains at ε/warmup_steps, never at 0).

:func:`step_seed` is the stateless seed each method draws its noise from at one step:
``(seed, step·1024 + replica)``, so a run is reproducible, every step draws fresh
noise, and the replicas of a distributed step draw different noise (as
:meth:`advpipe.defenses.adversarial.AdversarialTraining.batch_parts`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _check_warmup(warmup_steps) -> int:
    warmup_steps = int(warmup_steps)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return warmup_steps


def ramped_epsilon(eps, step, warmup_steps):
    """ε·min(1, (step+1)/warmup_steps) as a float32 scalar tensor; pure TensorFlow.

    ``step`` is an int (or int64 scalar tensor, inside a compiled step); ``eps`` and
    ``warmup_steps`` are Python numbers. ``warmup_steps`` 0: ε at every step.
    """
    warmup_steps = _check_warmup(warmup_steps)
    eps = tf.constant(float(eps), tf.float64)
    if warmup_steps == 0:
        return tf.cast(eps, tf.float32)
    progress = tf.cast(tf.cast(step, tf.int64) + 1, tf.float64) / float(warmup_steps)
    return tf.cast(eps * tf.minimum(progress, 1.0), tf.float32)


def ramped_epsilon_value(eps, step, warmup_steps) -> float:
    """The NumPy twin of :func:`ramped_epsilon` (for logs and tests): the same float32."""
    warmup_steps = _check_warmup(warmup_steps)
    if warmup_steps == 0:
        return float(np.float32(eps))
    return float(np.float32(float(eps) * min(1.0, (int(step) + 1) / warmup_steps)))


def step_seed(seed, step):
    """The stateless seed (an int64 ``[2]`` tensor) for one replica's noise at ``step``."""
    from .loop import micro_batch_index  # 0 without gradient accumulation

    context = tf.distribute.get_replica_context()
    replica = tf.cast(context.replica_id_in_sync_group if context else 0, tf.int64)
    micro = tf.cast(micro_batch_index(), tf.int64) * 2**40  # each micro-batch its own noise
    return tf.stack(
        [tf.constant(int(seed), tf.int64), tf.cast(step, tf.int64) * 1024 + replica + micro]
    )
