"""Deep Defense (eqs. 10-13): the regulariser's gradient through DeepFool, and the loss."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advpipe.defenses.deep_defense import DeepDefense, regulariser


def _model64(seed=0):
    init = lambda i: keras.initializers.GlorotNormal(seed + i)  # noqa: E731
    inputs = keras.Input((6, 6, 3), dtype="float64")
    x = keras.layers.Flatten(dtype="float64")(inputs)
    x = keras.layers.Dense(12, activation="tanh", dtype="float64", kernel_initializer=init(0))(x)
    logits = keras.layers.Dense(3, dtype="float64", kernel_initializer=init(1), name="last")(x)
    return keras.Model(inputs, logits)


def _regulariser_total(method, model, x, y):
    logits = model(x, training=False)
    ratio, is_correct = method.perturbation_ratio(model, x, y, logits)
    return tf.reduce_sum(regulariser(ratio, is_correct, method.mu, method.c, method.d)), is_correct


def test_regulariser_gradient_matches_finite_differences_in_float64():
    model = _model64()
    rng = np.random.default_rng(3)
    x = tf.constant(rng.uniform(0.3, 0.7, (10, 6, 6, 3)))  # away from the [0, 1] bounds
    pred = model(x).numpy().argmax(1)
    y = tf.constant(np.where(np.arange(10) % 3 == 0, (pred + 1) % 3, pred).astype(np.int64))
    method = DeepDefense(mu=1.0, c=25.0, d=5.0, steps=5, overshoot=0.02, candidates=3)
    kernel = model.get_layer("last").kernel
    with tf.GradientTape() as tape:
        total, is_correct = _regulariser_total(method, model, x, y)
    grad = tape.gradient(total, kernel).numpy()
    assert is_correct.numpy().any() and (~is_correct.numpy()).any()  # both T and F terms
    assert np.abs(grad).max() > 0
    h = 1e-6
    base = kernel.numpy()
    errors = []
    for idx in [(0, 0), (3, 1), (7, 2), (11, 0), (5, 2)]:
        plus, minus = base.copy(), base.copy()
        plus[idx] += h
        minus[idx] -= h
        kernel.assign(plus)
        f_plus = float(_regulariser_total(method, model, x, y)[0])
        kernel.assign(minus)
        f_minus = float(_regulariser_total(method, model, x, y)[0])
        kernel.assign(base)
        fd = (f_plus - f_minus) / (2 * h)
        errors.append(abs(fd - grad[idx]) / max(abs(fd), abs(grad[idx]), 1e-12))
    assert max(errors) <= 1e-2, errors


def test_regulariser_shape_of_eq_11():
    ratio = tf.constant([0.0, 0.01, 0.0, 0.01])
    correct = tf.constant([True, True, False, False])
    reg = regulariser(ratio, correct, 15.0, 25.0, 5.0).numpy()
    np.testing.assert_allclose(reg, [15.0, 15 * np.exp(-0.25), 15.0, 15 * np.exp(0.05)], rtol=1e-6)


def test_loss_is_mean_cross_entropy_plus_regulariser(tiny):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 1, (6, 32, 32, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, 6).astype(np.int64))
    method = DeepDefense(mu=2.0, steps=3, candidates=4)
    loss, stats = method.loss(tiny, x, y, tf.constant(0, tf.int64))
    logits = tiny(x)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
    ratio, is_correct = method.perturbation_ratio(tiny, x, y, logits)
    reg = regulariser(ratio, is_correct, 2.0, method.c, method.d)
    assert float(loss) == pytest.approx(float(tf.reduce_mean(ce + reg)), rel=1e-5)
    assert float(stats["n"]) == 6
    # the DeepFool perturbation is real: positive and small relative to the images
    assert (ratio.numpy() > 0).any() and (ratio.numpy() < 1).all()
