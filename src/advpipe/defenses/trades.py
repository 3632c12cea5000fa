"""TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
Accuracy", https://arxiv.org/abs/1901.08573), eq. (5) and Algorithm 1.

    L = 1/m Σ_i [ CE(f(x_i), y_i) + β · KL(p(x_i) ‖ p(x'_i)) ],
    KL(p ‖ q) = Σ_c p_c log(p_c / q_c),   p = softmax(f(x)), q = softmax(f(x')),

differentiated with respect to the weights through *both* p(x) and p(x') (the clean
side is not a constant: it is what pulls the two predictions together), both computed
with ``training=True``. x' maximises KL(p(x) ‖ p(x')) over the L∞ ε-ball, with p(x)
held fixed and the model in inference mode (``training=False``; the authors switch to
``model.eval()``): from x + 0.001·N(0, I), ``steps`` steps x' ← Π(x' + step_size ·
sign(∇_{x'} Σ_i KL)), Π projecting onto the ε-ball around x and onto [0, 1] (the start
is projected too: the authors' is not, which only matters at [0, 1] and for ε below
≈0.003, early in an ε ramp). x' is a constant of the outer loss.

Defaults: the authors' CIFAR-10 setting, β = 6 (1/λ), 10 steps; their step 0.007 for
ε = 0.031 is ≈ ε/4.4, so ``step_size=None`` means 0.25·ε (following the ε ramp). ε
follows :func:`advpipe.defenses.epsilon_ramp.ramped_epsilon`; the start noise is drawn
from the stateless seed :func:`~advpipe.defenses.epsilon_ramp.step_seed`.
"""

from __future__ import annotations

import tensorflow as tf

from .epsilon_ramp import ramped_epsilon, step_seed
from .loop import correct, cross_entropy

START_NOISE = 0.001  # the authors' standard deviation of the Gaussian start


def kl_divergence(p_logits, q_logits):
    """Per-example KL(softmax(p_logits) ‖ softmax(q_logits)), summed over classes, float32."""
    log_p = tf.nn.log_softmax(tf.cast(p_logits, tf.float32))
    log_q = tf.nn.log_softmax(tf.cast(q_logits, tf.float32))
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=1)


def _project(x, adv, eps):
    return tf.clip_by_value(tf.clip_by_value(adv, x - eps, x + eps), 0.0, 1.0)


class TRADES:
    """The TRADES loss for :class:`~advpipe.defenses.loop.Trainer`."""

    name = "trades"

    def __init__(
        self,
        *,
        epsilon: float,
        beta: float = 6.0,
        steps: int = 10,
        step_size: float | None = None,
        warmup_steps: int = 0,
        seed: int = 0,
    ):
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if step_size is not None and step_size <= 0:
            raise ValueError(f"step_size must be > 0 (or None: 0.25·ε), got {step_size}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.epsilon = float(epsilon)
        self.beta = float(beta)
        self.steps = int(steps)
        self.step_size = None if step_size is None else float(step_size)
        self.warmup_steps = int(warmup_steps)
        self.seed = int(seed)

    def epsilon_at(self, step):
        """The ramped ε at ``step`` (a float32 scalar tensor; ``float()`` it for a log)."""
        return ramped_epsilon(self.epsilon, step, self.warmup_steps)

    def start_point(self, x, step):
        """x + 0.001·N(0, I) (stateless noise for ``step``), projected onto the ε-ball."""
        noise = tf.random.stateless_normal(tf.shape(x), seed=step_seed(self.seed, step))
        return _project(x, x + START_NOISE * noise, self.epsilon_at(step))

    def adversarial_examples(self, model, x, step):
        """x' maximising Σ_i KL(p(x_i) ‖ p(x'_i)) from the current weights (a constant)."""
        eps = self.epsilon_at(step)
        size = eps * 0.25 if self.step_size is None else tf.constant(self.step_size)
        p_logits = tf.stop_gradient(model(x, training=False))

        def body(i, adv):
            with tf.GradientTape() as tape:
                tape.watch(adv)
                kl = tf.reduce_sum(kl_divergence(p_logits, model(adv, training=False)))
            grad = tape.gradient(kl, adv)
            return i + 1, _project(x, adv + size * tf.sign(grad), eps)

        _, adv = tf.while_loop(
            lambda i, _: i < self.steps, body, (tf.constant(0), self.start_point(x, step))
        )
        return tf.stop_gradient(adv)

    def objective(self, model, x, x_adv, y):
        """``(L, clean logits, x' logits)`` for given x' (``training=True``); eq. (5)."""
        clean_logits = model(x, training=True)
        adv_logits = model(x_adv, training=True)
        ce = tf.reduce_mean(cross_entropy(y, clean_logits))
        kl = tf.reduce_mean(kl_divergence(clean_logits, adv_logits))
        return ce + self.beta * kl, clean_logits, adv_logits

    def loss(self, model, x, y, step):
        x_adv = self.adversarial_examples(model, x, step)
        loss, clean_logits, adv_logits = self.objective(model, x, x_adv, y)
        n = tf.cast(tf.shape(x)[0], tf.float32)
        stats = {
            "loss_sum": loss * n,
            "n": n,
            "clean_correct": correct(y, clean_logits),
            "clean_n": n,
            "adv_correct": correct(y, adv_logits),
            "adv_n": n,
        }
        return loss, stats
