"""The training loop's budget options: gradient accumulation, learning-rate schedules,
augmentation, the catastrophic-overfitting guard; and the default loop left as it was."""

import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from advpipe.defenses.augment import augment_batch, image_seeds
from advpipe.defenses.loop import (
    CleanLoss,
    TrainConfig,
    Trainer,
    guard_steps,
    micro_batch_index,
)
from advpipe.defenses.lr_schedules import learning_rate_at
from advpipe.defenses.model import build_defense_model
from advpipe.defenses.overfitting_guard import OverfittingGuard


def _model():
    # the whole tiny network trains (its one block), no batch norm, no dropout
    return build_defense_model("tiny", 3, image_size=32, seed=2, trainable_blocks=1)


def _data(n=8, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    y = rng.integers(0, 3, n).astype(np.int64)
    return x, y


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _trainer(model, cfg, **kwargs):
    kwargs.setdefault("evaluate", lambda: {"val_acc": 0.0})
    kwargs.setdefault("save", lambda epoch: None)
    kwargs.setdefault("log", lambda m: None)
    return Trainer(model, CleanLoss(), cfg, **kwargs)


def _max_diff(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b))


# ------------------------------------------------------------------ default loop
def test_default_step_is_bit_identical_to_the_plain_step():
    """With every new option off, the loop's step is the plain one: tape, mean loss,
    apply_gradients; a hand-written copy gives exactly the same weights."""
    x, y = _data()
    model = _model()
    cfg = TrainConfig(optimizer="sgd", learning_rate=0.1)
    trainer = _trainer(model, cfg)
    ref_model = _model()
    ref_opt = keras.optimizers.SGD(0.1, momentum=0.9)
    ref_opt.build(ref_model.trainable_variables)

    @tf.function
    def ref_step(a, b, step):
        with tf.GradientTape() as tape:
            loss, _ = CleanLoss().loss(ref_model, a, b, step)
        grads = tape.gradient(loss, ref_model.trainable_variables)
        ref_opt.apply_gradients(zip(grads, ref_model.trainable_variables))

    start = _weights(model)
    for step in range(3):
        trainer.train_step(x, y, step)
        ref_step(
            tf.constant(x.astype(np.float32) / 255), tf.constant(y), tf.constant(step, tf.int64)
        )
    assert _max_diff(start, _weights(model)) > 1e-3  # it trained
    for a, b in zip(_weights(model), _weights(ref_model)):
        np.testing.assert_array_equal(a, b)
    # the same comparison sees augmentation (so it could fail)
    augmented = _model()
    t2 = _trainer(augmented, TrainConfig(optimizer="sgd", learning_rate=0.1, augment="crop_flip"))
    for step in range(3):
        t2.train_step(x, y, step)
    assert _max_diff(_weights(augmented), _weights(model)) > 1e-4


def test_default_curves_have_no_learning_rate_column():
    x, y = _data(16)
    history = _trainer(_model(), TrainConfig(epochs=2, batch_size=8)).fit(x, y)
    assert [list(r) for r in history.rows] == [
        [
            "epoch",
            "train_loss",
            "clean_acc",
            "adv_acc",
            "val_acc",
            "seconds",
            "guard_seconds",
            "val_seconds",
            "steps",
        ]
    ] * 2
    assert history.overfitting is None and history.guard_checks == []


def test_config_errors():
    model = _model()
    for bad, match in [
        (dict(accumulation_steps=0), "accumulation_steps"),
        (dict(lr_schedule="linear"), "lr_schedule"),
        (dict(lr_schedule="cosine", lr_decay_at=0.5), "lr_decay_at"),
        (dict(lr_peak_at=1.5), "lr_peak_at"),
        (dict(augment="mixup"), "augment"),
        (dict(augment="crop_flip", augment_padding="wrap"), "augment_padding"),
        (dict(augment_pad=-1), "augment_pad"),
        (dict(crop_scale_min=0.0), "crop_scale_min"),
        (dict(guard=lambda: 0.5, guard_checks_per_epoch=0), "guard_checks_per_epoch"),
    ]:
        with pytest.raises(ValueError, match=match):
            _trainer(model, TrainConfig(**bad))
    with pytest.raises(ValueError, match="guard_drop"):
        OverfittingGuard(check=lambda: 0.5, drop=0.0)


# ------------------------------------------------------------------ gradient accumulation
def test_accumulation_gives_the_weights_of_one_big_batch():
    x, y = _data()
    out, stats = {}, {}
    for steps in (1, 4):
        model = _model()
        start = _weights(model)
        cfg = TrainConfig(optimizer="sgd", learning_rate=0.5, accumulation_steps=steps)
        stats[steps] = _trainer(model, cfg).train_step(x, y, 0)
        out[steps] = _weights(model)
    assert _max_diff(start, out[1]) > 1e-3  # the step moved the weights
    assert _max_diff(out[1], out[4]) < 1e-6
    assert stats[4]["n"] == stats[1]["n"] == 8 and stats[4]["clean_n"] == 8
    assert stats[4]["loss_sum"] == pytest.approx(stats[1]["loss_sum"], rel=1e-5)
    assert stats[4]["clean_correct"] == stats[1]["clean_correct"]


def test_accumulation_with_augmentation_and_fit():
    """Augmentation is seeded by the image's place in the global batch: 2 micro-batches
    of 4 see the same augmented images as one batch of 8; fit counts optimizer steps."""
    x, y = _data(16)
    out = {}
    for steps in (1, 2):
        model = _model()
        cfg = TrainConfig(
            optimizer="sgd", learning_rate=0.5, epochs=2, batch_size=8, augment="crop_flip"
        )
        cfg.accumulation_steps = steps
        history = _trainer(model, cfg).fit(x, y)
        assert history.steps == 4 and [r["steps"] for r in history.rows] == [2, 4]
        out[steps] = (_weights(model), [r["train_loss"] for r in history.rows])
    assert _max_diff(out[1][0], out[2][0]) < 1e-5
    np.testing.assert_allclose(out[1][1], out[2][1], rtol=1e-5)


def test_methods_see_the_optimizer_step_and_the_micro_batch():
    class Probe(CleanLoss):
        def loss(self, model, x, y, step):
            loss, stats = super().loss(model, x, y, step)
            micro = tf.cast(micro_batch_index(), tf.float32)
            return loss, {**stats, "adv_correct": micro, "adv_n": tf.cast(step, tf.float32)}

    x, y = _data()
    for steps, micro_sum in [(1, 0.0), (4, 0.0 + 1 + 2 + 3)]:
        cfg = TrainConfig(optimizer="sgd", accumulation_steps=steps)
        trainer = Trainer(_model(), Probe(), cfg, evaluate=dict, save=lambda e: None)
        stats = trainer.train_step(x, y, 7)
        assert stats["adv_correct"] == micro_sum
        assert stats["adv_n"] == 7 * steps  # every micro-batch sees optimizer step 7
    assert float(micro_batch_index()) == 0.0  # outside the loop


def test_accumulation_needs_equal_micro_batches():
    x, y = _data(6)
    trainer = _trainer(_model(), TrainConfig(accumulation_steps=4, batch_size=6, epochs=1))
    with pytest.raises(ValueError, match="micro-batches"):
        trainer.train_step(x, y, 0)
    # fit rounds the batch down to a multiple of the micro-batches: 6 -> 4
    assert trainer.fit(x, y).rows[0]["steps"] == 1
    small = _trainer(_model(), TrainConfig(accumulation_steps=4, batch_size=3))
    with pytest.raises(ValueError, match="accumulation_steps"):
        small.fit(x, y)


@pytest.mark.slow
def test_accumulation_under_mirrored_strategy_on_two_cpus():
    """2 replicas x 2 micro-batches of 2 give the weights of one batch of 8 on one device."""
    code = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from advpipe.defenses.model import build_defense_model
        from advpipe.defenses.loop import CleanLoss, TrainConfig, Trainer
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
        y = rng.integers(0, 3, 8).astype(np.int64)
        out = {}
        for label, strategy, steps in [
            ("one", tf.distribute.get_strategy(), 1),
            ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 2),
        ]:
            with strategy.scope():
                model = build_defense_model("tiny", 3, image_size=32, seed=2, trainable_blocks=1)
            cfg = TrainConfig(learning_rate=0.5, optimizer="sgd", accumulation_steps=steps,
                              augment="crop_flip")
            t = Trainer(model, CleanLoss(), cfg, strategy=strategy,
                        evaluate=lambda: {}, save=lambda e: None)
            stats = t.train_step(x, y, 0)
            assert stats["n"] == 8, stats
            out[label] = [np.array(w) for w in model.get_weights()]
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


# ------------------------------------------------------------------ learning-rate schedules
def test_learning_rate_schedules_by_hand():
    at = lambda s, schedule, total=10, **kw: learning_rate_at(  # noqa: E731
        s, total, schedule=schedule, peak=1.0, **kw
    )
    assert [at(s, "constant") for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    # cosine: peak at 0, half way down at the middle, 0 at the end
    assert at(0, "cosine") == 1.0
    assert at(5, "cosine") == pytest.approx(0.5)
    assert at(2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert at(10, "cosine") == pytest.approx(0.0, abs=1e-12)
    # cyclic (Wong et al.): the value at (step + 1) / total; up to the peak at 40 %, then down
    cyclic = [at(s, "cyclic", peak_at=0.4) for s in range(10)]
    np.testing.assert_allclose(
        cyclic, [0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0], atol=1e-12
    )
    assert at(0, "cyclic", total=4, peak_at=0.5) == pytest.approx(0.5)
    assert at(0, "cyclic", total=4, peak_at=0.0) == pytest.approx(0.75)
    assert at(3, "cyclic", total=4, peak_at=1.0) == pytest.approx(1.0)
    # step: / 10 at 50 % and at 75 % of the steps
    assert [at(s, "step", total=8) for s in range(8)] == pytest.approx(
        [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    assert learning_rate_at(0, 5, schedule="cosine", peak=0.3) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="lr_schedule"):
        at(0, "exponential")
    with pytest.raises(ValueError, match="total_steps"):
        at(0, "cosine", total=0)


def test_the_loop_uses_the_schedule():
    """One step per epoch: the optimizer's learning rate at each epoch's end is the
    schedule's; SGD without momentum leaves the weights alone at the cycle's last step (lr 0)."""
    x, y = _data()
    model = _model()
    seen, weights = [], []
    holder = {}

    def evaluate():
        seen.append(float(holder["trainer"].optimizer.learning_rate.numpy()))
        weights.append(_weights(model))
        return {"val_acc": 0.0}

    cfg = TrainConfig(
        optimizer="sgd",
        momentum=0.0,
        learning_rate=0.2,
        epochs=5,
        batch_size=8,
        lr_schedule="cyclic",
        lr_peak_at=0.4,
    )
    logs = []
    holder["trainer"] = trainer = _trainer(model, cfg, evaluate=evaluate, log=logs.append)
    start = _weights(model)
    history = trainer.fit(x, y)
    expected = [0.2 * f for f in (0.5, 1.0, 2 / 3, 1 / 3, 0.0)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose([r["lr"] for r in history.rows], expected, rtol=1e-12, atol=1e-12)
    assert any(m.startswith("[clean] epoch 2/5") and ", lr 0.2" in m for m in logs)
    assert _max_diff(start, weights[0]) > 1e-4  # lr 0.04: moved
    assert _max_diff(weights[2], weights[3]) > 1e-4  # lr 0.0667: moved
    for a, b in zip(weights[3], weights[4]):  # lr 0: not moved
        np.testing.assert_array_equal(a, b)
    # total steps capped by max_steps: cosine over 4 steps, not 5
    cfg2 = TrainConfig(optimizer="sgd", epochs=5, batch_size=8, lr_schedule="cosine", max_steps=4)
    rows = _trainer(_model(), cfg2).fit(x, y).rows
    np.testing.assert_allclose(
        [r["lr"] for r in rows],
        [learning_rate_at(s, 4, schedule="cosine", peak=1e-3) for s in range(4)],
        rtol=1e-12,
    )


def test_long_epochs_print_progress_lines(monkeypatch):
    """Within an epoch the loop prints a progress line (step, running loss, s/step, time
    left in the epoch) at most every PROGRESS_SECONDS; none after an epoch's last step."""
    import advpipe.defenses.loop as loop

    x, y = _data(n=32)
    cfg = TrainConfig(optimizer="sgd", epochs=2, batch_size=8)
    logs = []
    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    _trainer(_model(), cfg, log=logs.append).fit(x, y)
    lines = [m for m in logs if ": step " in m]
    assert [m.split(": step ")[1].split(",")[0] for m in lines] == ["1/4", "2/4", "3/4"] * 2
    assert all("epoch ends in" in m and "s/step" in m and "loss " in m for m in lines)
    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 1e9)
    logs.clear()
    _trainer(_model(), cfg, log=logs.append).fit(x, y)
    assert not [m for m in logs if ": step " in m]


# ------------------------------------------------------------------ augmentation
def _images(n=6, size=16, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)), tf.float32)


def test_augment_keeps_shape_and_range_and_is_seeded():
    x = _images()
    for mode in ("crop_flip", "resized_crop_flip"):
        a = augment_batch(x, image_seeds(0, 3, tf.range(6)), mode=mode).numpy()
        assert a.shape == x.shape and a.dtype == np.float32
        assert a.min() >= 0.0 and a.max() <= 1.0
        again = augment_batch(x, image_seeds(0, 3, tf.range(6)), mode=mode).numpy()
        np.testing.assert_array_equal(a, again)
        for seeds in (image_seeds(1, 3, tf.range(6)), image_seeds(0, 4, tf.range(6))):
            other = augment_batch(x, seeds, mode=mode).numpy()
            assert all(np.abs(other[i] - a[i]).max() > 0 for i in range(6))
        assert np.abs(a - x.numpy()).max() > 0.1
    np.testing.assert_array_equal(augment_batch(x, image_seeds(0, 0, tf.range(6)), mode="none"), x)
    with pytest.raises(ValueError, match="NHWC"):
        augment_batch(tf.zeros([4, 8]), image_seeds(0, 0, tf.range(4)), mode="crop_flip")
    with pytest.raises(ValueError, match="augment_pad"):
        augment_batch(x, image_seeds(0, 0, tf.range(6)), mode="crop_flip", pad=16)


def test_flip_really_flips_and_pad_0_without_flip_is_identity():
    x = _images(64, 8)
    seeds = image_seeds(5, 0, tf.range(64))
    np.testing.assert_array_equal(
        augment_batch(x, seeds, mode="crop_flip", pad=0, flip=False).numpy(), x.numpy()
    )
    # an asymmetric image: pad 0 leaves it either as it is or mirrored left-right
    ramp = np.tile(np.linspace(0, 1, 8, dtype=np.float32)[None, None, :, None], (64, 8, 1, 3))
    out = augment_batch(tf.constant(ramp), seeds, mode="crop_flip", pad=0).numpy()
    same = [np.array_equal(o, ramp[0]) for o in out]
    mirrored = [np.array_equal(o, ramp[0][:, ::-1]) for o in out]
    assert all(s != m for s, m in zip(same, mirrored))
    assert 16 <= sum(mirrored) <= 48  # p = 1/2 over 64 images


@pytest.mark.parametrize("padding", ["zero", "reflect"])
def test_crop_is_a_window_of_the_padded_image(padding):
    x = _images(16, 8, seed=3).numpy()
    out = augment_batch(
        tf.constant(x),
        image_seeds(2, 1, tf.range(16)),
        mode="crop_flip",
        pad=2,
        padding=padding,
        flip=False,
    ).numpy()
    mode = "constant" if padding == "zero" else "reflect"
    offsets = []
    for img, o in zip(x, out):
        padded = np.pad(img, [(2, 2), (2, 2), (0, 0)], mode=mode)
        found = [
            (r, c)
            for r in range(5)
            for c in range(5)
            if np.array_equal(padded[r : r + 8, c : c + 8], o)
        ]
        assert found, "not a window of the padded image"
        offsets.append(found[0])
    assert len(set(offsets)) > 4  # the offsets vary
    assert any(r != c for r, c in offsets)  # rows and columns drawn apart


def test_resized_crop_zooms_into_a_window():
    """On a horizontal ramp each output row is a monotone ramp over a sub-range (a crop,
    resized); constant images stay constant; scale min 1 and no flip keep whole rows."""
    ramp = np.tile(np.linspace(0, 1, 16, dtype=np.float32)[None, None, :, None], (32, 16, 1, 3))
    seeds = image_seeds(0, 0, tf.range(32))
    out = augment_batch(tf.constant(ramp), seeds, mode="resized_crop_flip", flip=False).numpy()
    rows = out[:, 8, :, 0]
    assert np.all(np.diff(rows, axis=1) >= -1e-6)  # increasing: not flipped
    spans = rows[:, -1] - rows[:, 0]
    assert spans.max() <= 1.0 + 1e-6 and spans.min() > 0
    assert spans.min() < 0.9  # some windows are narrower than the image
    flipped = augment_batch(tf.constant(ramp), seeds, mode="resized_crop_flip").numpy()
    assert np.any(np.diff(flipped[:, 8, :, 0], axis=1).sum(1) < 0)  # some are mirrored
    # a ramp down (channel 0) and across (channel 1): the window's height and width
    h, w = np.meshgrid(np.linspace(0, 1, 16), np.linspace(0, 1, 16), indexing="ij")
    grid = np.tile(np.stack([h, w, 0 * h], -1)[None].astype(np.float32), (64, 1, 1, 1))
    out = augment_batch(
        tf.constant(grid), image_seeds(1, 0, tf.range(64)), mode="resized_crop_flip", flip=False
    ).numpy()
    ch = (out[:, -1, 0, 0] - out[:, 0, 0, 0]) * 15 + 1
    cw = (out[:, 0, -1, 1] - out[:, 0, 0, 1]) * 15 + 1
    aspect, area = cw / ch, ch * cw / 256
    assert aspect.min() >= 3 / 4 - 1e-4 and aspect.max() <= 4 / 3 + 1e-4
    assert aspect.min() < 0.9 and aspect.max() > 1.1
    assert area.min() >= 0.35 - 1e-4 and area.max() <= 1 + 1e-4 and area.min() < 0.5
    grey = tf.fill([4, 16, 16, 3], 0.3)
    out = augment_batch(grey, image_seeds(0, 0, tf.range(4)), mode="resized_crop_flip").numpy()
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_resized_crop_resamples_as_crop_and_resize():
    from advpipe.defenses.augment import _resized_crop

    x = _images(3, 12, seed=4)
    u = np.array([[0.5, 0.3, 0.2, 0.7], [0.0, 1.0, 1.0, 0.0], [0.9, 0.5, 0.4, 0.4]], np.float32)
    scale = 0.35 + 0.65 * u[:, 0]
    aspect = np.exp(np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * u[:, 1])
    ch = np.clip(np.sqrt(scale / aspect) * 12, 2, 12)
    cw = np.clip(np.sqrt(scale * aspect) * 12, 2, 12)
    top, left = u[:, 2] * (12 - ch), u[:, 3] * (12 - cw)
    boxes = np.stack([top, left, top + ch - 1, left + cw - 1], 1) / 11
    expected = tf.image.crop_and_resize(x, boxes.astype(np.float32), [0, 1, 2], [12, 12])
    got = _resized_crop(x, tf.constant(u), 0.35)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-6)
    assert np.abs(got.numpy() - x.numpy()).max() > 0.1


# ------------------------------------------------------------------ overfitting guard
class _Model:
    """Stands in for a Keras model: get_weights / set_weights on one array."""

    def __init__(self):
        self.w = [np.zeros(3, np.float32)]

    def get_weights(self):
        return [a.copy() for a in self.w]

    def set_weights(self, weights):
        self.w = [a.copy() for a in weights]


def test_guard_restores_the_previous_check_after_a_collapse():
    values = iter([0.6, 0.6, 0.1])
    logs = []
    guard = OverfittingGuard(check=lambda: next(values), drop=0.2, log=logs.append)
    model = _Model()
    model.w[0][:] = 1
    assert guard(model, 10) is False
    model.w[0][:] = 2
    assert guard(model, 20) is False
    model.w[0][:] = 3  # sabotaged: robust accuracy collapses
    assert guard(model, 30) is True
    np.testing.assert_array_equal(model.w[0], [2, 2, 2])
    assert guard.event == {
        "step": 30,
        "before": 0.6,
        "after": 0.1,
        "best": 0.6,
        "restored_step": 20,
    }
    assert [c["step"] for c in guard.checks] == [10, 20, 30]
    assert len(logs) == 1 and "catastrophic overfitting at step 30" in logs[0]


def test_guard_compares_with_the_best_and_ignores_smaller_drops():
    values = iter([0.3, 0.5, 0.35, 0.31, 0.29])
    guard = OverfittingGuard(check=lambda: next(values), drop=0.2, log=lambda m: None)
    model = _Model()
    fired = []
    for step in range(1, 6):
        model.w[0][:] = step
        fired.append(guard(model, step))
    assert fired == [False, False, False, False, True]  # 0.29 < 0.5 - 0.2
    np.testing.assert_array_equal(model.w[0], [4, 4, 4])
    assert guard.event["before"] == 0.31 and guard.event["best"] == 0.5


def test_guard_steps():
    assert guard_steps(4, 2) == {2, 4}
    assert guard_steps(10, 4) == {3, 5, 8, 10}
    assert guard_steps(2, 4) == {1, 2}
    assert guard_steps(1, 4) == {1}


def test_the_loop_stops_on_a_collapse_with_the_previous_weights():
    x, y = _data(16)
    model = _model()
    at_check, at_eval = [], []

    def check():  # 0.6, 0.6, then a collapse at the third check
        at_check.append(_weights(model))
        return [0.6, 0.6, 0.1, 0.6][len(at_check) - 1]

    def evaluate():
        at_eval.append(_weights(model))
        return {"val_acc": 0.5}

    saved, logs = [], []
    cfg = TrainConfig(
        optimizer="sgd",
        learning_rate=0.5,
        epochs=5,
        batch_size=4,
        guard=check,
        guard_checks_per_epoch=2,
    )
    history = _trainer(model, cfg, evaluate=evaluate, save=saved.append, log=logs.append).fit(x, y)
    # 4 steps per epoch, checks after steps 2, 4, 6: the third (step 6) collapses
    assert history.steps == 6 and len(history.rows) == 2
    assert history.overfitting == {
        "step": 6,
        "before": 0.6,
        "after": 0.1,
        "best": 0.6,
        "restored_step": 4,
    }
    assert [c["step"] for c in history.guard_checks] == [2, 4, 6]
    assert _max_diff(at_check[1], at_check[2]) > 1e-4  # steps 5-6 moved the weights
    for a, b in zip(_weights(model), at_check[1]):  # back to step 4's
        np.testing.assert_array_equal(a, b)
    for a, b in zip(at_eval[1], at_check[1]):  # epoch 2 is evaluated on them
        np.testing.assert_array_equal(a, b)
    assert any("[clean] catastrophic overfitting at step 6" in m for m in logs)
    assert any("[clean] stopped: catastrophic overfitting at step 6" in m for m in logs)
    assert saved == [1, 2] and not history.stopped_early


def test_a_guard_that_never_fires_changes_nothing():
    x, y = _data(16)
    runs = {}
    for label, guard in [("plain", None), ("guarded", lambda: 0.5)]:
        model = _model()
        cfg = TrainConfig(optimizer="sgd", learning_rate=0.5, epochs=2, batch_size=4)
        cfg.guard = guard
        history = _trainer(model, cfg).fit(x, y)
        runs[label] = (history, _weights(model))
    plain, guarded = runs["plain"][0], runs["guarded"][0]
    assert [r["train_loss"] for r in plain.rows] == [r["train_loss"] for r in guarded.rows]
    for a, b in zip(runs["plain"][1], runs["guarded"][1]):
        np.testing.assert_array_equal(a, b)
    assert guarded.overfitting is None and guarded.steps == plain.steps == 8
    assert [c["step"] for c in guarded.guard_checks] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_epoch_seconds_keep_training_guard_and_validation_apart(monkeypatch):
    """A clock that only the guard (100 per check) and the validation (1000) move: the
    epoch's training seconds are 0, the guard's and the validation's are theirs."""
    import types

    import advpipe.defenses.loop as loop

    now = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def check():
        now[0] += 100.0
        return 0.5

    def evaluate():
        now[0] += 1000.0
        return {"val_acc": 0.5}

    x, y = _data(16)
    cfg = TrainConfig(
        optimizer="sgd",
        learning_rate=0.1,
        epochs=2,
        batch_size=4,
        guard=check,
        guard_checks_per_epoch=2,
    )
    logs = []
    history = _trainer(_model(), cfg, evaluate=evaluate, log=logs.append).fit(x, y)
    for row in history.rows:
        assert (row["seconds"], row["guard_seconds"], row["val_seconds"]) == (0, 200, 1000)
    assert history.seconds == 0
    assert any("0.0 s training + 200.0 s guard + 1000.0 s validation" in m for m in logs)
