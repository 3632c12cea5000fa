"""Our compiled DeepFool against Foolbox's L2DeepFoolAttack, tracing, targeted and
differentiable modes, and rho_2."""

import numpy as np
import pytest
import tensorflow as tf

from advpipe.attacks import deepfool
from advpipe.attacks.deepfool import deepfool_foolbox, deepfool_tf, make_deepfool
from advpipe.metrics import rho2

QUIET = {"progress": lambda m: None}


def _norms(a):
    a = np.asarray(a)
    return np.linalg.norm(a.reshape(len(a), -1), axis=1)


def test_rho2_is_mean_ratio_over_successes():
    r = np.array([1.0, 2.0, 3.0, 4.0])
    x = np.array([10.0, 10.0, 20.0, 0.0])
    ok = np.array([True, False, True, False])
    assert rho2(r, x, ok) == pytest.approx((0.1 + 0.15) / 2)
    assert np.isnan(rho2(r, x, np.zeros(4, bool)))


def test_deepfool_flips_prediction_and_reports_rho2(tiny, batch):
    x, y = batch
    result = deepfool(
        tiny,
        x,
        y,
        steps=50,
        candidates=5,
        overshoot=0.02,
        batch_size=6,
        keep_adversarial=True,
        **QUIET,
    )
    pred_before = tiny(x).numpy().argmax(1)
    pred_after = tiny(result.adversarial).numpy().argmax(1)
    assert result.success.mean() >= 0.9
    assert (pred_after[result.success] != pred_before[result.success]).all()
    assert (pred_after[~result.success] == pred_before[~result.success]).all()
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    m = result.to_metrics()
    # rho_2 (eq. 14) from scratch: float64 sums of squares, image by image, fooled ones only
    ratios = [
        np.sqrt(((result.adversarial[i].astype(np.float64) - x[i]) ** 2).sum())
        / np.sqrt((x[i].astype(np.float64) ** 2).sum())
        for i in range(len(x))
        if result.success[i]
    ]
    assert ratios and m["rho2"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-4)
    assert m["rho2"] == rho2(result.perturbation_l2, result.image_l2, result.success)
    assert 0 < m["rho2"] < 1
    assert m["adversarial"]["top1"] <= m["clean"]["top1"] or m["clean"]["top1"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("candidates", [3, 1000])  # 1000 >= 10 classes: all classes
def test_matches_foolbox_on_tiny_model(tiny, batch, candidates):
    x, y = batch
    kw = dict(steps=50, candidates=candidates, overshoot=0.02, batch_size=5, **QUIET)
    ours = deepfool(tiny, x, y, keep_adversarial=True, **kw)
    ref = deepfool_foolbox(tiny, x, y, keep_adversarial=True, **kw)
    np.testing.assert_array_equal(ours.success, ref.success)
    np.testing.assert_allclose(ours.perturbation_l2, ref.perturbation_l2, rtol=1e-3)
    np.testing.assert_allclose(ours.adversarial, ref.adversarial, atol=1e-4)
    assert ours.to_metrics()["rho2"] == pytest.approx(ref.to_metrics()["rho2"], rel=1e-3)


@pytest.mark.slow
def test_candidates_beyond_num_classes_means_all(tiny, batch):
    x, _ = batch
    a = make_deepfool(tiny, steps=20, candidates=10)
    b = make_deepfool(tiny, steps=20, candidates=1000)
    t = tf.fill([len(x)], tf.constant(-1, tf.int64))
    ra, rb = (f(tf.constant(x), t)[1].numpy() for f in (a, b))
    np.testing.assert_array_equal(ra, rb)
    # candidates = 3: every step picks one of the 2 classes after the prediction
    logits = tiny(x).numpy()
    top = np.argsort(-logits, axis=1)
    _, _, info = deepfool_tf(
        lambda t: tiny(t, training=False), tf.constant(x), steps=20, candidates=3, return_info=True
    )
    choices = info["choices"].numpy()
    for i in range(len(x)):
        assert set(choices[i][choices[i] >= 0]) <= set(top[i, 1:3])


def test_compiled_once_for_every_batch_size(tiny, batch):
    x, y = batch
    run = make_deepfool(tiny, steps=10, candidates=4, overshoot=0.02)
    for n in (3, 7, 12, 1):
        x_adv, r, _, _ = run(tf.constant(x[:n]), tf.fill([n], tf.constant(-1, tf.int64)))
        assert x_adv.shape == (n, 32, 32, 3) and r.shape == (n, 32, 32, 3)
    deepfool(tiny, x, y, batch_size=5, attack=run, **QUIET)  # batches of 5, 5, 2
    assert run.experimental_get_tracing_count() == 1


def test_targeted_reaches_the_target_along_its_own_w(tiny, batch):
    x, _ = batch
    x = tf.constant(x)
    model_fn = lambda t: tiny(t, training=False)  # noqa: E731
    logits = model_fn(x).numpy()
    pred = logits.argmax(1)
    target = np.argsort(logits, axis=1)[:, -3].astype(np.int64)  # the 3rd most likely class
    target[0] = -1  # one untargeted row
    x_adv, r, info = deepfool_tf(
        model_fn,
        x,
        steps=50,
        candidates=10,
        overshoot=0.02,
        targets=tf.constant(target),
        return_info=True,
    )
    after = model_fn(x_adv).numpy().argmax(1)
    ok = info["success"].numpy()
    assert ok[1:].mean() >= 0.9
    assert (after[1:][ok[1:]] == target[1:][ok[1:]]).all()
    assert ok[0] and after[0] != pred[0]
    choices = info["choices"].numpy()
    for i in range(1, len(target)):  # every step chose the target and nothing else
        taken = choices[i][choices[i] >= 0]
        assert len(taken) == info["steps"].numpy()[i] and (taken == target[i]).all()

    # one step: r = (1 + overshoot)(|f'_t| / ||w_t|| + 1e-4) / ||w_t|| * w_t,
    # w_t = grad(f_t - f_pred)
    _, r1 = deepfool_tf(
        model_fn, x, steps=1, candidates=10, overshoot=0.02, targets=tf.constant(target)
    )
    rows = np.arange(1, len(target))
    with tf.GradientTape() as tape:
        tape.watch(x)
        lg = model_fn(x)
        safe = np.where(target < 0, pred, target)
        diff = tf.gather(lg, safe, batch_dims=1) - tf.gather(lg, pred, batch_dims=1)
        total = tf.reduce_sum(diff)
    w = tape.gradient(total, x).numpy()[rows]
    wn = _norms(w)
    d = np.abs(diff.numpy()[rows]) / (wn + 1e-8) + 1e-4
    expected = (1.02 * d / (wn + 1e-8))[:, None, None, None] * w
    np.testing.assert_allclose(r1.numpy()[rows], expected, rtol=1e-4, atol=1e-7)


def _tiny_float64(seed=0):
    import keras

    normal = lambda i: keras.initializers.RandomNormal(0.0, 1.0, seed=seed + i)  # noqa: E731
    inputs = keras.Input((8, 8, 3), dtype="float64")
    h = keras.layers.Conv2D(
        4,
        3,
        strides=2,
        padding="same",
        activation="tanh",
        dtype="float64",
        kernel_initializer=normal(0),
    )(inputs)
    h = keras.layers.Flatten(dtype="float64")(h)
    h = keras.layers.Dense(16, activation="tanh", dtype="float64", kernel_initializer=normal(1))(h)
    out = keras.layers.Dense(
        5,
        dtype="float64",
        name="head",
        kernel_initializer=keras.initializers.GlorotUniform(seed + 2),
    )(h)
    return keras.Model(inputs, out)


@pytest.mark.slow
def test_differentiable_mode_gradient_matches_finite_differences():
    model = _tiny_float64()
    kernel = model.get_layer("head").kernel
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0.25, 0.75, (8, 8, 8, 3)))  # float64, away from the bounds
    x_norm = tf.norm(tf.reshape(x, [8, -1]), axis=1)

    def objective():
        _, r, info = deepfool_tf(
            lambda t: model(t, training=False),
            x,
            steps=10,
            candidates=5,
            overshoot=0.02,
            differentiable=True,
            return_info=True,
        )
        value = tf.reduce_sum(tf.norm(tf.reshape(r, [8, -1]), axis=1) / x_norm)
        return value, info, r

    with tf.GradientTape() as tape:
        value, info, r = objective()
    grad = tape.gradient(value, kernel)
    assert grad is not None and np.abs(grad.numpy()).max() > 1e-3
    steps = info["steps"].numpy()
    assert info["success"].numpy().all() and steps.max() >= 3  # several steps differentiated
    assert 0 < float(tf.reduce_min(x + r)) and float(tf.reduce_max(x + r)) < 1  # no clipping

    # same gradient when the whole thing runs in a compiled training-step-like function
    @tf.function
    def compiled():
        with tf.GradientTape() as t:
            v, _, _ = objective()
        return t.gradient(v, kernel)

    np.testing.assert_allclose(compiled().numpy(), grad.numpy(), rtol=1e-8, atol=1e-12)

    # central finite difference along a random direction; h small enough that no argmin or
    # stopping decision changes (checked), large enough for float64 round-off
    direction = rng.normal(size=kernel.shape)
    k0 = kernel.numpy()
    h = 1e-5
    values = []
    for sign in (1, -1):
        kernel.assign(k0 + sign * h * direction)
        v, inf, _ = objective()
        np.testing.assert_array_equal(inf["choices"].numpy(), info["choices"].numpy())
        values.append(float(v))
    kernel.assign(k0)
    fd = (values[0] - values[1]) / (2 * h)
    analytic = float(np.sum(grad.numpy() * direction))
    assert abs(analytic) > 1e-3
    assert abs(fd - analytic) <= 1e-2 * abs(fd)

    # evaluation mode: same r, no gradient to the weights
    with tf.GradientTape() as tape:
        _, r_eval = deepfool_tf(
            lambda t: model(t, training=False), x, steps=10, candidates=5, overshoot=0.02
        )
        v_eval = tf.reduce_sum(tf.norm(tf.reshape(r_eval, [8, -1]), axis=1) / x_norm)
    np.testing.assert_allclose(r_eval.numpy(), r.numpy(), rtol=1e-10, atol=1e-14)
    assert tape.gradient(v_eval, kernel) is None


@pytest.fixture(scope="module")
def lite0_both():
    """Ours and Foolbox's DeepFool on the 20 bundled images, EfficientNet-Lite0 (about 1 min)."""
    from advpipe.data.samples import load_samples
    from advpipe.models.zoo import build_model

    model = build_model("efficientnet_lite0")
    images, manifest = load_samples(224, "bicubic")
    labels = manifest["label"].to_numpy(np.int64)
    kw = dict(steps=50, candidates=10, overshoot=0.02, batch_size=10, **QUIET)
    return deepfool(model, images, labels, **kw), deepfool_foolbox(model, images, labels, **kw)


@pytest.mark.slow
def test_matches_foolbox_on_efficientnet_lite0(lite0_both):
    ours, ref = lite0_both
    np.testing.assert_array_equal(ours.success, ref.success)
    assert ours.success[ours.clean_top1].all() and ours.clean_top1.sum() >= 15
    m, mr = ours.to_metrics(), ref.to_metrics()
    assert m["success_rate"] == mr["success_rate"]
    assert m["rho2"] == pytest.approx(mr["rho2"], rel=0.05)
    close = np.abs(ours.perturbation_l2 / ref.perturbation_l2 - 1) <= 0.10
    assert close.mean() >= 0.9
