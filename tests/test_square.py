"""The Square attack (Andriushchenko et al., ECCV 2020): budget, queries, early exit, seeds."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from advpipe.attacks.bounded import check_norms
from advpipe.attacks.square import (
    Square,
    eta,
    l2_init,
    l2_proposal,
    linf_init,
    linf_proposal,
    p_selection,
    square_side,
)
from advpipe.inference import compiled_forward

# Large enough to fool the tiny random CNN (global pooling makes it insensitive to small
# squares) on some images but not all within the small test budgets.
EPS = {"linf": 0.3, "l2": 18.0}


class NoGradient(keras.layers.Layer):
    """The identity, whose gradient raises: a model behind it can only be queried."""

    def call(self, x):
        @tf.custom_gradient
        def identity(t):
            def grad(dy):
                raise AssertionError("the Square attack must not take a gradient")

            return tf.identity(t), grad

        return identity(x)


def queries_only(model):
    inputs = keras.Input(model.input_shape[1:])
    return keras.Model(inputs, model(NoGradient()(inputs)))


def constant_model(bias, size=32):
    """Logits ``bias`` whatever the image."""
    inputs = keras.Input((size, size, 3))
    dense = keras.layers.Dense(len(bias), kernel_initializer="zeros")
    outputs = dense(keras.layers.Flatten()(inputs))
    dense.bias.assign(np.asarray(bias, np.float32))
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def tiny_blind(tiny):
    return queries_only(tiny)


@pytest.fixture(scope="module")
def predicted(tiny, batch):
    """The batch with the tiny model's own predictions as labels (all correctly classified)."""
    x, _ = batch
    return x, compiled_forward(tiny)(tf.constant(x)).numpy().argmax(1).astype(np.int64)


# ----------------------------------------------------------------------- the pieces
def test_p_schedule_is_the_authors():
    # thresholds 10, 50, 200, ... of 10,000, rescaled: with 5,000 iterations p halves
    # after iterations 5, 25, 100, 250, 500, 1000, 2000, 3000, 4000
    assert [p_selection(0.8, i, 5000) for i in (0, 5, 6, 25, 26, 100, 101)] == pytest.approx(
        [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1]
    )
    assert p_selection(0.8, 4001, 5000) == pytest.approx(0.8 / 512)
    assert p_selection(0.8, 9000, 10000) == pytest.approx(0.8 / 512)
    assert square_side(0.8, 224, 224, "linf") == 200
    assert square_side(0.8 / 512, 32, 32, "linf") == 1
    assert square_side(0.8 / 512, 32, 32, "l2") == 3
    assert square_side(0.1, 32, 32, "l2") == 11  # round(10.1) = 10, made odd
    assert square_side(1.0, 32, 32, "l2") == 32


def _eta_reference(s):
    """The authors' ``eta``, written from the paper's description: nested rectangles of
    weight 1/(k+1)² centred in each half, the bottom half negated, unit norm."""

    def half(rows, cols):
        d = np.zeros((rows, cols))
        for i in range(rows):
            for j in range(cols):
                k = max(abs(i - rows // 2), abs(j - cols // 2))
                d[i, j] = sum(1 / (m + 1) ** 2 for m in range(k, max(rows // 2, cols // 2) + 1))
        return d / np.linalg.norm(d)

    d = np.concatenate([half(s // 2, s), -half(s - s // 2, s)])
    return d / np.linalg.norm(d)


@pytest.mark.parametrize("s", [3, 6, 11, 44])
def test_eta_is_the_pseudo_gaussian_window(s):
    np.testing.assert_allclose(eta(s), _eta_reference(s), atol=1e-6)
    assert np.linalg.norm(eta(s)) == pytest.approx(1, abs=1e-6)


def test_inits():
    rng = np.random.default_rng(0)
    stripes = linf_init(rng, 8, 6, 3)
    assert set(np.unique(stripes)) == {-1.0, 1.0}
    assert (stripes == stripes[:1]).all()  # vertical stripes: constant down each column
    grid = l2_init(rng, 32, 32, 3)
    # 5x5 windows of side 6 from pixel 1: the border is untouched
    assert (grid[0] == 0).all() and (grid[:, 31] == 0).all() and np.abs(grid[1:31, 1:31]).min() > 0
    corner = np.abs(grid[1:7, 1:7, 0])
    assert np.allclose(corner, np.abs(eta(6))) or np.allclose(corner, np.abs(eta(6).T))


def test_linf_proposal_sets_one_square_per_image():
    rng = np.random.default_rng(1)
    x0 = rng.uniform(0, 1, (2, 10, 10, 3)).astype(np.float32)
    eps = 0.1
    best = np.clip(x0 + eps * linf_init(rng, 10, 10, 3), 0, 1).astype(np.float32)
    signs = np.array([[1, -1, 1], [-1, -1, 1]], np.float32)
    new = linf_proposal(x0, best, eps, tf.constant([2, 0]), tf.constant([5, 1]), 4, signs).numpy()
    expected = best.copy()
    expected[0, 2:6, 5:9] = x0[0, 2:6, 5:9] + eps * signs[0]
    expected[1, 0:4, 1:5] = x0[1, 0:4, 1:5] + eps * signs[1]
    np.testing.assert_allclose(new, np.clip(expected, 0, 1), atol=1e-6)


def _l2_reference(x0, best, eps, top, left, top2, left2, window, signs):
    """The authors' L2 window update for one image, with slices (HWC)."""
    s = len(window)
    delta = (best - x0).astype(np.float64)
    w1 = (slice(top, top + s), slice(left, left + s))
    w2 = (slice(top2, top2 + s), slice(left2, left2 + s))
    norm_window1 = np.sqrt((delta[w1] ** 2).sum(axis=(0, 1)))
    both = np.zeros(delta.shape[:2], bool)
    both[w1] = both[w2] = True
    norm_windows = np.sqrt((delta[both] ** 2).sum(axis=0))
    new = window[:, :, None] * signs + delta[w1] / (1e-12 + norm_window1)
    energy = max(eps**2 - (delta**2).sum(), 0) / 3 + norm_windows**2
    new = new / (1e-12 + np.sqrt((new**2).sum(axis=(0, 1)))) * np.sqrt(energy)
    delta[w2] = 0
    delta[w1] = new
    return np.clip(x0 + delta / (np.linalg.norm(delta) + 1e-12) * eps, 0, 1)


def test_l2_proposal_is_the_authors_window_update():
    rng = np.random.default_rng(2)
    n, size, eps, s = 3, 16, 1.5, 5
    x0 = rng.uniform(0.2, 0.8, (n, size, size, 3)).astype(np.float32)
    best = np.stack([l2_init(rng, size, size, 3) for _ in range(n)])
    best = x0 + eps * best / np.linalg.norm(best.reshape(n, -1), axis=1)[:, None, None, None]
    top, left, top2, left2 = ([int(v) for v in rng.integers(0, size - s, n)] for _ in range(4))
    flip = [0, 1, 1]
    signs = rng.choice([-1.0, 1.0], (n, 3)).astype(np.float32)
    patterns = np.stack([eta(s), eta(s).T])
    new = l2_proposal(
        x0, best.astype(np.float32), eps, *(tf.constant(v) for v in (top, left, top2, left2)),
        patterns, tf.constant(flip), signs,
    ).numpy()  # fmt: skip
    for i in range(n):
        ref = _l2_reference(
            x0[i], best[i], eps, top[i], left[i], top2[i], left2[i], patterns[flip[i]], signs[i]
        )
        np.testing.assert_allclose(new[i], ref, atol=1e-5)
    assert np.linalg.norm((new - x0).reshape(n, -1), axis=1) == pytest.approx(eps, rel=1e-5)


# ----------------------------------------------------------------------- the attack
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_within_budget_box_and_queries(tiny_blind, predicted, norm):
    x, y = predicted
    res = Square(tiny_blind, norm=norm, queries=150).run(x, y, EPS[norm])
    norms = check_norms(x, res.adversarial, EPS[norm], norm)
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    assert 0 < res.n_success < len(x)  # a mixed outcome: some fooled, some not
    assert (res.queries >= 2).all() and (res.queries <= 150).all()
    assert (res.queries[~res.success] == 150).all()
    assert (norms[~res.success] == 0).all()  # failures return the clean image
    # the fooled ones really are misclassified (the returned example, not a later one)
    pred = compiled_forward(tiny_blind)(tf.constant(res.adversarial)).numpy().argmax(1)
    assert (pred[res.success] != y[res.success]).all()
    assert (res.extra["margin"][res.success] < 0).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("bias", [[0.0, 2.0, 1.0], [1.0, 1.0, 1.0]], ids=["y-max", "tie"])
def test_never_fooled_uses_exactly_the_budget(batch, norm, restarts, bias):
    x, _ = batch
    y = np.ones(len(x), np.int64)  # the class with the largest (or a tied) logit
    res = Square(constant_model(bias), norm=norm, queries=40, restarts=restarts).run(x, y, 0.5)
    assert res.n_success == 0  # a tie (margin 0) is not a success
    np.testing.assert_array_equal(res.queries, 40)
    np.testing.assert_array_equal(res.adversarial, x)
    assert np.isfinite(res.extra["margin"]).all()


def test_clean_misclassified_costs_one_query(tiny_blind, batch, predicted):
    x, y = batch
    wrong = y != predicted[1]
    assert wrong.any() and not wrong.all()
    res = Square(tiny_blind, queries=30).run(x, y, 0.0)  # ε = 0: nothing else can succeed
    np.testing.assert_array_equal(res.success, wrong)
    np.testing.assert_array_equal(res.queries, np.where(wrong, 1, 30))
    np.testing.assert_array_equal(res.adversarial, x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_early_exit_changes_nothing(tiny_blind, predicted, norm):
    x, y = predicted
    runs = [
        Square(tiny_blind, norm=norm, queries=300, restarts=2, early_exit=e).run(x, y, EPS[norm])
        for e in (True, False)
    ]
    fast, slow = runs
    assert 0 < fast.n_success < len(x)
    np.testing.assert_array_equal(fast.success, slow.success)
    np.testing.assert_array_equal(fast.adversarial, slow.adversarial)
    np.testing.assert_array_equal(fast.queries, slow.queries)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_batch_independent_and_seeded(tiny_blind, predicted, norm):
    x, y = predicted
    attack = Square(tiny_blind, norm=norm, queries=150, seed=3)
    index = np.arange(len(x)) + 1000
    together = attack.run(x, y, EPS[norm], index)
    assert together.n_success > 0
    # the fooled images and two that are not, one at a time
    some = np.concatenate([np.flatnonzero(together.success), np.flatnonzero(~together.success)[:2]])
    for i in some:
        alone = attack.run(x[i : i + 1], y[i : i + 1], EPS[norm], index[i : i + 1])
        assert alone.success[0] == together.success[i]
        assert alone.queries[0] == together.queries[i]
        np.testing.assert_array_equal(alone.adversarial[0], together.adversarial[i])
    other = Square(tiny_blind, norm=norm, queries=150, seed=4).run(x, y, EPS[norm], index)
    assert not np.array_equal(other.queries, together.queries)


@pytest.mark.parametrize("norm, eps", [("linf", 0.5), ("l2", 25.0)])
def test_fools_the_tiny_model_at_a_large_eps(tiny_blind, predicted, norm, eps):
    x, y = predicted
    res = Square(tiny_blind, norm=norm, queries=1000).run(x, y, eps)
    assert res.success.all()
    assert (res.queries > 1).all()  # none was misclassified before the attack
    check_norms(x, res.adversarial, eps, norm)


def test_rejects_bad_options(tiny):
    with pytest.raises(ValueError, match="norm"):
        Square(tiny, norm="l1")
    with pytest.raises(ValueError, match="queries"):
        Square(tiny, queries=2, restarts=2)
    with pytest.raises(ValueError, match="p_init"):
        Square(tiny, p_init=0.0)


# ----------------------------------------------------------------------- a real model
@pytest.mark.slow
def test_fools_efficientnet_lite0_at_4_over_255():
    """The paper's setting on the 18 bundled ImageNet images EfficientNet-Lite0 gets right
    (pipeline preprocessing: bicubic, crop ratio 0.875); L∞ ε = 4/255, 5,000 queries."""
    from advpipe.data.samples import load_samples
    from advpipe.models.zoo import build_model

    model = build_model("efficientnet_lite0")
    images, manifest = load_samples(224, "bicubic", 0.875)
    x = images.astype(np.float32) / 255
    y = manifest["label"].to_numpy(np.int64)
    right = compiled_forward(model)(tf.constant(x)).numpy().argmax(1) == y
    assert right.sum() == 18
    x, y, index = x[right], y[right], np.flatnonzero(right)
    attack = Square(queries_only(model), norm="linf", queries=5000)
    start = time.perf_counter()
    res = attack.run(x, y, 4 / 255, index)
    wall = time.perf_counter() - start
    check_norms(x, res.adversarial, 4 / 255, "linf")
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    assert (res.queries <= 5000).all()
    pred = compiled_forward(model)(tf.constant(res.adversarial)).numpy().argmax(1)
    assert (pred[res.success] != y[res.success]).all()
    q = res.queries[res.success]
    print(
        f"\nSquare L∞ 4/255 on EfficientNet-Lite0: {res.n_success}/18 fooled, queries "
        f"median {np.median(q):.0f} mean {q.mean():.1f}, total {res.queries.sum()} queries, "
        f"{wall:.1f} s ({len(x) / wall:.3f} images/s, {res.queries.sum() / wall:.0f} queries/s)"
        f"\nqueries per image (index: queries, success): "
        + ", ".join(f"{i}: {q} {s}" for i, q, s in zip(index, res.queries, res.success))
    )
    assert res.n_success >= 17
