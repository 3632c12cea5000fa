"""PGD-AT, TRADES and fast AT (issue #14): each loss against a hand computation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advpipe.defenses.epsilon_ramp import ramped_epsilon, ramped_epsilon_value, step_seed
from advpipe.defenses.fast_at import FastAdversarialTraining
from advpipe.defenses.loop import TrainConfig, Trainer
from advpipe.defenses.pgd_at import PGDAdversarialTraining
from advpipe.defenses.trades import TRADES, kl_divergence

EPS = 8 / 255
TOL = 1e-6  # float32 rounding of x + δ, seen in float64


def copy_of(model, noise=0.0, seed=0):
    """A copy of ``model`` (its weights, plus Gaussian noise of std ``noise``)."""
    rng = np.random.default_rng(seed)
    clone = keras.models.clone_model(model)
    clone.set_weights([w + noise * rng.standard_normal(w.shape) for w in model.get_weights()])
    return clone


@pytest.fixture(scope="module")
def sharp(tiny):
    """The tiny model with its logits scaled up 20 times: the random CNN's predictions
    barely differ between noise images, so its KL divergences (~1e-4) are at float32's
    limit; these are ~0.1."""
    model = copy_of(tiny)
    kernel = model.layers[-1].kernel
    kernel.assign(kernel * 20.0)
    return model


def logits_of(model, x):
    return model(tf.constant(x), training=False).numpy().astype(np.float64)


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy_np(logits, y):
    return -log_softmax(logits)[np.arange(len(y)), y]


def kl_np(p_logits, q_logits):
    """Σ_c p_c log(p_c / q_c) per example, in float64."""
    p, q = np.exp(log_softmax(p_logits)), np.exp(log_softmax(q_logits))
    return (p * np.log(p / q)).sum(axis=1)


def assert_in_ball(x_adv, x, eps):
    x_adv, x = np.asarray(x_adv, np.float64), np.asarray(x, np.float64)
    assert np.abs(x_adv - x).max() <= eps + TOL
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


# ------------------------------------------------------------------ the ε ramp
def test_epsilon_ramp_against_hand_values():
    eps, warmup = 0.1, 10
    expected = {0: 0.1 / 10, 5: 0.1 * 6 / 10, 9: 0.1, 10: 0.1, 250: 0.1}
    compiled = tf.function(lambda s: ramped_epsilon(eps, s, warmup))
    for step, value in expected.items():
        want = np.float32(value)
        got = ramped_epsilon(eps, step, warmup)
        assert got.dtype == tf.float32 and got.shape == ()
        assert got.numpy() == want
        assert compiled(tf.constant(step, tf.int64)).numpy() == want
        assert ramped_epsilon_value(eps, step, warmup) == float(want)
    assert ramped_epsilon(eps, 4, warmup).numpy() < ramped_epsilon(eps, 5, warmup).numpy()
    for step in (0, 1, 10_000):  # no warmup: ε from the first step
        assert ramped_epsilon(eps, step, 0).numpy() == np.float32(0.1)
        assert ramped_epsilon_value(eps, step, 0) == float(np.float32(0.1))
    with pytest.raises(ValueError, match="warmup_steps"):
        ramped_epsilon(eps, 0, -1)


def test_step_seed_is_seed_and_step():
    assert step_seed(3, 7).numpy().tolist() == [3, 7 * 1024]
    assert step_seed(3, tf.constant(8, tf.int64)).numpy().tolist() == [3, 8 * 1024]


def test_methods_follow_the_ramp():
    for method in (
        PGDAdversarialTraining(epsilon=EPS, warmup_steps=4),
        TRADES(epsilon=EPS, warmup_steps=4),
        FastAdversarialTraining(epsilon=EPS, warmup_steps=4),
    ):
        assert float(method.epsilon_at(1)) == ramped_epsilon_value(EPS, 1, 4)
        assert float(method.epsilon_at(1)) == pytest.approx(EPS / 2)
        assert float(method.epsilon_at(3)) == np.float32(EPS)


# ------------------------------------------------------------------ PGD-AT
def test_pgd_at_examples_lie_in_the_ball(tiny, batch):
    x, y = batch
    method = PGDAdversarialTraining(epsilon=EPS, steps=3)
    k, x_adv = method.adversarial_examples(tiny, tf.constant(x), tf.constant(y), 5)
    assert int(k) == len(x)
    assert_in_ball(x_adv, x, EPS)
    assert np.abs(x_adv.numpy().astype(np.float64) - x).max() > 0.9 * EPS  # they moved
    # during the warmup the ball is the ramped one: ε/2 at step 1 of a 4-step ramp
    ramped = PGDAdversarialTraining(epsilon=EPS, steps=3, warmup_steps=4)
    _, x_half = ramped.adversarial_examples(tiny, tf.constant(x), tf.constant(y), 1)
    assert_in_ball(x_half, x, EPS / 2)
    assert np.abs(x_half.numpy().astype(np.float64) - x).max() > 0.9 * EPS / 2


def test_pgd_at_examples_come_from_the_current_weights(tiny, batch):
    x, y = tf.constant(batch[0]), tf.constant(batch[1])
    method = PGDAdversarialTraining(epsilon=EPS, steps=3, seed=2)
    first = method.adversarial_examples(tiny, x, y, 4)[1].numpy()
    again = method.adversarial_examples(tiny, x, y, 4)[1].numpy()
    np.testing.assert_array_equal(first, again)  # same weights, seed and step
    other = copy_of(tiny, noise=0.2, seed=1)
    changed = method.adversarial_examples(other, x, y, 4)[1].numpy()
    assert np.abs(changed - first).max() > EPS / 4
    later = method.adversarial_examples(tiny, x, y, 5)[1].numpy()
    assert np.abs(later - first).max() > EPS / 4  # fresh random start at every step


def test_pgd_at_loss_is_the_mean_cross_entropy_on_its_examples(tiny, batch):
    x, y = batch
    method = PGDAdversarialTraining(epsilon=EPS, steps=3, seed=1)
    loss, stats = method.loss(tiny, tf.constant(x), tf.constant(y), 2)
    _, x_adv = method.adversarial_examples(tiny, tf.constant(x), tf.constant(y), 2)
    logits = logits_of(tiny, x_adv.numpy())
    ce = cross_entropy_np(logits, y)
    assert float(loss) == pytest.approx(ce.mean(), rel=1e-5)
    assert float(stats["loss_sum"]) == pytest.approx(ce.sum(), rel=1e-5)
    assert float(stats["n"]) == float(stats["adv_n"]) == len(y)
    assert float(stats["clean_n"]) == 0.0
    assert float(stats["adv_correct"]) == (logits.argmax(1) == y).sum()
    # the attack raises the loss over the clean batch
    assert ce.mean() > cross_entropy_np(logits_of(tiny, x), y).mean()


def test_pgd_at_clean_fraction_leaves_the_second_half_clean(tiny, batch):
    x, y = batch
    method = PGDAdversarialTraining(epsilon=EPS, steps=3, clean_fraction=0.5)
    k, x_adv = method.adversarial_examples(tiny, tf.constant(x), tf.constant(y), 0)
    assert int(k) == 6 and x_adv.shape[0] == 6
    assert_in_ball(x_adv, x[:6], EPS)
    assert np.abs(x_adv.numpy() - x[:6]).max(axis=(1, 2, 3)).min() > 0.5 * EPS
    loss, stats = method.loss(tiny, tf.constant(x), tf.constant(y), 0)
    mixed = np.concatenate([x_adv.numpy(), x[6:]])
    logits = logits_of(tiny, mixed)
    assert float(loss) == pytest.approx(cross_entropy_np(logits, y).mean(), rel=1e-5)
    assert float(stats["clean_n"]) == float(stats["adv_n"]) == 6
    assert float(stats["clean_correct"]) == (logits[6:].argmax(1) == y[6:]).sum()
    assert float(stats["adv_correct"]) == (logits[:6].argmax(1) == y[:6]).sum()
    # and the loss is not the all-adversarial one
    all_adv = PGDAdversarialTraining(epsilon=EPS, steps=3).loss(
        tiny, tf.constant(x), tf.constant(y), 0
    )[0]
    assert abs(float(all_adv) - float(loss)) > 1e-4


@pytest.mark.parametrize(
    "method",
    [PGDAdversarialTraining(epsilon=EPS, steps=3), FastAdversarialTraining(epsilon=EPS)],
    ids=lambda m: m.name,
)
def test_gradient_is_the_cross_entropy_gradient_at_the_final_examples(tiny, batch, method):
    """The outer loss differentiates w.r.t. the weights at the examples, held constant."""
    x, y = tf.constant(batch[0]), tf.constant(batch[1])
    variables = tiny.trainable_variables
    with tf.GradientTape() as tape:
        loss, _ = method.loss(tiny, x, y, 1)
    got = tape.gradient(loss, variables)
    x_adv = method.adversarial_examples(tiny, x, y, 1)
    x_adv = tf.constant(x_adv[1] if isinstance(x_adv, tuple) else x_adv)
    with tf.GradientTape() as tape:
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, tiny(x_adv, training=True))
        loss_at_examples = tf.reduce_mean(ce)
    want = tape.gradient(loss_at_examples, variables)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-6)
    with tf.GradientTape() as tape:  # and it is not the clean gradient
        clean = tf.nn.sparse_softmax_cross_entropy_with_logits(y, tiny(x, training=True))
        loss_clean = tf.reduce_mean(clean)
    clean_grads = tape.gradient(loss_clean, variables)
    assert max(np.abs(g.numpy() - c.numpy()).max() for g, c in zip(got, clean_grads)) > 1e-4


def test_pgd_at_rejects_bad_options():
    with pytest.raises(ValueError, match="clean_fraction"):
        PGDAdversarialTraining(epsilon=EPS, clean_fraction=1.0)
    with pytest.raises(ValueError, match="steps"):
        PGDAdversarialTraining(epsilon=EPS, steps=0)
    with pytest.raises(TypeError):
        PGDAdversarialTraining(EPS)  # keyword-only


# ------------------------------------------------------------------ TRADES
def test_trades_kl_term_against_numpy(sharp, batch):
    x, y = batch
    x_adv = np.roll(x, 1, axis=0) ** 3  # a given x': other, darker images (a large KL)
    clean, adv = logits_of(sharp, x), logits_of(sharp, x_adv)
    want_kl = kl_np(clean, adv)
    np.testing.assert_allclose(kl_divergence(clean, adv).numpy(), want_kl, rtol=1e-4, atol=1e-7)
    assert want_kl.mean() > 1e-2
    method = TRADES(epsilon=EPS, beta=6.0)
    loss, clean_logits, adv_logits = method.objective(
        sharp, tf.constant(x), tf.constant(x_adv), tf.constant(y)
    )
    want = cross_entropy_np(clean, y).mean() + 6.0 * want_kl.mean()
    assert float(loss) == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(clean_logits.numpy(), clean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adv_logits.numpy(), adv, rtol=1e-5, atol=1e-6)


def test_trades_gradient_flows_through_both_sides(sharp, batch):
    x, y = tf.constant(batch[0]), tf.constant(batch[1])
    x_adv = tf.constant(np.roll(batch[0], 1, axis=0) ** 3)
    method = TRADES(epsilon=EPS, beta=6.0)
    variables = sharp.trainable_variables

    def grads(kind):
        with tf.GradientTape() as tape:
            if kind == "trades":
                loss = method.objective(sharp, x, x_adv, y)[0]
            else:  # by hand, with one side of the KL held fixed
                p, q = sharp(x, training=True), sharp(x_adv, training=True)
                ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, p))
                if kind == "clean_fixed":
                    p = tf.stop_gradient(p)
                elif kind == "adv_fixed":
                    q = tf.stop_gradient(q)
                log_p, log_q = tf.nn.log_softmax(p), tf.nn.log_softmax(q)
                kl = tf.reduce_mean(tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=1))
                loss = ce + 6.0 * kl if kind != "ce" else ce
        return np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, variables)])

    full, clean_fixed, adv_fixed, ce = (
        grads(k) for k in ("trades", "clean_fixed", "adv_fixed", "ce")
    )
    kl_part = np.linalg.norm(full - ce)  # the KL term's gradient, both sides
    scale = np.abs(full).max()
    # both sides matter: holding either fixed takes a sizeable part of the KL's gradient away
    assert np.linalg.norm(full - clean_fixed) > 0.1 * kl_part
    assert np.linalg.norm(full - adv_fixed) > 0.1 * kl_part
    # and the gradient is exactly the sum of the two sides' contributions
    np.testing.assert_allclose(full, clean_fixed + adv_fixed - ce, rtol=1e-4, atol=1e-5 * scale)


def test_trades_examples_lie_in_the_ball_and_raise_the_kl(sharp, batch):
    x, y = batch
    method = TRADES(epsilon=EPS, steps=5, seed=4)
    start = method.start_point(tf.constant(x), 3).numpy()
    x_adv = method.adversarial_examples(sharp, tf.constant(x), 3).numpy()
    assert_in_ball(x_adv, x, EPS)
    assert_in_ball(start, x, 0.01)  # 0.001·N(0, I): within 10σ
    assert np.abs(start - x).max() > 0
    np.testing.assert_array_equal(start, method.start_point(tf.constant(x), 3).numpy())
    assert not np.array_equal(start, method.start_point(tf.constant(x), 4).numpy())
    clean = logits_of(sharp, x)
    kl_start, kl_adv = kl_np(clean, logits_of(sharp, start)), kl_np(clean, logits_of(sharp, x_adv))
    assert (kl_adv > kl_start).all()
    assert kl_adv.mean() > 10 * kl_start.mean()
    # the loss is the objective at those examples, the statistics from its logits
    loss, stats = method.loss(sharp, tf.constant(x), tf.constant(y), 3)
    want, clean_logits, adv_logits = method.objective(
        sharp, tf.constant(x), tf.constant(x_adv), tf.constant(y)
    )
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    assert float(stats["clean_correct"]) == (clean_logits.numpy().argmax(1) == y).sum()
    assert float(stats["adv_correct"]) == (adv_logits.numpy().argmax(1) == y).sum()
    assert float(stats["clean_n"]) == float(stats["adv_n"]) == float(stats["n"]) == len(y)


# ------------------------------------------------------------------ fast AT
def test_fast_at_example_against_a_hand_computation(tiny, batch):
    x, y = batch
    seed, step, alpha = 3, 7, 1.25
    method = FastAdversarialTraining(epsilon=EPS, alpha=alpha, seed=seed)
    x_adv = method.adversarial_examples(tiny, tf.constant(x), tf.constant(y), step).numpy()
    eps = np.float32(EPS)
    # by hand: δ ~ U(−ε, ε) from the seed (seed, step·1024), x + δ clipped to [0, 1] ...
    u = tf.random.stateless_uniform(x.shape, seed=[seed, step * 1024], minval=-1.0, maxval=1.0)
    start = np.clip(x + u.numpy() * eps, 0.0, 1.0)
    # ... one signed gradient step of α·ε, δ clipped to the ε-ball, x' to [0, 1]
    x_start = tf.constant(start)
    with tf.GradientTape() as tape:
        tape.watch(x_start)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, tiny(x_start, training=False))
    direction = np.sign(tape.gradient(ce, x_start).numpy())
    delta = np.clip(start + np.float32(alpha) * eps * direction - x, -eps, eps)
    want = np.clip(x + delta, 0.0, 1.0)
    np.testing.assert_allclose(x_adv, want, rtol=0, atol=1e-6)
    assert_in_ball(x_adv, x, EPS)
    assert (np.abs(x_adv - x) > 0.99 * EPS).mean() > 0.5  # the step reaches the ball's edge
    loss, stats = method.loss(tiny, tf.constant(x), tf.constant(y), step)
    logits = logits_of(tiny, x_adv)
    assert float(loss) == pytest.approx(cross_entropy_np(logits, y).mean(), rel=1e-5)
    assert float(stats["adv_correct"]) == (logits.argmax(1) == y).sum()
    assert float(stats["adv_n"]) == float(stats["n"]) == len(y)


# ------------------------------------------------------------------ in the trainer
@pytest.mark.parametrize(
    "method",
    [
        PGDAdversarialTraining(epsilon=EPS, steps=2, warmup_steps=2),
        TRADES(epsilon=EPS, steps=2, warmup_steps=2),
        FastAdversarialTraining(epsilon=EPS, warmup_steps=2),
    ],
    ids=lambda m: m.name,
)
def test_method_trains_inside_the_trainer(tiny, batch, method):
    x, y = batch
    model = copy_of(tiny)
    trainer = Trainer(
        model,
        method,
        TrainConfig(learning_rate=0.01, optimizer="sgd"),
        evaluate=lambda: {},
        save=lambda e: None,
    )
    x_uint8 = np.round(x * 255).astype(np.uint8)
    weights = model.get_weights()
    for step in range(2):
        stats = trainer.train_step(x_uint8, y, step)
        assert np.isfinite(stats["loss_sum"]) and stats["loss_sum"] > 0
        assert stats["n"] == stats["adv_n"] == len(y)
        new = model.get_weights()
        assert any(not np.array_equal(a, b) for a, b in zip(weights, new))
        weights = new


def test_val_robust_accuracy_counts_only_correct_images_that_every_start_fails_on(tiny):
    """robust_accuracy: an image is robust iff the model classifies it correctly and no
    PGD start fools it; equal to running every start on every image and ANDing."""
    from advpipe.attacks.pgd import PGD
    from advpipe.defenses.train import robust_accuracy

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (20, 32, 32, 3)).astype(np.uint8)
    x = images.astype(np.float32) / 255.0
    pred = logits_of(tiny, x).argmax(1)
    labels = pred.copy()
    labels[:5] = (pred[:5] + 1) % 10  # five images misclassified from the start
    for eps in (0.002, 0.05):
        expected = pred == labels
        for r in range(2):
            adv = PGD(tiny, steps=3, rel_stepsize=0.25, seed=7 + r)(
                x, labels, eps, index=np.arange(len(x))
            )
            expected &= logits_of(tiny, adv).argmax(1) == labels
        measure = robust_accuracy(tiny, epsilon=eps, steps=3, restarts=2, seed=7, batch_size=8)
        assert measure(images, labels) == pytest.approx(expected.mean())
        assert measure(images, labels) <= 15 / 20
