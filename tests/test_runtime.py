"""The runtime group: strategies, devices, environment overrides, XLA, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from advpipe import runtime

ROOT = Path(__file__).resolve().parents[1]


def test_environment_overrides_params(monkeypatch):
    env = {"ADVPIPE_DISTRIBUTE": "mirrored", "ADVPIPE_DEVICES": "/cpu:0, /gpu:1"}
    assert runtime.from_environment("auto", None, env) == ("mirrored", ["/cpu:0", "/gpu:1"])
    assert runtime.from_environment("one_device", ["/cpu:0"], {}) == ("one_device", ["/cpu:0"])
    with pytest.raises(ValueError, match="ADVPIPE_DISTRIBUTE='mirorred'"):
        runtime.from_environment("auto", None, {"ADVPIPE_DISTRIBUTE": "mirorred"})


def test_auto_and_one_device_are_the_default_strategy_on_this_machine():
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a machine with GPUs")
    default = tf.distribute.get_strategy()
    assert runtime.make_strategy("auto") is default
    assert runtime.make_strategy("one_device") is default
    one = runtime.make_strategy("one_device", ["cpu:0"])
    assert isinstance(one, tf.distribute.OneDeviceStrategy)


@pytest.mark.parametrize(
    "distribute, devices, message",
    [
        ("mirorred", None, "runtime.distribute: must be one of"),
        ("mirrored", ["/gpu:7"], "runtime.devices: /gpu:7 does not exist"),
        ("mirrored", ["/cpu:0", "cpu:0"], "runtime.devices: a device is listed twice"),
        ("one_device", ["not a device"], "runtime.devices: 'not a device' is not a device"),
    ],
)
def test_bad_runtime_values_name_the_key(distribute, devices, message):
    with pytest.raises(ValueError, match=message):
        runtime.make_strategy(distribute, devices)


@pytest.mark.parametrize("training", [True, False])
def test_multi_worker_needs_tf_config(monkeypatch, training):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="runtime.distribute: multi_worker needs TF_CONFIG"):
        runtime.make_strategy("multi_worker", training=training)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}, "task": {"type": "worker"}}')
    with pytest.raises(ValueError, match="runtime.distribute: TF_CONFIG is not a cluster"):
        runtime.make_strategy("multi_worker", training=training)


def test_a_single_process_is_the_chief_and_saves_in_place(tmp_path):
    assert runtime.is_chief()
    with runtime.output_dir(tmp_path / "out") as folder:
        assert folder == tmp_path / "out"


def test_jit_compile_sets_xla_on_the_library_functions():
    assert not runtime.jit_compile()
    plain = runtime.compiled(lambda x: x + 1)
    try:
        runtime.set_jit_compile(True)
        xla = runtime.compiled(lambda x: x + 1)
    finally:
        runtime.set_jit_compile(False)
    assert xla._jit_compile is True and not plain._jit_compile


@pytest.mark.slow
def test_jit_compile_leaves_the_metrics_equal(tiny, batch):
    """XLA (on CPU) against TensorFlow's graphs: the same accuracies under FGSM, PGD and
    DeepFool on the tiny model. The iterates themselves are not equal: XLA reorders float
    operations, the sign of near-zero gradient components flips and PGD takes another
    path (measured here: about half the pixels of PGD-5's images differ), which is why
    ``runtime.jit_compile`` is a dependency of every stage that computes."""
    from advpipe.attacks import FGSM, PGD, deepfool, sweep

    x, y = batch
    results = {}
    for on in (False, True):
        runtime.set_jit_compile(on)
        try:
            quiet = lambda m: None  # noqa: E731
            r = {
                a.name: sweep(a, x, y, [0.01, 0.03], 4, quiet).to_metrics()
                for a in (FGSM(tiny), PGD(tiny, steps=5))
            }
            d = deepfool(tiny, x, y, steps=5, candidates=3, batch_size=4, progress=quiet)
            r["deepfool_success"] = d.success.tolist()
            r["deepfool_l2"] = d.perturbation_l2
            r["pgd_adv"] = PGD(tiny, steps=5)(x, y, 0.03, index=np.arange(len(x)))
        finally:
            runtime.set_jit_compile(False)
        results[on] = r
    off, xla = results[False], results[True]
    for name in ("fgsm", "pgd"):
        assert {k: v for k, v in xla[name].items() if k != "timing"} == {
            k: v for k, v in off[name].items() if k != "timing"
        }
    assert xla["deepfool_success"] == off["deepfool_success"]
    np.testing.assert_allclose(xla["deepfool_l2"], off["deepfool_l2"], rtol=1e-4)
    differ = np.mean(np.abs(xla["pgd_adv"] - off["pgd_adv"]) > 1e-5)
    assert differ > 0, "XLA gave bit-equal PGD iterates: the docs' statement is out of date"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ADVPIPE_DISTRIBUTE": "bogus"}, "error: ADVPIPE_DISTRIBUTE='bogus': must be one of"),
        ({"ADVPIPE_DEVICES": "/gpu:9"}, "error: runtime.devices: /gpu:9 does not exist"),
        (
            {"ADVPIPE_DISTRIBUTE": "multi_worker", "TF_CONFIG": ""},
            "error: runtime.distribute: multi_worker needs TF_CONFIG",
        ),
    ],
)
def test_a_stage_with_a_bad_runtime_stops_with_one_line(env, message):
    code = "import sys; sys.path.insert(0, 'stages'); import common; common.run(lambda: None)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(message), proc.stderr
    assert not any("Traceback" in line for line in lines)


def test_multi_worker_training_takes_no_device_list(monkeypatch):
    cluster = {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    with pytest.raises(ValueError, match="runtime.devices: multi_worker training"):
        runtime.make_strategy("multi_worker", ["/cpu:0"], training=True)


def test_training_policy_is_float32_unless_asked():
    assert runtime.training_policy(False) == "float32"
    if tf.config.list_physical_devices("GPU"):
        assert runtime.training_policy(True) == "mixed_float16"
    elif runtime._cpu_has_bf16():
        assert runtime.training_policy(True) == "mixed_bfloat16"
    else:
        with pytest.raises(ValueError, match="runtime.mixed_precision"):
            runtime.training_policy(True)


def test_mixed_precision_trains_in_bfloat16_saves_float32_and_evaluation_refuses_it(tmp_path):
    """A training step under mixed_bfloat16 moves the weights; the saved model computes in
    float32 with the same weights; the evaluation refuses a reduced-precision policy or
    model."""
    import keras

    from advpipe.defenses.evaluate import evaluate_defense
    from advpipe.defenses.loop import CleanLoss, TrainConfig, Trainer
    from advpipe.defenses.model import build_defense_model, load_model, save_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    y = rng.integers(0, 3, 8).astype(np.int64)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_defense_model("tiny", 3, image_size=32, seed=2)
        assert {layer.compute_dtype for layer in model._flatten_layers()} == {"bfloat16"}
        before = [w.numpy().copy() for w in model.trainable_weights]
        cfg = TrainConfig(learning_rate=0.1, optimizer="sgd")
        trainer = Trainer(model, CleanLoss(), cfg, evaluate=lambda: {}, save=lambda e: None)
        stats = trainer.train_step(x, y, 0)
        assert np.isfinite(stats["loss_sum"])
        assert any(np.abs(a - w.numpy()).max() > 0 for a, w in zip(before, model.trainable_weights))
        with pytest.raises(ValueError, match="runtime.mixed_precision: the defense evaluation"):
            evaluate_defense(
                model,
                x,
                y,
                whitebox={},
                transfer=None,
                epsilons=[0.01],
                deepfool_options={},
                chance=1 / 3,
                margin=0.1,
            )
        save_model(model, tmp_path / "m.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loaded = load_model(tmp_path / "m.keras")
    assert {layer.compute_dtype for layer in loaded._flatten_layers()} == {"float32"}
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    runtime.require_float32(loaded)  # no error
    with pytest.raises(ValueError, match="layers .* compute in reduced precision"):
        runtime.require_float32(model)
