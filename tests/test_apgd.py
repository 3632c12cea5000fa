"""APGD (Croce & Hein 2020, https://arxiv.org/abs/2003.01690) and its losses."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advpipe.attacks.apgd import APGD, checkpoints, halve_step, target_classes
from advpipe.attacks.bounded import check_norms
from advpipe.attacks.losses import LOSSES, MIN_CLASSES, ce, ce_targeted, dlr, dlr_targeted

ALL_LOSSES = ("ce", "dlr", "ce_targeted", "dlr_targeted")


# ------------------------------------------------------------------ losses by hand
LOGITS = np.array(
    [
        [3.0, 1.0, 2.0, 0.5, -1.0],
        [0.0, 5.0, 5.0, 1.0, 2.0],
        [1.0, 1.0, 1.0, 1.0, 1.0],  # constant: DLR is 0/0 without the 1e-12
        [-2.0, 4.0, 0.0, 3.0, 1.0],  # misclassified (y = 0)
    ],
    np.float32,
)
Y = np.array([0, 2, 3, 0], np.int64)
T = np.array([2, 0, 1, 3], np.int64)


def _np_ce(z, label):
    z = z.astype(np.float64)
    m = z.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
    return lse - z[np.arange(len(z)), label]


def _call(fn, *args):
    return fn(*(tf.constant(a) for a in args)).numpy()


def test_ce_against_numpy():
    np.testing.assert_allclose(_call(ce, LOGITS, Y), _np_ce(LOGITS, Y), rtol=1e-5)
    np.testing.assert_allclose(_call(ce_targeted, LOGITS, Y, T), -_np_ce(LOGITS, T), rtol=1e-5)
    # row 2: five equal logits, CE = log 5
    assert _call(ce, LOGITS, Y)[2] == pytest.approx(np.log(5.0), rel=1e-6)


def test_dlr_by_hand():
    got = _call(dlr, LOGITS, Y)
    # row 0: z_y = 3, best other 2, sorted 3 > 2 > 1: -(3 - 2) / (3 - 1)
    # row 1: z_y = 5 ties the best other 5: 0; row 2: 0 / (0 + 1e-12) = 0
    # row 3: z_y = -2, best other 4, sorted 4 > 3 > 1: -(-2 - 4) / (4 - 1) = 2
    np.testing.assert_allclose(got, [-0.5, 0.0, 0.0, 2.0], atol=1e-6)
    # the general formula with NumPy sorts
    s = -np.sort(-LOGITS.astype(np.float64), axis=1)
    other = np.where(np.eye(5, dtype=bool)[Y], -np.inf, LOGITS).max(1)
    ref = -(LOGITS[np.arange(4), Y] - other) / (s[:, 0] - s[:, 2] + 1e-12)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_dlr_targeted_by_hand():
    got = _call(dlr_targeted, LOGITS, Y, T)
    # row 0: -(3 - 2) / (3 - (1 + 0.5)/2) = -1/2.25; row 1: -(5 - 0) / (5 - (2 + 1)/2) = -5/3.5
    # row 2: 0; row 3: -(-2 - 3) / (4 - (1 + 0)/2) = 5/3.5
    np.testing.assert_allclose(got, [-1 / 2.25, -5 / 3.5, 0.0, 5 / 3.5], rtol=1e-6, atol=1e-6)
    s = -np.sort(-LOGITS.astype(np.float64), axis=1)
    rows = np.arange(4)
    ref = -(LOGITS[rows, Y] - LOGITS[rows, T]) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_losses_compiled_equal_eager(name):
    """Compiled graphs are rewritten (Grappler): the 1e-12 must survive, no 0/0 = NaN."""
    fn = LOSSES[name]
    args = [LOGITS, Y, T] if name.endswith("targeted") else [LOGITS, Y]
    compiled = tf.function(fn)(*(tf.constant(a) for a in args)).numpy()
    assert np.all(np.isfinite(compiled))
    np.testing.assert_allclose(compiled, _call(fn, *args), rtol=1e-6, atol=1e-6)


def test_dlr_is_scale_and_shift_invariant():
    z = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)
    y = np.arange(6, dtype=np.int64)
    np.testing.assert_allclose(_call(dlr, 7 * z + 3, y), _call(dlr, z, y), rtol=1e-4)


def test_loss_table():
    assert set(LOSSES) == set(ALL_LOSSES) == set(MIN_CLASSES)
    assert MIN_CLASSES == {"ce": 2, "ce_targeted": 2, "dlr": 3, "dlr_targeted": 4}


# ------------------------------------------------------------------ schedule by hand
def test_checkpoints_100():
    # windows 22, 19, 16, 13, 10, 7, then the minimum 6: cumulative sums up to 100
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_checkpoints_small_and_odd():
    # steps 10: window int(2.2) = 2, shrink max(int(0.3), 1) = 1, minimum max(int(0.6), 1) = 1
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert checkpoints(1) == [1]
    # steps 50: windows 11, 10, 9, 8, 7 (shrink int(1.5) = 1), the next ends at 51 > 50
    assert checkpoints(50) == [11, 21, 30, 38, 45]
    # steps 30: the first window is int(6.6) = 6 (not rounded up), shrink and minimum 1
    assert checkpoints(30) == [6, 11, 15, 18, 20, *range(21, 31)]


def test_halve_condition_1():
    best = np.array([10.0])
    common = dict(best=best, best_at_last_check=np.array([0.0]), reduced_at_last_check=[True])
    # 4 steps, all increasing: 4 > 0.75*4 -> keep the step size
    assert not halve_step([[0, 1, 2, 3, 4]], **common)[0]
    # 2 of 4 increasing -> halve
    assert halve_step([[0, 1, 0, 1, 0]], **common)[0]
    # exactly 3 of 4 = rho*k: halved (the authors' "<=")
    assert halve_step([[5, 1, 2, 3, 4]], **common)[0]
    # the first comparison is with the loss before the window: 1 > 5 is no increase
    assert not halve_step([[0, 1, 2, 3, 4]], rho=0.74, **common)[0]
    assert halve_step([[5, 1, 2, 3, 4]], rho=0.74, **common)[0] == (3 <= 0.74 * 4)
    # batched: one row per image
    np.testing.assert_array_equal(
        halve_step(
            [[0, 1, 2, 3, 4], [0, 1, 0, 1, 0]],
            best=[10.0, 10.0],
            best_at_last_check=[0.0, 0.0],
            reduced_at_last_check=[True, True],
        ),
        [False, True],
    )


def test_halve_condition_2():
    window = [[9, 1, 2, 3, 4, 5, 6, 7, 8]]  # 7 of 8 increase: condition 1 false
    # not halved last time and the best loss did not change -> halve
    assert halve_step(window, best=[9.0], best_at_last_check=[9.0], reduced_at_last_check=[False])
    # halved last time: condition 2 off
    assert not halve_step(
        window, best=[9.0], best_at_last_check=[9.0], reduced_at_last_check=[True]
    )[0]
    # the best loss improved: condition 2 off
    assert not halve_step(
        window, best=[9.5], best_at_last_check=[9.0], reduced_at_last_check=[False]
    )[0]


def test_target_classes():
    # k-th highest non-true logit: row 0 (y 0): 2 > 1 > 0.5 > -1; row 3 (y 0): 1, 3, 4, 2
    np.testing.assert_array_equal(
        target_classes(LOGITS[[0, 3]], Y[[0, 3]], 3), [[2, 1, 3], [1, 3, 4]]
    )


# ------------------------------------------------------------------ the attack
@pytest.fixture(scope="module")
def clean_labels(tiny, batch):
    """The batch with the tiny model's own predictions as labels: all clean-correct."""
    x, _ = batch
    return x, np.argmax(tiny.predict(x, verbose=0), axis=1).astype(np.int64)


def _constant_model(bias, size=32):
    inputs = keras.Input((size, size, 3))
    h = keras.layers.Flatten()(keras.layers.Rescaling(0.0)(inputs))
    out = keras.layers.Dense(
        len(bias),
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(np.asarray(bias, np.float32)),
    )(h)
    return keras.Model(inputs, out)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("bias", [[2.0, 1.0, 0.5, 0.0, -1.0], [1.0] * 5], ids=["distinct", "ties"])
def test_constant_model_cannot_be_fooled(batch, norm, bias):
    model = _constant_model(bias)
    x, _ = batch
    y = np.zeros(len(x), np.int64)  # argmax of the constant logits (first of ties)
    eps = 8 / 255
    for loss in ALL_LOSSES:
        r = APGD(model, norm=norm, loss=loss, steps=100, n_target_classes=2)(x, y, eps)
        assert r.n_success == 0, loss
        assert np.all(np.isfinite(r.adversarial)) and np.all(np.isfinite(r.extra["loss"]))
        runs = 2 if loss in ("ce_targeted", "dlr_targeted") else 1
        np.testing.assert_array_equal(r.queries, np.full(len(x), runs * 101))
        np.testing.assert_array_equal(r.adversarial, x)  # failures return the clean image
        # a flat loss never increases: condition 1 halves the step at all 8 checkpoints
        np.testing.assert_allclose(r.extra["step_size"], 2 * eps / 2**8, rtol=1e-6)


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 2.0)])
@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_norms_within_eps(tiny, clean_labels, norm, eps, loss):
    x, y = clean_labels
    r = APGD(tiny, norm=norm, loss=loss, steps=20, n_target_classes=3)(x, y, eps)
    assert r.n_success > 0
    check_norms(x, r.adversarial, eps, norm)
    assert r.adversarial.min() >= 0 and r.adversarial.max() <= 1
    pred = np.argmax(tiny.predict(r.adversarial, verbose=0), axis=1)
    np.testing.assert_array_equal(pred != y, r.success)
    assert np.all(np.isfinite(r.extra["loss"]))


@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_early_exit_does_not_change_results(tiny, clean_labels, loss):
    x, y = clean_labels
    y = y.copy()
    y[0] = (y[0] + 1) % 10  # one clean misclassification: success with zero work
    kw = dict(norm="linf", loss=loss, steps=30, restarts=2, n_target_classes=2)
    eps = 0.03 if loss.startswith("dlr") else 0.05  # some but not all fooled
    fast = APGD(tiny, **kw)(x, y, eps)
    full = APGD(tiny, early_exit=False, **kw)(x, y, eps)
    assert 0 < fast.n_success < len(x)
    assert fast.success[0] and fast.queries[0] == 0
    np.testing.assert_array_equal(fast.adversarial[0], x[0])
    np.testing.assert_array_equal(fast.success, full.success)
    np.testing.assert_allclose(fast.adversarial, full.adversarial, atol=1e-6)
    np.testing.assert_array_equal(fast.queries, full.queries)
    for key in ("run", "iteration", "target"):
        np.testing.assert_array_equal(fast.extra[key], full.extra[key])
    np.testing.assert_allclose(fast.extra["loss"], full.extra["loss"], rtol=1e-5, atol=1e-6)


def _reference_apgd_ce(model, x, y, eps, norm, steps, rho=0.75):
    """A plain transcription of the authors' single run (CE loss, eager, whole batch, no
    early exit): their counter/window bookkeeping, not :func:`checkpoints`. Returns the
    first misclassified iterate and its iteration (-1: never), the best loss, the step."""
    from advpipe.attacks.bounded import image_seeds, normalize, project, random_start

    n, x0, y_t = len(x), tf.constant(x), tf.constant(y)

    def loss_grad(v):
        v = tf.constant(v)
        with tf.GradientTape() as tape:
            tape.watch(v)
            logits = model(v, training=False)
            loss = ce(logits, y_t)
            total = tf.reduce_sum(loss)
        return logits.numpy(), loss.numpy(), tape.gradient(total, v).numpy()

    col = lambda v: v.reshape(-1, 1, 1, 1)
    adv = random_start(x0, eps, norm, image_seeds(0, np.arange(n))).numpy()
    logits, loss, grad = loss_grad(adv)
    first, when = adv.copy(), np.where(logits.argmax(1) != y, 0, -1)
    x_best, grad_best, loss_best = adv.copy(), grad.copy(), loss.copy()
    step, history, adv_old = np.full(n, 2 * eps, np.float32), [loss], adv.copy()
    k, counter = max(int(0.22 * steps), 1), 0
    best_last, reduced_last = loss_best.copy(), np.ones(n, bool)
    for i in range(steps):
        momentum, adv_old = adv - adv_old, adv.copy()
        a = 0.75 if i > 0 else 1.0
        ball = lambda v: project(x0, tf.constant(v), eps, norm).numpy()
        z = ball(adv + col(step) * normalize(tf.constant(grad), norm).numpy())
        adv = ball(adv + (z - adv) * a + momentum * (1 - a))
        logits, loss, grad = loss_grad(adv)
        new = (when < 0) & (logits.argmax(1) != y)
        first[new], when[new] = adv[new], i + 1
        history.append(loss)
        better = loss > loss_best
        x_best[better], grad_best[better], loss_best[better] = (
            adv[better],
            grad[better],
            loss[better],
        )
        counter += 1
        if counter == k:
            ups = sum((history[-j] > history[-j - 1]).astype(int) for j in range(1, k + 1))
            halve = (ups <= k * rho) | (~reduced_last & (best_last >= loss_best))
            reduced_last, best_last = halve, loss_best.copy()
            step[halve] /= 2
            adv[halve], grad[halve] = x_best[halve], grad_best[halve]
            k, counter = max(k - max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)), 0
    return first, when, loss_best, step


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 2.0)])
def test_matches_a_plain_transcription(tiny, clean_labels, norm, eps):
    x, y = clean_labels
    r = APGD(tiny, norm=norm, loss="ce", steps=40)(x, y, eps)
    first, when, loss_best, step = _reference_apgd_ce(tiny, x, y, eps, norm, 40)
    np.testing.assert_array_equal(r.extra["iteration"], when)
    assert 0 < r.n_success < len(x) and np.any(when > checkpoints(40)[1])  # fooled late
    fooled = r.success
    np.testing.assert_allclose(r.adversarial[fooled], first[fooled], atol=1e-5)
    np.testing.assert_allclose(r.extra["loss"][~fooled], loss_best[~fooled], rtol=1e-5)
    np.testing.assert_allclose(r.extra["step_size"][~fooled], step[~fooled], rtol=1e-6)
    assert np.any(step[~fooled] < 2 * eps)  # some step sizes were halved


def test_results_do_not_depend_on_the_batch(tiny, clean_labels):
    x, y = clean_labels
    attack = APGD(tiny, steps=20, restarts=2)
    whole = attack(x, y, 0.04)
    part = attack(x[5:], y[5:], 0.04, index=np.arange(5, len(x)))
    np.testing.assert_array_equal(whole.success[5:], part.success)
    np.testing.assert_allclose(whole.adversarial[5:], part.adversarial, atol=1e-6)


def test_one_trace_for_a_shrinking_batch(tiny, clean_labels):
    x, y = clean_labels
    attack = APGD(tiny, steps=20, restarts=2)
    r = attack(x, y, 0.05)
    assert 0 < r.n_success < len(x)  # the batch shrank during the run
    attack(x[:3], y[:3], 0.05)
    assert attack._step.experimental_get_tracing_count() == 1
    assert attack._start.experimental_get_tracing_count() == 1


def test_queries_count_gradient_evaluations(tiny, clean_labels):
    x, y = clean_labels
    r = APGD(tiny, steps=20, restarts=3)(x, y, 0.05)
    fooled = r.success
    # a fooled image: 21 per failed restart, then the start and the steps up to the fooling one
    np.testing.assert_array_equal(
        r.queries[fooled], 21 * r.extra["run"][fooled] + r.extra["iteration"][fooled] + 1
    )
    np.testing.assert_array_equal(r.queries[~fooled], 3 * 21)


def test_fools_at_large_eps_and_robust_accuracy_decreases(tiny, clean_labels):
    x, y = clean_labels
    attack = APGD(tiny, steps=20)
    robust = [len(x) - attack(x, y, eps).n_success for eps in (0.01, 0.04, 0.06, 0.15)]
    assert robust[-1] <= len(x) // 4  # most images fooled at the largest eps
    assert all(a >= b for a, b in zip(robust, robust[1:]))
    assert robust[0] > robust[-1]


def test_apgd_ce_not_weaker_than_pgd10(tiny, clean_labels):
    from advpipe.attacks.pgd import PGD

    x, y = clean_labels
    pgd = PGD(tiny, steps=10)
    apgd = APGD(tiny, loss="ce", steps=100)
    strictly_between = False
    for eps in (0.03, 0.05, 0.07):
        adv = pgd(x, y, eps)
        pgd_fooled = int(np.sum(np.argmax(tiny.predict(adv, verbose=0), axis=1) != y))
        apgd_fooled = apgd(x, y, eps).n_success
        assert apgd_fooled >= pgd_fooled, eps
        strictly_between |= 0 < pgd_fooled < len(x)
    assert strictly_between  # the comparison is not all-or-nothing


def test_targeted_with_three_classes(batch):
    from advpipe.models.zoo import tiny_model

    model = tiny_model(image_size=32, num_classes=3, seed=2)
    x, _ = batch
    y = np.argmax(model.predict(x, verbose=0), axis=1).astype(np.int64)
    with pytest.raises(ValueError, match="3"):
        APGD(model, loss="dlr_targeted")
    attack = APGD(model, loss="ce_targeted", steps=20)  # n_target_classes 9 capped at 2
    assert attack.n_targets == 2
    r = attack(x, y, 0.15)
    assert r.n_success > 0
    fooled = r.success
    assert np.all(r.extra["target"][fooled] != y[fooled])
    assert np.all(r.extra["target"][fooled] >= 0)
    assert set(r.extra["run"][fooled]) <= {0, 1}
    with pytest.raises(ValueError, match="2"):
        APGD(_constant_model([1.0, 0.0]), loss="dlr")


def test_bad_options(tiny):
    for kw in (
        dict(norm="l1"),
        dict(loss="hinge"),
        dict(steps=0),
        dict(restarts=0),
        dict(n_target_classes=0),
        dict(rho=0.0),
        dict(alpha=1.5),
    ):
        with pytest.raises(ValueError):
            APGD(tiny, **kw)
    with pytest.raises(ValueError, match="eps"):
        APGD(tiny, steps=2)(np.zeros((1, 32, 32, 3), np.float32), np.zeros(1, np.int64), -0.1)


def test_empty_batch(tiny):
    r = APGD(tiny, loss="dlr_targeted", steps=3)(
        np.zeros((0, 32, 32, 3), np.float32), np.zeros(0, np.int64), 0.1
    )
    assert r.adversarial.shape == (0, 32, 32, 3) and r.success.shape == (0,)


@pytest.mark.slow
def test_efficientnet_lite0_apgd_ce():
    from advpipe.data.images import to_unit_float
    from advpipe.data.samples import load_samples
    from advpipe.models.zoo import build_model

    model = build_model("efficientnet_lite0")
    images, manifest = load_samples(224)
    x, y = to_unit_float(images[:4]), manifest["label"].to_numpy(np.int64)[:4]
    r = APGD(model, loss="ce", steps=10)(x, y, 1 / 255)
    check_norms(x, r.adversarial, 1 / 255, "linf")
    clean = np.argmax(model.predict(x, verbose=0), axis=1) == y
    assert clean.sum() >= 3
    assert r.n_success == len(x)  # an undefended ImageNet model falls at 1/255
