"""Defense training: eq. 9, per-example ε, examples from the current weights, the loop,
MirroredStrategy, saved models, trainable blocks, masking checks."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from advpipe.attacks import FGSM, StepLL
from advpipe.defenses.adversarial import AdversarialTraining, kurakin_loss, sample_epsilons
from advpipe.defenses.loop import CleanLoss, TrainConfig, Trainer
from advpipe.defenses.model import (
    build_defense_model,
    load_model,
    save_model,
    set_trainable_blocks,
    trunk_blocks,
)
from advpipe.metrics import masking_checks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def defense_model():
    return build_defense_model("tiny", 3, hidden_units=[8], image_size=32, seed=2)


@pytest.fixture()
def data():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (8, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 3, 8).astype(np.int64)
    return x, y


def _ce(logits, y):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y]


def test_eq9_loss_against_a_hand_computation(defense_model, data):
    x, y = data
    method = AdversarialTraining(FGSM(defense_model), adversarial_fraction=0.5, lam=0.3, seed=4)
    loss, stats = method.loss(
        defense_model, tf.constant(x), tf.constant(y), tf.constant(3, tf.int64)
    )
    k, eps, seeds = method.batch_parts(tf.constant(x), tf.constant(3, tf.int64))
    k = int(k)
    assert k == 4
    adv = FGSM(defense_model).generate(tf.constant(x[:k]), tf.constant(y[:k]), eps, seeds).numpy()
    adv_ce = _ce(defense_model(adv).numpy().astype(np.float64), y[:k])
    clean_ce = _ce(defense_model(x[k:]).numpy().astype(np.float64), y[k:])
    expected = (clean_ce.sum() + 0.3 * adv_ce.sum()) / ((8 - k) + 0.3 * k)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # the adversarial half really is adversarial (higher loss than clean on the same images)
    assert adv_ce.sum() > _ce(defense_model(x[:k]).numpy().astype(np.float64), y[:k]).sum()
    assert stats["adv_n"] == k and stats["clean_n"] == 8 - k
    # and kurakin_loss itself: lambda = 1, k = m/2 is the plain mean
    a, b = tf.constant([1.0, 2.0]), tf.constant([3.0, 6.0])
    assert float(kurakin_loss(a, b, 1.0)) == pytest.approx(3.0)
    assert float(kurakin_loss(a, b, 0.5)) == pytest.approx((3.0 + 0.5 * 9.0) / (2 + 0.5 * 2))


def test_per_example_epsilon_is_a_truncated_normal():
    from scipy import stats

    sigma, top = 8 / 255, 16 / 255
    eps = sample_epsilons(tf.constant(20000), tf.constant([0, 1], tf.int64), sigma, top).numpy()
    assert eps.min() >= 0.0 and eps.max() <= top + 1e-7
    reference = stats.truncnorm(a=0.0, b=top / sigma, loc=0.0, scale=sigma)
    assert stats.kstest(eps, reference.cdf).pvalue > 0.001
    # not uniform (which the bounds alone would also pass)
    assert stats.kstest(eps, stats.uniform(0, top).cdf).pvalue < 1e-6
    again = sample_epsilons(tf.constant(5), tf.constant([0, 2], tf.int64), sigma, top).numpy()
    assert np.abs(again - eps[:5]).max() > 0  # another seed, other draws


def test_examples_come_from_the_current_weights(defense_model, data):
    x, y = data
    method = AdversarialTraining(StepLL(defense_model), seed=0)
    step = tf.constant(0, tf.int64)
    examples = tf.function(lambda a, b: method.adversarial_examples(a, b, step)[1])
    before = examples(tf.constant(x), tf.constant(y)).numpy()
    head = defense_model.get_layer("head")
    for w in head.trainable_weights:
        w.assign(w + tf.random.stateless_normal(w.shape, seed=[1, 2], stddev=0.5))
    after = examples(tf.constant(x), tf.constant(y)).numpy()  # same compiled function
    assert np.abs(after - before).max() > 0
    k, eps, seeds = method.batch_parts(tf.constant(x), step)
    fresh = (
        StepLL(defense_model)
        .generate(tf.constant(x[: int(k)]), tf.constant(y[: int(k)]), eps, seeds)
        .numpy()
    )
    np.testing.assert_allclose(after, fresh, atol=1e-6)


def test_rfgsm_noise_differs_per_training_step(defense_model, data):
    from advpipe.attacks import RFGSM

    x, y = data
    method = AdversarialTraining(RFGSM(defense_model), seed=0)
    _, a = method.adversarial_examples(tf.constant(x), tf.constant(y), tf.constant(0, tf.int64))
    _, b = method.adversarial_examples(tf.constant(x), tf.constant(y), tf.constant(1, tf.int64))
    assert np.abs(a.numpy() - b.numpy()).max() > 0


def test_trainer_learns_keeps_the_best_and_is_reproducible(tmp_path, data):
    x, y = data

    def run(path):
        model = build_defense_model("tiny", 3, image_size=32, seed=2)
        saved = []

        def save(epoch):
            save_model(model, path, {"best_epoch": epoch})
            saved.append(epoch)

        forward = tf.function(lambda a: model(a, training=False))
        evaluate = lambda: {"val_acc": float(np.mean(forward(x).numpy().argmax(1) == y))}  # noqa: E731
        cfg = TrainConfig(learning_rate=0.05, epochs=15, batch_size=4, patience=3, seed=0)
        history = Trainer(
            model, CleanLoss(), cfg, evaluate=evaluate, save=save, log=lambda m: None
        ).fit((x * 255).astype(np.uint8), y)
        return history, saved

    h1, saved = run(tmp_path / "a.keras")
    h2, _ = run(tmp_path / "b.keras")
    assert h1.rows[-1]["train_loss"] < h1.rows[0]["train_loss"]
    assert [r["train_loss"] for r in h1.rows] == [r["train_loss"] for r in h2.rows]
    assert saved[-1] == h1.best_epoch
    assert h1.best_val == max(r["val_acc"] for r in h1.rows)
    loaded = load_model(tmp_path / "a.keras")
    assert loaded.output_shape == (None, 3)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


@pytest.mark.slow
def test_saved_model_loads_with_plain_keras_and_gives_the_same_logits(
    tmp_path, defense_model, data
):
    x, _ = data
    save_model(defense_model, tmp_path / "m.keras", {"classes": [0, 482, 574]})
    code = textwrap.dedent(f"""
        import numpy as np, keras, advpipe
        m = keras.models.load_model({str(tmp_path / "m.keras")!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "out.npy")!r}, np.asarray(m(x)))
    """)
    np.save(tmp_path / "x.npy", x)
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), defense_model(x).numpy(), atol=1e-5)
    assert json.loads((tmp_path / "m.json").read_text())["classes"] == [0, 482, 574]


@pytest.mark.slow
def test_saving_the_same_weights_twice_gives_the_same_file(tmp_path, defense_model, data):
    # Keras stamps the save time (seconds) and Python object ids into the archive; DVC would
    # see a new output each time. Saved twice here, a second apart; then the same model built
    # and saved in two fresh processes, as two runs of a training stage do.
    save_model(defense_model, tmp_path / "a.keras")
    time.sleep(1.1)
    save_model(defense_model, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    for name in ("c", "d"):
        code = textwrap.dedent(f"""
            from advpipe.defenses.model import build_defense_model, save_model
            model = build_defense_model("tiny", 3, hidden_units=[8], image_size=32, seed=2)
            save_model(model, {str(tmp_path / f"{name}.keras")!r})
        """)
        subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            capture_output=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    assert (tmp_path / "c.keras").read_bytes() == (tmp_path / "d.keras").read_bytes()
    x, _ = data
    np.testing.assert_array_equal(
        load_model(tmp_path / "b.keras")(x).numpy(), defense_model(x).numpy()
    )


def test_trainable_blocks_unfreeze_the_top_of_the_trunk_but_not_batch_norm():
    from advpipe.models.zoo import build_trunk

    trunk = build_trunk("efficientnet_lite0", weights=False)
    blocks = trunk_blocks(trunk)
    assert len(blocks) == 18  # stem, 16 MBConv blocks, head convolution
    assert set_trainable_blocks(trunk, 0) == [] and not trunk.trainable_weights
    names = set_trainable_blocks(trunk, 2)
    assert names == ["blocks_15", "top"]
    trainable = {w.path.split("/")[0] for w in trunk.trainable_weights}
    assert trainable == {
        "blocks_15_expand_conv",
        "blocks_15_depthwise_conv",
        "blocks_15_project_conv",
        "conv_head",
    }
    with pytest.raises(ValueError, match="trainable_blocks"):
        set_trainable_blocks(trunk, 19)


@pytest.mark.slow
def test_one_training_step_under_mirrored_strategy_on_two_cpus(tmp_path):
    """Same step, same start, on one device and mirrored over two: the same weights after."""
    code = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from advpipe.attacks import FGSM
        from advpipe.defenses.adversarial import AdversarialTraining
        from advpipe.defenses.model import build_defense_model
        from advpipe.defenses.loop import CleanLoss, TrainConfig, Trainer
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
        y = rng.integers(0, 3, 8).astype(np.int64)
        out = {}
        for label, strategy in [("one", tf.distribute.get_strategy()),
                                ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
            with strategy.scope():
                model = build_defense_model("tiny", 3, image_size=32, seed=2)
            t = Trainer(model, CleanLoss(), TrainConfig(learning_rate=0.1, optimizer="sgd"),
                        strategy=strategy, evaluate=lambda: {}, save=lambda e: None)
            stats = t.train_step(x, y, 0)
            out[label] = [w.numpy() for w in model.trainable_weights]
            assert stats["n"] == 8, stats
            if label == "mirrored":
                assert strategy.num_replicas_in_sync == 2
                with strategy.scope():
                    adv = AdversarialTraining(FGSM(model), seed=0)
                    t2 = Trainer(model, adv, TrainConfig(), strategy=strategy,
                                 evaluate=lambda: {}, save=lambda e: None)
                s2 = t2.train_step(x, y, 0)
                assert s2["adv_n"] == 4 and s2["clean_n"] == 4, s2
        moved = max(np.abs(a - b).max() for a, b in zip(out["one"], model.trainable_weights))
        diff = max(np.abs(a - b).max() for a, b in zip(out["one"], out["mirrored"]))
        print("DIFF", diff)
        assert diff < 1e-5, diff
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DIFF" in proc.stdout


def test_masking_checks_flag_what_they_should():
    n = 60
    per = lambda acc: np.arange(n) < round(acc * n)  # noqa: E731 (correct on the first k)
    wb = {
        "fgsm": {"0.01": per(0.5), "0.03": per(0.4)},
        "pgd": {"0.01": per(0.2), "0.03": per(0.05)},
    }
    tr = {"fgsm": {"0.01": per(0.7), "0.03": per(0.6)}, "pgd": {"0.01": per(0.6), "0.03": per(0.5)}}
    ok = masking_checks(wb, tr, chance=1 / 3, margin=0.1)
    assert ok["passed"] and ok["flags"] == []
    masked = {
        "fgsm": {"0.01": per(0.5), "0.03": per(0.4)},
        "pgd": {"0.01": per(0.8), "0.03": per(0.75)},
    }
    bad = masking_checks(masked, tr, chance=1 / 3, margin=0.1)
    assert not bad["passed"]
    assert bad["iterative_beats_one_step"] is False
    assert bad["falls_towards_chance"] is False
    assert bad["whitebox_beats_transfer"] is False  # pgd 0.75 > transfer 0.5 at 0.03: 15 images
    assert any("pgd 0.800 > best one-step (fgsm) 0.500 at eps 0.01" in f for f in bad["flags"])
    assert masking_checks(wb, None, chance=1 / 3)["whitebox_beats_transfer"] is None


def test_dvc_yaml_foreach_lists_follow_the_registries():
    import yaml

    from advpipe.attacks.registry import ATTACKS
    from advpipe.defenses.registry import DEFENSES, FINE_TUNED

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages["attack"]["foreach"]) == [*ATTACKS, "autoattack"]
    assert list(stages["train"]["foreach"]) == list(FINE_TUNED)
    assert list(stages["evaluate"]["foreach"]) == list(DEFENSES)
    for name in FINE_TUNED:  # each trains with its own params group
        assert stages["train"]["foreach"][name]["group"] == DEFENSES[name].params_group


def test_apgd_ce_is_compared_with_pgd_at_every_epsilon_and_a_weaker_one_is_flagged():
    """evaluate_defense runs the APGD-CE check at every ε (paired test against PGD on the
    same images); an APGD-CE that breaks nothing while PGD breaks many is a masking flag."""
    from advpipe.attacks import PGD
    from advpipe.attacks.autoattack import Settings, apgd_ce_correct
    from advpipe.defenses.evaluate import evaluate_defense

    model = build_defense_model("tiny", 3, hidden_units=[8], image_size=32, seed=2)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (48, 32, 32, 3)).astype(np.uint8)
    y = rng.integers(0, 3, 48).astype(np.int64)
    settings = Settings(apgd_steps=5)
    seen = {}

    def real(m, images, labels, eps):
        seen[eps] = apgd_ce_correct(m, images, labels, eps, settings=settings, batch_size=16)
        return seen[eps]

    common = dict(
        transfer=None,
        epsilons=[0.01, 0.3],
        deepfool_options={"steps": 2, "candidates": 3, "batch_size": 16},
        batch_size=16,
        chance=1 / 3,
        margin=0.1,
        progress=lambda m: None,
    )
    pgd = {"pgd": PGD(model, steps=5, rel_stepsize=0.25, random_start=True, seed=0)}
    out = evaluate_defense(model, x, y, whitebox=pgd, apgd_ce=real, **common)
    checks = out["apgd_ce_vs_pgd"]
    assert set(checks) == {"0.01", "0.3"} and set(seen) == {0.01, 0.3}
    for eps, key in ((0.01, "0.01"), (0.3, "0.3")):
        assert checks[key]["apgd_ce_top1"] == pytest.approx(float(np.mean(seen[eps])))
        assert checks[key]["pgd_top1"] == out["whitebox"]["pgd"][key]
    assert out["whitebox"]["pgd"]["0.3"] < out["clean_top1"]  # PGD breaks images at 0.3

    # a blind "APGD-CE" (every clean-correct image survives): significantly weaker than PGD
    clean = model.predict(x.astype(np.float32) / 255, verbose=0).argmax(1) == y
    blind = lambda m, images, labels, eps: clean  # noqa: E731
    out = evaluate_defense(model, x, y, whitebox=pgd, apgd_ce=blind, **common)
    weak = out["apgd_ce_vs_pgd"]["0.3"]
    assert weak["apgd_weaker"] is True and weak["p_value"] < 0.05
    assert weak["a_only"] - weak["b_only"] == round((clean.mean() - weak["pgd_top1"]) * len(x))
    assert out["masking"]["passed"] is False
    assert any("APGD weaker than PGD" in f and "0.3" in f for f in out["masking"]["flags"])
    # without the check: no key computed
    out = evaluate_defense(model, x, y, whitebox=pgd, **common)
    assert out["apgd_ce_vs_pgd"] is None


def test_apgd_vs_pgd_against_a_hand_computation():
    """5 images: APGD-CE leaves 1, 2 and 3 correct, PGD 1 only -> 2 discordant pairs, both
    APGD's: one-sided exact binomial tail P(X >= 2 | n = 2) = 1/4; with 6 such pairs it is
    1/64 < 0.05, a weaker APGD-CE, and the flag's line names both figures and ε."""
    from advpipe.defenses.evaluate import apgd_vs_pgd, apgd_weaker_flag

    check = apgd_vs_pgd([1, 1, 1, 0, 0], [1, 0, 0, 0, 0], alpha=0.05)
    assert check == {
        "apgd_ce_top1": 0.6,
        "pgd_top1": 0.2,
        "a_only": 2,
        "b_only": 0,
        "p_value": pytest.approx(0.25),
        "apgd_weaker": False,
    }
    weak = apgd_vs_pgd([1] * 6 + [0] * 2, [0] * 8, alpha=0.05)
    assert weak["p_value"] == pytest.approx(1 / 64) and weak["apgd_weaker"] is True
    assert apgd_weaker_flag(weak, "0.0078") == (
        "APGD-CE 0.750 > PGD 0.000 at eps 0.0078 (paired p = 0.016): APGD weaker than PGD"
    )
    assert apgd_vs_pgd([], [], alpha=0.05)["apgd_ce_top1"] == 0.0  # no images: no NaN
