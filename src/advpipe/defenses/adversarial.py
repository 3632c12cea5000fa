"""Kurakin et al. (2016) adversarial training, proposal eq. (9).

In each batch of m examples, k are replaced by adversarial versions made *from the
current weights* inside the training step (step-LL by default, or FGSM), each with
its own ε drawn from a normal with standard deviation σ truncated to [0, ε_max]
(Kurakin et al.: σ = 8/255, ε_max = 16/255). The loss is

    L = ( Σ_{i ∈ clean} CE(x_i, y_i) + λ Σ_{i ∈ adv} CE(x'_i, y_i) ) / ((m − k) + λ·k)

with λ = 0.3 and k = m/2 by default. Under a distribution strategy each replica
replaces the same fraction k/m of its share of the batch.
"""

from __future__ import annotations

import tensorflow as tf

from .loop import correct, cross_entropy


def sample_epsilons(n, seed, stddev, maximum):
    """Per-example ε ~ N(0, σ²) truncated to [0, ε_max], from a stateless seed ([2] int)."""
    return tf.random.stateless_parameterized_truncated_normal(
        tf.reshape(n, [1]), seed=seed, means=0.0, stddevs=stddev, minvals=0.0, maxvals=maximum
    )


def kurakin_loss(clean_ce, adv_ce, lam):
    """Eq. (9) for one batch: (Σ clean + λ Σ adv) / ((m − k) + λ k)."""
    m_minus_k = tf.cast(tf.size(clean_ce), tf.float32)
    k = tf.cast(tf.size(adv_ce), tf.float32)
    return (tf.reduce_sum(clean_ce) + lam * tf.reduce_sum(adv_ce)) / (m_minus_k + lam * k)


class AdversarialTraining:
    """The loss of eq. (9) with examples from ``attack`` (an :class:`advpipe.attacks.Attack`)."""

    def __init__(
        self,
        attack,
        *,
        adversarial_fraction: float = 0.5,
        lam: float = 0.3,
        eps_stddev: float = 8 / 255,
        eps_max: float = 16 / 255,
        seed: int = 0,
    ):
        if not 0.0 <= adversarial_fraction <= 1.0:
            raise ValueError(f"adversarial_fraction must be in [0, 1], got {adversarial_fraction}")
        self.attack = attack
        self.name = f"kurakin_{attack.name}"
        self.fraction = float(adversarial_fraction)
        self.lam = float(lam)
        self.eps_stddev = float(eps_stddev)
        self.eps_max = float(eps_max)
        self.seed = int(seed)

    def batch_parts(self, x, step):
        """``(k, per-example ε [k], noise seeds [k, 2])`` for one replica's batch at ``step``."""
        m = tf.shape(x)[0]
        k = tf.cast(tf.round(self.fraction * tf.cast(m, tf.float32)), tf.int32)
        context = tf.distribute.get_replica_context()
        replica = tf.cast(context.replica_id_in_sync_group if context else 0, tf.int64)
        base = tf.cast(step, tf.int64) * 1024 + replica  # fresh ε and noise at every step
        eps = sample_epsilons(
            k, tf.stack([tf.constant(self.seed, tf.int64), base]), self.eps_stddev, self.eps_max
        )
        index = base * 100_000 + tf.range(tf.cast(k, tf.int64))
        seeds = tf.stack([tf.fill([k], tf.constant(self.seed + 1, tf.int64)), index], axis=1)
        return k, eps, seeds

    def adversarial_examples(self, x, y, step):
        """The first k examples of the batch, attacked with the model's current weights."""
        k, eps, seeds = self.batch_parts(x, step)
        return k, tf.stop_gradient(self.attack.generate(x[:k], y[:k], eps, seeds))

    def loss(self, model, x, y, step):
        m = tf.shape(x)[0]
        k, x_adv = self.adversarial_examples(x, y, step)
        logits = model(tf.concat([x_adv, x[k:]], axis=0), training=True)
        adv_logits, clean_logits = logits[:k], logits[k:]
        adv_ce = cross_entropy(y[:k], adv_logits)
        clean_ce = cross_entropy(y[k:], clean_logits)
        loss = kurakin_loss(clean_ce, adv_ce, self.lam)
        stats = {
            "loss_sum": loss * tf.cast(m, tf.float32),
            "n": tf.cast(m, tf.float32),
            "clean_correct": correct(y[k:], clean_logits),
            "clean_n": tf.cast(m - k, tf.float32),
            "adv_correct": correct(y[:k], adv_logits),
            "adv_n": tf.cast(k, tf.float32),
        }
        return loss, stats
