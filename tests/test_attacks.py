"""The one-step attacks against their formulas (eqs. 2-6) and against Foolbox."""

import numpy as np
import pytest
import tensorflow as tf

from advpipe.attacks import FGM, FGSM, RFGSM, LossGradient, StepLL, make_attack, sweep

EPS = [0.0, 0.01, 0.03, 0.1]


def _foolbox(model, attack_cls, x, y, eps):
    import foolbox as fb

    fmodel = fb.TensorFlowModel(model, bounds=(0, 1))
    _, clipped, _ = attack_cls()(fmodel, tf.constant(x), tf.constant(y), epsilons=eps)
    return [c.numpy() for c in clipped]


def test_fgsm_equals_foolbox(tiny, batch):
    import foolbox as fb

    x, y = batch
    ours = FGSM(tiny)(x, y, EPS)
    theirs = _foolbox(tiny, fb.attacks.LinfFastGradientAttack, x, y, EPS)
    for a, b in zip(ours, theirs):
        assert np.abs(a - b).max() <= 1e-5


def test_fgm_l2_equals_foolbox(tiny, batch):
    import foolbox as fb

    x, y = batch
    eps = [0.0, 0.5, 2.0]
    ours = FGM(tiny, norm="l2")(x, y, eps)
    theirs = _foolbox(tiny, fb.attacks.L2FastGradientAttack, x, y, eps)
    for a, b in zip(ours, theirs):
        assert np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("name", ["fgsm", "rfgsm", "step_ll"])
def test_linf_attacks_stay_in_budget_and_range(tiny, batch, name):
    x, y = batch
    for eps, adv in zip(EPS, make_attack(name, tiny)(x, y, EPS)):
        assert np.abs(adv - x).max() <= eps + 1e-6
        assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_fgm_l2_budget_and_linf_equivalent_scale(tiny, batch):
    x, y = batch
    for eps, adv in zip([0.5, 2.0], FGM(tiny, norm="l2")(x, y, [0.5, 2.0])):
        norms = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)
        assert (norms <= eps + 1e-4).all()
        assert adv.min() >= 0.0 and adv.max() <= 1.0
    # before clipping, a linf_equivalent step has the L2 norm of an FGSM step: eps*sqrt(d)
    prepared = FGM(tiny, norm="linf_equivalent").prepare(x, y)
    d = x[0].size
    norms = np.linalg.norm(prepared.state.numpy().reshape(len(x), -1), axis=1)
    np.testing.assert_allclose(norms, np.sqrt(d), rtol=1e-4)


@pytest.mark.parametrize("name", ["fgsm", "fgm", "rfgsm", "step_ll"])
def test_zero_epsilon_changes_nothing(tiny, batch, name):
    x, y = batch
    np.testing.assert_array_equal(make_attack(name, tiny)(x, y, 0.0), x)


def test_fgsm_is_the_formula(tiny, batch):
    x, y = batch
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        loss = tf.keras.losses.sparse_categorical_crossentropy(y, tiny(xt), from_logits=True)
    g = tape.gradient(loss, xt).numpy()
    expected = np.clip(x + 0.02 * np.sign(g), 0, 1)
    np.testing.assert_allclose(FGSM(tiny)(x, y, 0.02), expected, atol=1e-6)


def test_rfgsm_reproducible_and_formula(tiny, batch):
    x, y = batch
    eps, frac = 0.06, 0.5
    alpha = frac * eps
    a1 = RFGSM(tiny, seed=7, alpha_fraction=frac)
    a2 = RFGSM(tiny, seed=7, alpha_fraction=frac)
    np.testing.assert_array_equal(a1(x, y, eps), a2(x, y, eps))
    assert np.abs(RFGSM(tiny, seed=8)(x, y, eps) - a1(x, y, eps)).max() > 0
    # independent of batching: the noise of image i depends only on (seed, i)
    whole = a1(x, y, eps)
    halves = np.concatenate(
        [
            a1(x[:5], y[:5], eps, index=np.arange(5)),
            a1(x[5:], y[5:], eps, index=np.arange(5, len(x))),
        ]
    )
    np.testing.assert_allclose(whole, halves, atol=1e-6)
    # eta = alpha*sign(xi) + (eps - alpha)*sign(grad at the (clipped) noisy point)
    prepared = a1.prepare(x, y)
    noise = a1.noise(prepared.x, prepared.state[1]).numpy()
    assert set(np.unique(noise)) <= {-1.0, 1.0}
    x_adv, eta = a1.unclipped(prepared, eps)
    x_hat = np.clip(x + alpha * noise, 0, 1)
    _, g = LossGradient(tiny)(x_hat, y)
    np.testing.assert_allclose(
        eta.numpy(), alpha * noise + (eps - alpha) * np.sign(g.numpy()), atol=1e-7
    )
    np.testing.assert_allclose(x_adv.numpy(), np.clip(x + eta.numpy(), 0, 1), atol=1e-7)


def test_step_ll_raises_least_likely_probability(tiny, batch):
    x, y = batch
    logits = tiny(x).numpy()
    y_ll = logits.argmin(1)
    adv = StepLL(tiny)(x, y, 0.01)
    p_before = tf.nn.softmax(logits).numpy()[np.arange(len(x)), y_ll]
    p_after = tf.nn.softmax(tiny(adv)).numpy()[np.arange(len(x)), y_ll]
    assert (p_after > p_before).all()


def test_predicted_label_mode_attacks_the_prediction(tiny, batch):
    x, _ = batch
    pred = tiny(x).numpy().argmax(1).astype(np.int64)
    wrong = (pred + 1) % 10
    np.testing.assert_allclose(
        FGSM(tiny, labels="predicted")(x, wrong, 0.02), FGSM(tiny)(x, pred, 0.02), atol=1e-7
    )


def test_sweep_counts_and_reuses_gradient(tiny, batch, monkeypatch):
    x, y = batch
    attack = FGSM(tiny)
    calls = {"n": 0}
    original = attack._direction_c

    def counting(*args):
        calls["n"] += 1
        return original(*args)

    monkeypatch.setattr(attack, "_direction_c", counting)
    images = (x * 255).round().astype(np.uint8)
    result = sweep(attack, images, y, [0.0, 0.05, 0.2], batch_size=5, progress=lambda m: None)
    n_batches = 3
    assert calls["n"] == n_batches + 1  # one per batch (+ the warm-up), not one per eps
    assert result.by_epsilon[0.0] == result.clean
    logits = tiny(images.astype(np.float32) / 255).numpy()
    assert result.clean["top1"] == pytest.approx(np.mean(logits.argmax(1) == y))
    metrics = result.to_metrics()
    assert set(metrics["eps"]) == {"0", "0.05", "0.2"}
    assert "timing" not in metrics and "seconds" not in str(metrics)  # timings/ has them
    timing = result.timing()
    assert timing["n_images"] == len(x) and timing["n_epsilons"] == 3
    assert timing["seconds"] == pytest.approx(result.seconds, abs=1e-3) and result.seconds > 0
    assert timing["images_per_second"] == pytest.approx(len(x) / result.seconds, rel=1e-2)
    assert timing["seconds_per_image"] == pytest.approx(result.seconds / len(x), rel=1e-2)


def test_unknown_attack_and_bad_options(tiny):
    with pytest.raises(ValueError, match="unknown attack"):
        make_attack("cw", tiny)
    with pytest.raises(ValueError, match="norm"):
        FGM(tiny, norm="l3")
    with pytest.raises(ValueError, match="alpha_fraction"):
        RFGSM(tiny, alpha_fraction=1.0)
    with pytest.raises(ValueError, match="labels"):
        FGSM(tiny, labels="true")
