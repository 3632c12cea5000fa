"""Fast adversarial training (Wong, Rice & Kolter 2020, "Fast is better than free:
Revisiting adversarial training", https://arxiv.org/abs/2001.03994), Algorithm 3.

FGSM training made to work by a random start and a step larger than ε: per example

    δ ~ U(−ε, ε)  (then clipped so that x + δ ∈ [0, 1], as in the authors' code),
    δ ← clip(δ + α·ε·sign(∇_δ CE(x + δ, y)), −ε, ε),    x' = clip(x + δ, 0, 1),
    L = 1/m Σ_i CE(x'_i, y_i),  computed with ``training=True``.

That is one step of :func:`advpipe.attacks.core.pgd` with ``rel_stepsize`` α from
:func:`~advpipe.attacks.core.uniform_start`, which is how it is computed here: from the
current weights, in inference mode (``training=False``, as every attack here; the
authors take the gradient in training mode), and a constant of the outer loss.
Default α = 1.25 (the authors' 10/255 for ε = 8/255). The authors' cyclic learning
rate is the loop's business, not this loss's. ε follows
:func:`advpipe.defenses.epsilon_ramp.ramped_epsilon`; δ is drawn from the stateless
seed :func:`~advpipe.defenses.epsilon_ramp.step_seed`.
"""

from __future__ import annotations

import tensorflow as tf

from ..attacks import core
from .epsilon_ramp import ramped_epsilon, step_seed
from .loop import correct, cross_entropy


class FastAdversarialTraining:
    """The fast-AT loss for :class:`~advpipe.defenses.loop.Trainer`."""

    name = "fast_at"

    def __init__(
        self, *, epsilon: float, alpha: float = 1.25, warmup_steps: int = 0, seed: int = 0
    ):
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.epsilon = float(epsilon)
        self.alpha = float(alpha)
        self.warmup_steps = int(warmup_steps)
        self.seed = int(seed)

    def epsilon_at(self, step):
        """The ramped ε at ``step`` (a float32 scalar tensor; ``float()`` it for a log)."""
        return ramped_epsilon(self.epsilon, step, self.warmup_steps)

    def adversarial_examples(self, model, x, y, step):
        """x' = x + δ after one signed step from a uniform start (a constant)."""
        eps = self.epsilon_at(step)
        start = core.uniform_start(tf.shape(x), eps, step_seed(self.seed, step))
        return tf.stop_gradient(core.pgd(model, x, y, eps, 1, self.alpha, start))

    def loss(self, model, x, y, step):
        x_adv = self.adversarial_examples(model, x, y, step)
        logits = model(x_adv, training=True)
        per_example = cross_entropy(y, logits)
        n = tf.cast(tf.shape(x)[0], tf.float32)
        stats = {
            "loss_sum": tf.reduce_sum(per_example),
            "n": n,
            "clean_correct": tf.constant(0.0),
            "clean_n": tf.constant(0.0),
            "adv_correct": correct(y, logits),
            "adv_n": n,
        }
        return tf.reduce_sum(per_example) / n, stats
