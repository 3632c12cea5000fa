"""The AutoAttack protocol: the cascade's plan, bookkeeping, resume, sanity checks, and the
paired (exact McNemar) tests of the masking checks."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from advpipe.attacks.autoattack import (
    COMPONENTS,
    STANDARD,
    AutoAttackResult,
    Settings,
    autoattack,
    autoattack_epsilons,
    plan,
    resume_store,
    sanity_checks,
    square_warning,
)
from advpipe.metrics import masking_checks, paired_test

FAST = Settings(
    apgd_steps=10, n_target_classes=2, fab_steps=10, square_queries=60, square_p_init=0.3
)


def test_plan_standard_and_few_classes():
    names, standard, _ = plan("standard", 1000)
    assert names == ["apgd-ce", "apgd-t", "fab-t", "square"] and standard
    names, standard, note = plan("standard", 3)
    assert names == ["apgd-ce", "apgd-dlr", "apgd-ce-t", "fab-t", "square"]
    assert not standard and "non-standard" in note
    names, standard, _ = plan("standard", 2)
    assert names == ["apgd-ce", "fab-t", "square"] and not standard
    assert plan("custom", 10, ["square"]) == (["square"], False, "custom attack list")
    with pytest.raises(ValueError, match="unknown AutoAttack component 'cw'"):
        plan("custom", 10, ["cw"])
    with pytest.raises(ValueError, match="'apgd-t' needs at least 4 classes"):
        plan("custom", 3, ["apgd-t"])
    with pytest.raises(ValueError, match="version"):
        plan("fast", 10)


def test_standard_settings_are_the_authors():
    assert STANDARD.apgd_steps == 100 and STANDARD.fab_steps == 100
    assert STANDARD.n_target_classes == 9 and STANDARD.square_queries == 5000
    assert STANDARD.square_p_init == 0.8 and STANDARD.apgd_restarts == 1
    # targets are capped at the number of other classes
    assert STANDARD.options("apgd-t", 1000)["n_target_classes"] == 9
    assert STANDARD.options("fab-t", 3)["n_target_classes"] == 2
    assert "n_target_classes" not in STANDARD.options("apgd-ce", 1000)
    assert set(COMPONENTS) == {"apgd-ce", "apgd-dlr", "apgd-t", "apgd-ce-t", "fab-t", "square"}


def test_paired_test_against_hand_computations():
    a = np.array([1, 1, 1, 1, 1, 0, 0, 1], bool)
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1], bool)
    t = paired_test(a, b)  # 5 discordant pairs, all for a: P(X >= 5 | n = 5) = 1/32
    assert (t["a_only"], t["b_only"]) == (5, 0)
    assert t["p_value"] == pytest.approx(1 / 32)
    a = np.array([1, 1, 1, 0, 0, 0], bool)
    b = ~a  # 3 vs 3: P(X >= 3 | n = 6) = (20 + 15 + 6 + 1) / 64
    assert paired_test(a, b)["p_value"] == pytest.approx(42 / 64)
    assert paired_test(a, a)["p_value"] == 1.0  # no discordant pair: no evidence
    with pytest.raises(ValueError, match="same images"):
        paired_test(a, a[:3])


def test_masking_checks_flag_only_significant_differences():
    n = 40
    good = np.zeros(n, bool)
    # one image: white-box PGD "beats" nothing significantly -> no flag (was a flag before)
    one = good.copy()
    one[0] = True
    wb = {"fgsm": {"0.01": good}, "pgd": {"0.01": one}}
    tr = {"fgsm": {"0.01": np.ones(n, bool)}, "pgd": {"0.01": np.ones(n, bool)}}
    ok = masking_checks(wb, tr, chance=1 / 3, margin=0.5)
    assert ok["passed"] and ok["flags"] == [] and ok["iterative_beats_one_step"]
    assert any(t["check"] == "iterative_beats_one_step" for t in ok["tests"])
    # PGD correct on 10 images FGSM fooled: significant (p = 2^-10) -> flagged, with p
    ten = good.copy()
    ten[:10] = True
    bad = masking_checks(
        {"fgsm": {"0.01": good}, "pgd": {"0.01": ten}}, None, chance=1 / 3, margin=0.5
    )
    assert not bad["passed"] and bad["iterative_beats_one_step"] is False
    assert "paired p = 0.00098" in bad["flags"][0]
    assert bad["whitebox_beats_transfer"] is None


class _Constant(keras.layers.Layer):
    def call(self, x):
        # depends on x only through a zero weight: the gradient exists and is all zero
        return 0.0 * tf.reduce_sum(x, axis=[1, 2, 3])[:, None] + tf.constant([2.0, 0.0, -1.0])


def _constant_model():
    inputs = keras.Input((32, 32, 3))
    return keras.Model(inputs, _Constant()(inputs))


def test_autoattack_cascade_on_the_tiny_model(tiny, batch):
    x, y = batch
    res = autoattack(
        tiny,
        x,
        y,
        0.1,
        version="custom",
        attacks=["apgd-ce", "apgd-t", "fab-t", "square"],
        settings=FAST,
        batch_size=5,
        progress=lambda m: None,
    )
    clean = tiny(x).numpy().argmax(1) == y
    np.testing.assert_array_equal(res.clean_correct, clean)
    assert not (res.robust & ~clean).any()
    rows = res.per_attack()
    assert rows[0]["attacked"] == clean.sum()
    assert sum(r["broken"] for r in rows) == clean.sum() - res.robust.sum()
    assert res.max_norm <= 0.1 * (1 + 1e-5) + 1e-6
    # the result survives its JSON form (what the resume store keeps)
    again = AutoAttackResult.from_dict(json.loads(json.dumps(res.to_dict())))
    np.testing.assert_array_equal(again.robust, res.robust)
    assert again.per_attack() == rows
    assert set(again.seconds) == set(res.seconds) == set(res.attacks)
    # wall-clock time stays out of what the metrics files get
    assert all(set(r) == {"attack", "attacked", "broken", "robust_after"} for r in rows)


def test_autoattack_cannot_fool_a_constant_model():
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 0, 1, 2])
    res = autoattack(
        _constant_model(),
        x,
        y,
        0.3,
        settings=FAST,
        version="custom",
        attacks=["apgd-ce", "apgd-dlr", "apgd-ce-t", "fab-t", "square"],
        progress=lambda m: None,
    )
    assert res.broken_by == ["", "", "clean", "clean"]
    assert res.to_dict()["robust_top1"] == 0.5
    assert all(r["broken"] == 0 for r in res.per_attack())
    assert square_warning(res)["warning"] is False


def test_interrupted_runs_resume_per_epsilon(tiny, batch, tmp_path, monkeypatch):
    import advpipe.attacks.autoattack as aa

    x, y = batch
    opts = {"version": "custom", "attacks": ["apgd-ce"], "settings": FAST, "batch_size": 6}
    store = resume_store(tmp_path, "tiny", tiny, x, y, opts)
    first = autoattack_epsilons(tiny, x, y, [0.01], store=store, progress=lambda m: None, **opts)
    assert store.get(0.01) is not None and store.get(0.02) is None
    calls = []
    real = aa.autoattack
    monkeypatch.setattr(aa, "autoattack", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    again = resume_store(tmp_path, "tiny", tiny, x, y, opts)  # a new process: same fingerprint
    both = autoattack_epsilons(
        tiny, x, y, [0.01, 0.02], store=again, progress=lambda m: None, **opts
    )
    assert calls == [0.02]  # 0.01 came from the store
    np.testing.assert_array_equal(both[0.01].robust, first[0.01].robust)
    # other settings: another fingerprint, nothing reused
    other = resume_store(tmp_path, "tiny", tiny, x, y, {**opts, "batch_size": 7})
    assert other.path != again.path and other.get(0.01) is None
    # the same name, settings and images but other weights (a model retrained after an
    # interrupted run): another fingerprint, nothing reused
    retrained = keras.models.clone_model(tiny)
    retrained.set_weights([w * 1.01 for w in tiny.get_weights()])
    moved = resume_store(tmp_path, "tiny", retrained, x, y, opts)
    assert moved.path != again.path and moved.get(0.01) is None
    twin = keras.models.clone_model(tiny)
    twin.set_weights(tiny.get_weights())
    assert resume_store(tmp_path, "tiny", twin, x, y, opts).path == again.path
    again.clear()
    assert not again.path.exists()


def test_an_interrupted_epsilon_goes_on_from_its_last_batch(tiny, batch, tmp_path):
    """Interrupted during the second attack of the cascade, the run goes on from its
    checkpoint: the first attack and the second's finished batches are not run again, and
    the result is the uninterrupted run's."""
    from advpipe.resume import Checkpoint

    x, _ = batch
    y = tiny(x).numpy().argmax(1)  # every image correct: the cascade has work
    kw = dict(version="custom", attacks=["apgd-ce", "apgd-dlr", "square"], settings=FAST)
    kw.update(batch_size=3)
    whole = autoattack(tiny, x, y, 0.045, progress=lambda m: None, **kw)
    assert {"apgd-ce", "apgd-dlr"} <= set(whole.broken_by)  # both attacks break images

    class Interrupted(Checkpoint):
        saves = 0

        def save(self, state):
            super().save(state)
            self.saves += 1
            if self.saves == 6:  # apgd-ce's 4 batches, then 2 of apgd-dlr's
                raise KeyboardInterrupt

    path = tmp_path / "eps.partial.json"
    with pytest.raises(KeyboardInterrupt):
        autoattack(tiny, x, y, 0.045, progress=lambda m: None, checkpoint=Interrupted(path), **kw)
    state = json.loads(path.read_text())
    assert len(state["ran_on"]["apgd-ce"]) == 12 and len(state["ran_on"]["apgd-dlr"]) == 6
    logs = []
    resumed = autoattack(tiny, x, y, 0.045, progress=logs.append, checkpoint=Checkpoint(path), **kw)
    assert "resumed from an interrupted run: apgd-ce 12 images, apgd-dlr 6 images" in logs[0]
    left = 12 - sum(1 for b in whole.broken_by if b == "apgd-ce") - 6
    assert not any("[autoattack apgd-ce" in m for m in logs)
    assert f"3/{left} images" in next(m for m in logs if "[autoattack apgd-dlr" in m)
    assert resumed.broken_by == whole.broken_by and resumed.max_norm == whole.max_norm
    np.testing.assert_array_equal(resumed.robust, whole.robust)
    assert set(resumed.seconds) == set(whole.seconds)


def test_a_finished_epsilon_removes_its_checkpoint(tiny, batch, tmp_path):
    x, y = batch
    opts = {"version": "custom", "attacks": ["apgd-ce"], "settings": FAST, "batch_size": 6}
    store = resume_store(tmp_path, "tiny", tiny, x, y, opts)
    autoattack_epsilons(tiny, x, y, [0.01], store=store, progress=lambda m: None, **opts)
    assert store.get(0.01) is not None and not store.partial(0.01).path.exists()


class _Noisy(keras.layers.Layer):
    def call(self, x):
        return x + tf.random.normal(tf.shape(x))


def test_sanity_checks_flag_random_probability_and_flat_models(tiny, batch):
    x, y = batch
    assert sanity_checks(tiny, x, y)["warnings"] == []
    inputs = keras.Input((32, 32, 3))
    noisy = keras.Model(inputs, tiny(_Noisy()(inputs)))
    assert sanity_checks(noisy, x, y)["random_outputs"]
    probs = keras.Model(inputs, keras.layers.Softmax()(tiny(inputs)))
    assert sanity_checks(probs, x, y)["probabilities"]
    flat = sanity_checks(_constant_model(), x, y % 3)
    assert flat["zero_gradients"] == 1.0 and len(flat["warnings"]) == 1


def test_clearing_a_finished_run_leaves_no_empty_resume_folder(tmp_path, monkeypatch):
    """clear() removes the run's folder and its emptied parents (resume/ included) but
    stops at a parent that still holds another run's files."""
    from advpipe.resume import PerEpsilonStore

    monkeypatch.chdir(tmp_path)
    a = PerEpsilonStore("resume/evaluate_a", "a-1")
    b = PerEpsilonStore("resume/evaluate_b", "b-1")
    a.put(0.01, {"x": 1})
    b.put(0.01, {"x": 2})
    a.clear()
    assert not Path("resume/evaluate_a").exists() and b.get(0.01) == {"x": 2}
    b.clear()
    assert not Path("resume").exists() and tmp_path.is_dir()
