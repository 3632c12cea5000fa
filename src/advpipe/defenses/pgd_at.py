"""PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks", https://arxiv.org/abs/1706.06083).

The saddle-point objective min_θ E[max_{‖δ‖∞ ≤ ε} CE(x + δ, y)], with the inner maximum
approximated by PGD made *from the current weights* inside the training step: a random
start uniform in the L∞ ε-ball, then ``steps`` signed-gradient steps of size
``rel_stepsize``·ε, each projected onto the ε-ball around x and onto [0, 1]
(:func:`advpipe.attacks.core.pgd`, the attack the evaluation uses). The examples are
made with the model in inference mode (``training=False``, as every attack) and are
constants of the outer loss (no gradient flows through their generation):

    L = 1/m Σ_i CE(x'_i, y_i),   computed with ``training=True``.

With ``clean_fraction`` > 0 (a mixed batch, as in the adversarial training of Goodfellow
et al. 2015 and Kurakin et al. 2016, with equal weights) the last round(clean_fraction·m)
examples of each replica's batch stay clean and the loss is the mean over the mixed batch.

Defaults: Madry et al.'s CIFAR-10 attack, 7 steps of 2/255 for ε = 8/255, i.e.
``rel_stepsize`` 0.25 (their 2.5·ε/steps rule of thumb would give 0.36). ε follows
:func:`advpipe.defenses.epsilon_ramp.ramped_epsilon`; the random start is drawn from the
stateless seed :func:`~advpipe.defenses.epsilon_ramp.step_seed`.
"""

from __future__ import annotations

import tensorflow as tf

from ..attacks import core
from .epsilon_ramp import ramped_epsilon, step_seed
from .loop import correct, cross_entropy


class PGDAdversarialTraining:
    """The PGD-AT loss for :class:`~advpipe.defenses.loop.Trainer`."""

    name = "pgd_at"

    def __init__(
        self,
        *,
        epsilon: float,
        steps: int = 7,
        rel_stepsize: float = 0.25,
        random_start: bool = True,
        clean_fraction: float = 0.0,
        warmup_steps: int = 0,
        seed: int = 0,
    ):
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if rel_stepsize <= 0:
            raise ValueError(f"rel_stepsize must be > 0, got {rel_stepsize}")
        if not 0.0 <= clean_fraction < 1.0:
            raise ValueError(f"clean_fraction must be in [0, 1), got {clean_fraction}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.epsilon = float(epsilon)
        self.steps = int(steps)
        self.rel_stepsize = float(rel_stepsize)
        self.random_start = bool(random_start)
        self.clean_fraction = float(clean_fraction)
        self.warmup_steps = int(warmup_steps)
        self.seed = int(seed)

    def epsilon_at(self, step):
        """The ramped ε at ``step`` (a float32 scalar tensor; ``float()`` it for a log)."""
        return ramped_epsilon(self.epsilon, step, self.warmup_steps)

    def adversarial_count(self, m):
        """k = m − round(clean_fraction·m): the first k examples of a batch are attacked."""
        m = tf.convert_to_tensor(m, tf.int32)
        clean = tf.cast(tf.round(self.clean_fraction * tf.cast(m, tf.float32)), tf.int32)
        return m - clean

    def adversarial_examples(self, model, x, y, step):
        """``(k, x')``: the first k examples replaced by PGD examples from the current weights."""
        k = self.adversarial_count(tf.shape(x)[0])
        eps = self.epsilon_at(step)
        x_attacked = x[:k]
        start = (
            core.uniform_start(tf.shape(x_attacked), eps, step_seed(self.seed, step))
            if self.random_start
            else None
        )
        adv = core.pgd(model, x_attacked, y[:k], eps, self.steps, self.rel_stepsize, start)
        return k, tf.stop_gradient(adv)

    def loss(self, model, x, y, step):
        m = tf.shape(x)[0]
        k, x_adv = self.adversarial_examples(model, x, y, step)
        logits = model(tf.concat([x_adv, x[k:]], axis=0), training=True)
        per_example = cross_entropy(y, logits)
        n = tf.cast(m, tf.float32)
        stats = {
            "loss_sum": tf.reduce_sum(per_example),
            "n": n,
            "clean_correct": correct(y[k:], logits[k:]),
            "clean_n": tf.cast(m - k, tf.float32),
            "adv_correct": correct(y[:k], logits[:k]),
            "adv_n": tf.cast(k, tf.float32),
        }
        return tf.reduce_sum(per_example) / n, stats
