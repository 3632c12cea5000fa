"""FAB-T (advpipe.attacks.fab): the box-constrained projections against brute force, the
attack's guarantees (norms, box, first adversarial within ε, early exit), on tiny models."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog, minimize

from advpipe.attacks.bounded import check_norms, perturbation_norms
from advpipe.attacks.fab import FABTargeted, projection_l2, projection_linf

EPS = {"linf": 8 / 255, "l2": 1.2}  # the tiny model: some images fooled, some not


def project(fn, t, w, b):
    """``fn`` on float64 NumPy rows (the attack runs the projections in float64)."""
    f64 = lambda v: tf.constant(np.asarray(v, np.float64))  # noqa: E731
    return fn(f64(t), f64(w), f64(b)).numpy()


def random_planes(rng, rows, n, feasible=True):
    """Points in [0, 1]^n, normals with some zero entries, hyperplanes meeting the box."""
    t = rng.uniform(0, 1, (rows, n))
    w = rng.normal(size=(rows, n)) * (rng.uniform(size=(rows, n)) > 0.2)
    w[np.arange(rows), rng.integers(0, n, rows)] = rng.normal(size=rows)  # one w_j ≠ 0
    u = rng.uniform(0, 1, (rows, n)) if feasible else rng.uniform(2, 3, (rows, n)) * np.sign(w)
    return t, w, (w * u).sum(1)


# ---------------------------------------------------------------- projections
@pytest.mark.parametrize("fn", [projection_linf, projection_l2])
def test_projection_hand_computed(fn):
    t = [[0.5, 0.5], [0.9, 0.1], [0.5, 0.5], [0.2, 0.7]]
    w = [[1, 1], [1, 1], [1, 1], [0, 2]]
    b = [0.6, 1.5, 5.0, 1.0]
    d = project(fn, t, w, b)
    np.testing.assert_allclose(d[0], [-0.2, -0.2], atol=1e-6)  # no face reached
    np.testing.assert_allclose(d[1], [0.1, 0.4], atol=1e-6)  # the first coordinate saturates
    np.testing.assert_allclose(d[2], [0.5, 0.5], atol=1e-6)  # out of reach: the corner
    np.testing.assert_allclose(d[3], [0.0, -0.2], atol=1e-6)  # w_0 = 0 does not move


def test_projection_linf_matches_linprog():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5):
        t, w, b = random_planes(rng, 60, n)
        d = project(projection_linf, t, w, b)
        for i in range(len(t)):
            # min λ  s.t.  |d_j| ≤ λ, ⟨w, t + d⟩ = b, 0 ≤ t + d ≤ 1
            eye = np.eye(n)
            a_ub = np.block([[eye, -np.ones((n, 1))], [-eye, -np.ones((n, 1))]])
            res = linprog(
                np.r_[np.zeros(n), 1.0],
                A_ub=a_ub,
                b_ub=np.zeros(2 * n),
                A_eq=np.r_[w[i], 0.0][None],
                b_eq=[b[i] - w[i] @ t[i]],
                bounds=[(-t[i, j], 1 - t[i, j]) for j in range(n)] + [(0, None)],
            )
            assert res.status == 0
            assert np.abs(d[i]).max() == pytest.approx(res.x[-1], rel=1e-4, abs=1e-5)
            assert w[i] @ (t[i] + d[i]) == pytest.approx(b[i], abs=1e-4)
            assert np.all(t[i] + d[i] >= -1e-6) and np.all(t[i] + d[i] <= 1 + 1e-6)


def quadratic_program(t, w, b):
    """min ‖d‖² s.t. ⟨w, t + d⟩ = b, 0 ≤ t + d ≤ 1, by SLSQP (float64)."""
    res = minimize(
        lambda v: v @ v,
        np.zeros(len(t)),
        jac=lambda v: 2 * v,
        method="SLSQP",
        bounds=[(-tj, 1 - tj) for tj in t],
        constraints=[{"type": "eq", "fun": lambda v: w @ (t + v) - b, "jac": lambda v: w}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    assert res.success, res.message
    return res.x


def test_projection_l2_matches_quadratic_program():
    rng = np.random.default_rng(1)
    for n in (2, 3, 5):
        t, w, b = random_planes(rng, 60, n)
        d = project(projection_l2, t, w, b)
        for i in range(len(t)):  # the L2 projection is unique
            np.testing.assert_allclose(d[i], quadratic_program(t[i], w[i], b[i]), atol=1e-5)


def test_projection_l2_matches_a_dense_grid_in_2d():
    """Every point of a fine grid of [0, 1]² near the line: none is closer than ours."""
    rng = np.random.default_rng(2)
    t, w, b = random_planes(rng, 20, 2)
    d = project(projection_l2, t, w, b)
    g = np.stack(np.meshgrid(*[np.linspace(0, 1, 2001)] * 2), -1).reshape(-1, 2)
    for i in range(len(t)):
        on_line = np.abs(g @ w[i] - b[i]) <= 1e-3 * np.abs(w[i]).sum()
        best = np.linalg.norm(g[on_line] - t[i], axis=1).min()
        assert np.linalg.norm(d[i]) == pytest.approx(best, abs=2e-3)


@pytest.mark.parametrize("fn", [projection_linf, projection_l2])
def test_projection_out_of_reach_goes_to_the_nearest_corner(fn):
    rng = np.random.default_rng(3)
    t, w, b = random_planes(rng, 30, 4, feasible=False)
    d = project(fn, t, w, b)
    sign = np.where((w * t).sum(1) - b >= 0, 1.0, -1.0)[:, None]
    corner = np.where(w * sign < 0, 1.0, 0.0)
    np.testing.assert_allclose(d, (corner - t) * (w != 0), atol=1e-6)


def bisect_projection(t, w, c, norm):
    """The exact projection of one high-dimensional row, by bisection on λ in float64:
    ``d(λ) = −sign(w)·min(λ, room)`` (L∞) or ``clip(t − λw, 0, 1) − t`` (L2), with
    ``⟨w, d(λ)⟩ = −c`` (``c = ⟨w, t⟩ − b > 0``)."""
    room = np.where(w < 0, 1 - t, t)
    step = {
        "linf": lambda lam: -np.sign(w) * np.minimum(lam, room),
        "l2": lambda lam: np.clip(t - lam * w, 0, 1) - t,
    }[norm]
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if w @ step(mid) <= -c else (mid, hi)
    return step(hi)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_accurate_at_imagenet_size(norm):
    """224·224·3 pixels and a logit gap of 1e-2, as near a decision boundary: float32
    sums of ⟨w, x⟩ over every pixel (≈ 1e2) cannot resolve the gap; float64 does."""
    rng = np.random.default_rng(5)
    n = 224 * 224 * 3
    t = rng.uniform(0, 1, (2, n))
    t[:, : n // 10] = 0.0  # saturated pixels, as in real images
    w = rng.normal(0, 1e-2, (2, n))
    c = np.array([1e-2, 3.0])  # near the boundary; far enough that many pixels saturate
    b = (w * t).sum(1) - c
    fn = {"linf": projection_linf, "l2": projection_l2}[norm]
    d = project(fn, t, w, b)
    for i in range(2):
        ref = bisect_projection(t[i], w[i], c[i], norm)
        assert w[i] @ d[i] == pytest.approx(-c[i], rel=1e-6)
        if norm == "linf":  # the L∞ projection is not unique: compare the norms
            assert np.abs(d[i]).max() == pytest.approx(np.abs(ref).max(), rel=1e-6)
        else:
            np.testing.assert_allclose(d[i], ref, atol=1e-9)
        assert np.all(t[i] + d[i] >= -1e-12) and np.all(t[i] + d[i] <= 1 + 1e-12)


# ---------------------------------------------------------------- the attack
def predicted(model, x):
    return model(x, training=False).numpy().argmax(1).astype(np.int64)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_norms_within_eps_and_images_in_box(tiny, batch, norm):
    x, _ = batch
    y = predicted(tiny, x)
    eps = EPS[norm]
    res = FABTargeted(tiny, norm=norm, steps=20, n_target_classes=3)(x, y, eps)
    norms = check_norms(x, res.adversarial, eps, norm)
    assert res.adversarial.dtype == np.float32
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    assert 0 < res.n_success < len(x)
    np.testing.assert_array_equal(res.adversarial[~res.success], x[~res.success])
    assert np.all(norms[res.success] > 0)
    assert np.all(predicted(tiny, res.adversarial)[res.success] != y[res.success])
    assert res.extra["targets"].shape == (len(x), 3)


def constant_model():
    inputs = keras.Input((32, 32, 3))
    flat = keras.layers.Flatten()(inputs)
    logits = keras.layers.Dense(
        10,
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(np.linspace(1, 0, 10)),
    )(flat)
    return keras.Model(inputs, logits)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_constant_model_no_success_no_nan(batch, norm):
    x, _ = batch
    model = constant_model()
    y = np.zeros(len(x), np.int64)  # the constant prediction: every image correct
    attack = FABTargeted(model, norm=norm, steps=5, n_target_classes=2)
    res = attack(x, y, 1.0)
    assert res.n_success == 0
    np.testing.assert_array_equal(res.adversarial, x)
    np.testing.assert_array_equal(res.queries, 1 + 2 * 5 * 2)
    cand, nxt, fooled, dist = attack._step(
        tf.constant(x), tf.constant(x), tf.constant(y), tf.fill([len(x)], tf.constant(3, tf.int64))
    )
    for v in (cand, nxt, dist):
        assert np.all(np.isfinite(v.numpy()))
    assert not fooled.numpy().any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("restarts", [1, 2])
def test_early_exit_gives_the_same_result(tiny, batch, norm, restarts):
    x, _ = batch
    y = predicted(tiny, x)
    y[:2] = (y[:2] + 1) % 10  # two clean misclassifications: successes with no work
    kw = dict(norm=norm, steps=15, restarts=restarts, n_target_classes=2)
    fast = FABTargeted(tiny, early_exit=True, **kw)(x, y, EPS[norm])
    full = FABTargeted(tiny, early_exit=False, **kw)(x, y, EPS[norm])
    np.testing.assert_array_equal(fast.success, full.success)
    np.testing.assert_array_equal(fast.adversarial, full.adversarial)
    assert fast.success[:2].all() and np.all(fast.queries[:2] == 1)
    assert 2 < fast.n_success < len(x)  # some images fooled, some not: a real comparison
    assert np.all(fast.queries <= full.queries) and fast.queries.sum() < full.queries.sum()
    assert np.all(full.queries[2:] == 1 + 2 * 15 * 2 * restarts)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_robust_accuracy_decreases_with_eps_and_reaches_zero(tiny, batch, norm):
    x, _ = batch
    y = predicted(tiny, x)
    attack = FABTargeted(tiny, norm=norm, steps=30, n_target_classes=3)
    epsilons = {"linf": [0.0, 0.02, 8 / 255, 0.5], "l2": [0.0, 1.0, 1.2, 16.0]}[norm]
    robust = []
    for eps in epsilons:
        res = attack(x, y, eps)
        check_norms(x, res.adversarial, eps, norm)
        robust.append(int((~res.success).sum()))
    assert robust[0] == len(x)  # every image is correct, and ε = 0 allows nothing
    assert all(a >= b for a, b in zip(robust, robust[1:]))
    assert robust[-1] == 0 and robust[1] > robust[2] > robust[3]


def linear_model(weights, bias):
    inputs = keras.Input((2, 2, 3))
    flat = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(len(bias))
    model = keras.Model(inputs, dense(flat))
    dense.set_weights([weights.astype(np.float32), bias.astype(np.float32)])
    return model


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_model_reaches_the_minimal_distance(norm):
    """For an affine model the distance to the nearest decision boundary is known:
    FAB-T gets within 3% of it, and never claims success below it."""
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(12, 3))
    model = linear_model(weights, -0.5 * weights.sum(0))  # three-way tie at x = 0.5
    x = rng.uniform(0.45, 0.55, (8, 2, 2, 3)).astype(np.float32)
    logits = (x.reshape(8, -1).astype(np.float64) - 0.5) @ weights
    y = logits.argmax(1)
    dual = {"linf": 1, "l2": 2}[norm]
    dist = np.full(8, np.inf)
    for i in range(8):
        for j in set(range(3)) - {y[i]}:
            gap = logits[i, y[i]] - logits[i, j]
            size = np.linalg.norm(weights[:, y[i]] - weights[:, j], ord=dual)
            dist[i] = min(dist[i], gap / size)
    assert dist.max() < 0.1  # the box [0, 1] plays no part
    attack = FABTargeted(model, norm=norm, steps=100, n_target_classes=2)
    above = attack(x, y, 1.0)  # the minimal-norm iterate is not returned: just any within ε
    assert above.success.all()
    for i in range(8):
        res = attack(x[i : i + 1], y[i : i + 1], float(dist[i]) * 1.03)
        assert res.success[0], (
            i,
            dist[i],
            perturbation_norms(x[i : i + 1], above.adversarial[i : i + 1], norm),
        )
        below = attack(x[i : i + 1], y[i : i + 1], float(dist[i]) * 0.97)
        assert not below.success[0]


def test_targets_are_the_highest_non_true_logits(tiny, batch):
    x, y = batch
    logits = tiny(x, training=False).numpy()
    targets = FABTargeted(tiny, n_target_classes=9).target_classes(logits, y)
    assert targets.shape == (len(x), 9)
    for i in range(len(x)):
        order = [c for c in np.argsort(-logits[i]) if c != y[i]]
        np.testing.assert_array_equal(targets[i], order[:9])
    assert FABTargeted(tiny, n_target_classes=50).target_classes(logits, y).shape == (12, 9)


def test_compiled_once_for_a_shrinking_batch(tiny, batch):
    x, _ = batch
    y = predicted(tiny, x)
    attack = FABTargeted(tiny, steps=10, restarts=2, n_target_classes=2)
    attack(x, y, 8 / 255)
    attack(x[:5], y[:5], 4 / 255, index=np.arange(5, 10))
    assert attack._step.experimental_get_tracing_count() == 1
    assert attack._start.experimental_get_tracing_count() == 1


def test_clean_misclassified_are_successes_with_no_work(tiny, batch):
    x, _ = batch
    y = (predicted(tiny, x) + 1) % 10
    res = FABTargeted(tiny, steps=10)(x, y, 0.0)
    assert res.success.all()
    np.testing.assert_array_equal(res.adversarial, x)
    np.testing.assert_array_equal(res.queries, 1)


def test_rejects_bad_options(tiny):
    for kw in ({"norm": "l1"}, {"steps": 0}, {"n_target_classes": 0}, {"beta": 1.0}):
        with pytest.raises(ValueError):
            FABTargeted(tiny, **kw)


@pytest.mark.slow
def test_efficientnet_lite0_samples_linf_1_255():
    """FAB-T L∞, 100 steps, 2 targets, on the 20 bundled ImageNet samples at ε = 1/255."""
    from advpipe.data.images import to_unit_float
    from advpipe.data.samples import load_samples
    from advpipe.models.zoo import build_model

    images, manifest = load_samples()
    x = to_unit_float(images)
    y = manifest["label"].to_numpy(np.int64)
    model = build_model("efficientnet_lite0")
    attack = FABTargeted(model, norm="linf", steps=100, n_target_classes=2)
    attack(x[:1], y[:1], 1 / 255)  # trace outside the timing
    start = time.perf_counter()
    res = attack(x, y, 1 / 255)
    seconds = time.perf_counter() - start
    check_norms(x, res.adversarial, 1 / 255, "linf")
    clean_wrong = predicted(model, x) != y
    assert np.all(res.success[clean_wrong])
    # a standard model at 1/255: (nearly) every correct image is fooled within a few steps
    # (17/17 when written; the float32 projection stalled short of the boundary: 12/17)
    assert (~res.success).sum() <= 2
    assert np.all(predicted(model, res.adversarial)[res.success] != y[res.success])
    print(
        f"\nFAB-T linf 1/255: {len(x) / seconds:.3f} images/s ({seconds:.1f} s), "
        f"clean acc {1 - clean_wrong.mean():.2f}, robust acc {1 - res.success.mean():.2f}, "
        f"mean queries {res.queries.mean():.1f}"
    )
