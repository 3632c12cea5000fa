"""Black-box attacks: the shared-size model wrapper, the transfer matrix, the label-only model
and the decision-based attack under a query budget."""

import copy
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from advpipe.attacks.decision import (
    GradientRequestError,
    LabelOnlyModel,
    QueryBudgetExhausted,
    decision_attack,
    first_correct,
)
from advpipe.attacks.registry import make_attack
from advpipe.attacks.sweep import sweep
from advpipe.attacks.transfer import (
    DEEPFOOL_KEY,
    TransferResult,
    flagged_cells,
    transfer_matrix,
    whitebox_flags,
)
from advpipe.models.native_size import resized_input
from advpipe.models.zoo import tiny_model


# ------------------------------------------------------------------ shared image size
def test_resized_input_model_resizes_inside_and_passes_gradients():
    native = tiny_model(image_size=48, num_classes=10, seed=3)
    wrapped = resized_input(native, 32)
    assert wrapped.input_shape == (None, 32, 32, 3)
    x = tf.random.stateless_uniform((2, 32, 32, 3), seed=[1, 2])
    expected = native(tf.image.resize(x, (48, 48), method="bilinear"))
    np.testing.assert_allclose(wrapped(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(wrapped(x)[:, 0])
    assert float(tf.norm(tape.gradient(out, x))) > 0
    assert resized_input(native, 48) is native


# ------------------------------------------------------------------ transfer matrix
@pytest.fixture(scope="module")
def two_models():
    return {"a": tiny_model(32, 10, seed=1), "b": tiny_model(32, 10, seed=7)}


def _build(name, model):
    return make_attack(name, model, seed=0)


def test_transfer_diagonal_is_the_whitebox_sweep(two_models, batch):
    x, y = batch
    eps = [0.01, 0.1]
    result = transfer_matrix(
        two_models,
        _build,
        x,
        y,
        attacks=["fgsm", "rfgsm"],
        epsilons=eps,
        batch_size=5,
        progress=lambda m: None,
    )
    for name, model in two_models.items():
        for attack in ("fgsm", "rfgsm"):
            white = sweep(_build(attack, model), x, y, eps, batch_size=12, progress=lambda m: None)
            for e in eps:
                assert result.top1(attack, f"{e:g}", name, name) == pytest.approx(
                    white.by_epsilon[e]["top1"]
                )
    metrics = result.to_metrics()
    cell = metrics["attacks"]["fgsm"]["0.1"]["cells"]["a"]["b"]
    assert cell["top1"] == result.top1("fgsm", "0.1", "a", "b")
    assert len(result.rows()) == 2 * 2 * 2 * 2


def test_transfer_with_deepfool_uses_its_adversarials(two_models, batch):
    from advpipe.attacks.deepfool import deepfool

    x, y = batch
    y_pred = two_models["a"](x).numpy().argmax(1).astype(np.int64)  # a: 100 % clean
    result = transfer_matrix(
        two_models,
        _build,
        x,
        y_pred,
        attacks=["fgsm", DEEPFOOL_KEY],
        epsilons=[0.05],
        batch_size=6,
        progress=lambda m: None,
        deepfool=lambda m, xs, ys: deepfool(
            m,
            xs,
            ys,
            steps=50,
            candidates=5,
            overshoot=0.02,
            batch_size=6,
            keep_adversarial=True,
            progress=lambda s: None,
        ),
    )
    assert result.eps_keys(DEEPFOOL_KEY) == [DEEPFOOL_KEY]
    # DeepFool flips source a's prediction (= the labels here): white-box top-1 is ~0
    assert result.top1(DEEPFOOL_KEY, DEEPFOOL_KEY, "a", "a") <= 0.1
    assert result.deepfool_l2["a"] > 0


def test_transfer_from_params_reads_attacks_eps_and_deepfool_from_params(two_models, batch):
    from pathlib import Path

    from advpipe.attacks.registry import DEEPFOOL_OPTIONS
    from advpipe.config import load_params
    from wiring import deepfool_options, transfer_from_params

    p = copy.deepcopy(load_params(Path(__file__).resolve().parents[1] / "params.yaml"))
    p["blackbox"]["transfer"].update(attacks=["rfgsm", DEEPFOOL_KEY], epsilons=[0.1, 0.02])
    p["attacks"]["deepfool"].update(steps=3, candidates=3)
    assert list(deepfool_options(p)) == list(DEEPFOOL_OPTIONS)
    x, y = batch
    got = transfer_from_params(two_models, x, y, p, batch_size=6, progress=lambda m: None)
    assert got.attacks == ["rfgsm", DEEPFOOL_KEY] and got.eps_keys("rfgsm") == ["0.02", "0.1"]
    rfgsm = lambda a, m: make_attack(
        a,
        m,
        seed=p["seed"],  # noqa: E731
        alpha_fraction=p["attacks"]["rfgsm"]["alpha_fraction"],
    )
    from advpipe.attacks.deepfool import deepfool

    want = transfer_matrix(
        two_models,
        rfgsm,
        x,
        y,
        attacks=["rfgsm", DEEPFOOL_KEY],
        epsilons=[0.02, 0.1],
        batch_size=6,
        progress=lambda m: None,
        deepfool=lambda m, xs, ys: deepfool(
            m,
            xs,
            ys,
            steps=3,
            candidates=3,
            overshoot=p["attacks"]["deepfool"]["overshoot"],
            batch_size=6,
            keep_adversarial=True,
            progress=lambda s: None,
        ),
    )
    same = [json.dumps(r.to_metrics(), sort_keys=True) for r in (got, want)]  # NaN-safe
    assert same[0] == same[1]


def _fake_result(white_b, transfer_ab):
    ones = np.ones(4, bool)
    correct = {
        ("fgsm", "0.1", "a", "a"): ~ones,
        ("fgsm", "0.1", "b", "a"): ~ones,
        ("fgsm", "0.1", "b", "b"): np.array(white_b),
        ("fgsm", "0.1", "a", "b"): np.array(transfer_ab),
    }
    return TransferResult(
        ["a", "b"], ["fgsm"], [0.1], {"a": ones, "b": np.array([True, True, True, False])}, correct
    )


def test_whitebox_above_transfer_is_flagged():
    ok = _fake_result([False, False, True, False], [True, False, True, False])
    assert whitebox_flags(ok) == [] and ok.to_metrics()["whitebox_le_transfer"]["passed"]
    bad = _fake_result([True, True, True, False], [True, False, False, False])
    flags = whitebox_flags(bad)
    assert len(flags) == 1 and "of b" in flags[0] and "from a" in flags[0]
    assert not bad.to_metrics()["whitebox_le_transfer"]["passed"]
    # fooling rate: on the 3 images both classify correctly, b got 2 of them wrong
    assert bad.fooling_rate("fgsm", "0.1", "a", "b") == pytest.approx(2 / 3)
    assert bad.mean_transfer("fgsm", "0.1") == pytest.approx((0.25 + 0.0) / 2)
    np.testing.assert_array_equal(
        flagged_cells(bad, "fgsm", "0.1"), [[False, True], [False, False]]
    )


def test_transfer_heatmaps_one_png_per_attack(tmp_path):
    from advpipe.blackbox_plots import transfer_heatmaps

    stale = tmp_path / "maps" / "old.png"
    stale.parent.mkdir()
    stale.write_bytes(b"x")
    paths = transfer_heatmaps(
        _fake_result([True, True, True, False], [True, False, False, False]), tmp_path / "maps", 0.1
    )
    assert [p.name for p in paths] == ["fgsm.png"] and paths[0].stat().st_size > 5000
    assert not stale.exists()


# ------------------------------------------------------------------ label-only target
@pytest.fixture(scope="module")
def colour_model():
    """3 classes: the dominant colour channel (a target random noise easily flips)."""
    inputs = keras.Input((32, 32, 3))
    logits = keras.layers.Dense(3, use_bias=False)(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, logits)
    model.layers[-1].set_weights([20 * np.eye(3, dtype=np.float32)])
    return model


@pytest.fixture(scope="module")
def colour_images():
    rng = np.random.default_rng(0)
    y = np.arange(6, dtype=np.int64) % 3
    x = rng.uniform(0, 0.5, (6, 32, 32, 3)).astype(np.float32)
    for i in range(6):
        x[i, ..., y[i]] += 0.4
    return x, y


def test_label_only_model_returns_one_hot_labels_and_refuses_gradients(colour_model, colour_images):
    import foolbox as fb

    x, y = colour_images
    target = LabelOnlyModel(colour_model)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = target(xt)
        total = tf.reduce_sum(out)
    out_np = out.numpy()
    # exactly one 1 per row, at the model's top-1: no logits, no scores leak
    assert set(np.unique(out_np)) == {0.0, 1.0} and (out_np.sum(1) == 1).all()
    np.testing.assert_array_equal(out_np.argmax(1), colour_model(x).numpy().argmax(1))
    with pytest.raises(GradientRequestError):
        tape.gradient(total, xt)
    # a gradient-based attack through the wrapper is stopped
    with pytest.raises(GradientRequestError):
        fb.attacks.L2DeepFoolAttack(steps=5, candidates=3)(
            LabelOnlyModel(colour_model),
            xt,
            fb.criteria.Misclassification(tf.constant(y)),
            epsilons=None,
        )
    assert target.queries == 6 and target.calls == 1


def test_label_only_model_budget(colour_model, colour_images):
    x, y = colour_images
    target = LabelOnlyModel(colour_model, max_queries=3)
    target.track(x, y)
    for _ in range(3):
        target(tf.constant(x))
    with pytest.raises(QueryBudgetExhausted):
        target(tf.constant(x))
    assert target.per_image == 3 and target.queries == 18 and len(target.history) == 3
    with pytest.raises(ValueError, match="tracks 6 images"):
        target(tf.constant(x[:2]))


@pytest.mark.parametrize("attack", ["hopskipjump", "boundary"])
def test_decision_attack_counts_every_query_and_never_asks_for_gradients(
    colour_model, colour_images, monkeypatch, attack
):
    """The attack runs to its budget through the label-only wrapper (which raises on any
    gradient request), and the queries it reports are exactly the rows the model evaluated."""
    x, y = colour_images
    seen = {"rows": 0, "calls": 0}
    original_init = LabelOnlyModel.__init__

    def spying_init(self, model, **kw):
        original_init(self, model, **kw)
        forward = self._forward

        def counted(batch):
            seen["rows"] += int(batch.shape[0])
            seen["calls"] += 1
            return forward(batch)

        self._forward = counted

    monkeypatch.setattr(LabelOnlyModel, "__init__", spying_init)
    budgets = [5, 20, 60, 150]
    result = decision_attack(
        colour_model,
        x,
        y,
        attack=attack,
        budgets=budgets,
        seed=0,
        batch_size=3,
        progress=lambda m: None,
    )
    assert result.queries == seen["rows"] and result.calls == seen["calls"]
    assert result.queries == 150 * len(x)  # the budget stopped it, exactly at the budget
    summaries = [result.summary(b) for b in budgets]
    assert summaries[-1]["success_rate"] == 1.0
    final = result.at_budget(150)
    cut = float(np.median(final))
    assert result.summary(150, cut)["success_rate_within_l2"] == pytest.approx(
        np.mean(final <= cut)
    )
    assert result.summary(150, 1e-9)["success_rate_within_l2"] == 0.0
    medians = [s["l2_median_all"] for s in summaries]
    assert all(a >= b for a, b in zip(medians, medians[1:]))  # more queries, never worse
    assert medians[-1] < medians[1]  # and the attack does improve
    best = result.best
    assert best.min() >= 0 and best.max() <= 1
    np.testing.assert_array_equal(colour_model(best).numpy().argmax(1) != y, True)
    np.testing.assert_allclose(
        np.linalg.norm((best - x).reshape(len(x), -1), axis=1), result.at_budget(150), rtol=1e-5
    )


def test_decision_attack_is_seeded(colour_model, colour_images):
    x, y = colour_images
    run = lambda seed: (
        decision_attack(
            colour_model,
            x,
            y,
            budgets=[40],
            seed=seed,  # noqa: E731
            batch_size=3,
            progress=lambda m: None,
        ).history
    )
    first = run(0)
    np.testing.assert_array_equal(first, run(0))
    assert not np.array_equal(first, run(1))


def test_first_correct(colour_model, colour_images):
    x, y = colour_images
    wrong = y.copy()
    wrong[[0, 2]] = (wrong[[0, 2]] + 1) % 3
    np.testing.assert_array_equal(first_correct(colour_model, x, wrong, 3), [1, 3, 4])


# ------------------------------------------------------------------ params
def _params():
    from advpipe.config import load_params

    return load_params("params.yaml")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("transfer.heatmap_epsilon", 0.5, "is not one of 'blackbox.transfer.epsilons'"),
        ("transfer.models", ["efficientnet_lite0", "alexnet"], "blackbox.transfer.models"),
        ("transfer.attacks", ["fgsm", "fgsm"], "must not repeat"),
        ("decision.attack", "square", "blackbox.decision.attack"),
        ("decision.budgets", [], "blackbox.decision.budgets"),
    ],
)
def test_blackbox_params_are_validated(key, value, message):
    from advpipe.config import ParamsError, validate

    p = copy.deepcopy(_params())
    group, leaf = key.split(".")
    p["blackbox"][group][leaf] = value
    with pytest.raises(ParamsError, match=message):
        validate(p)
    validate(_params())
