"""Attacks and evaluation under a multi-replica strategy give the one-device results.

Two logical CPU devices under ``MirroredStrategy`` against TensorFlow's default strategy,
on the tiny model: logits, one one-step attack (FGSM) and a randomised one (R-FGSM) in
the ε sweep, PGD with random starts, DeepFool, APGD and FAB, with batches that do not
divide evenly (9 images in batches of 4: the last batch of 1 leaves a replica empty).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from advpipe.sharding import shard_bounds

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from advpipe.models.zoo import tiny_model
    from advpipe.attacks import FGSM, PGD, RFGSM, sweep, deepfool
    from advpipe.attacks.apgd import APGD
    from advpipe.attacks.fab import FABTargeted
    from advpipe.inference import predict_logits
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (9, 32, 32, 3)).astype(np.uint8)
    reference = tiny_model(image_size=32, num_classes=10, seed=1)
    y = predict_logits(reference, x).argmax(1).astype(np.int64)
    y[::3] = (y[::3] + 1) % 10  # some images misclassified from the start
    quiet = lambda m: None
    out = {}
    for label, strategy in [("one", tf.distribute.get_strategy()),
                            ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
        with strategy.scope():
            model = tiny_model(image_size=32, num_classes=10, seed=1)
            model.set_weights(reference.get_weights())
            r = {"replicas": strategy.num_replicas_in_sync}
            r["logits"] = predict_logits(model, x, batch_size=4).tolist()
            for A in (FGSM, RFGSM, PGD):
                s = sweep(A(model), x, y, [0.01, 0.03], batch_size=4, progress=quiet)
                r[A.__name__] = {k: v for k, v in s.to_metrics().items() if k != "timing"}
            d = deepfool(model, x, y, steps=5, candidates=3, batch_size=4, progress=quiet,
                         keep_adversarial=True)
            r["deepfool"] = {"success": d.success.tolist(), "l2": d.perturbation_l2.tolist(),
                             "adv_top1": d.adv_top1.tolist()}
            unit = x[:5].astype(np.float32) / 255
            a = APGD(model, steps=10, loss="ce").run(unit, y[:5], 0.01)
            r["apgd"] = {"success": a.success.tolist(), "adv": a.adversarial.tolist()}
            f = FABTargeted(model, steps=10, n_target_classes=2).run(unit, y[:5], 0.03)
            r["fab"] = {"success": f.success.tolist()}
        out[label] = r
    print(json.dumps(out))
""")


def test_shard_bounds_cover_the_batch_in_order():
    assert shard_bounds(9, 2) == [(0, 5), (5, 9)]
    assert shard_bounds(1, 2) == [(0, 1), (1, 1)]  # a replica without images
    assert shard_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]


@pytest.mark.slow
def test_two_replicas_give_the_one_device_results():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    one, two = out["one"], out["mirrored"]
    assert one["replicas"] == 1 and two["replicas"] == 2

    # logits within 1e-5 relative; a prediction may differ only at the decision boundary
    a, b = np.array(one["logits"]), np.array(two["logits"])
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    top2 = np.sort(a, axis=1)[:, -2:]
    at_boundary = np.flatnonzero(top2[:, 1] - top2[:, 0] <= 1e-5 * np.abs(top2[:, 1]))
    differ = np.flatnonzero(a.argmax(1) != b.argmax(1))
    assert set(differ) <= set(at_boundary), f"predictions differ on {differ}"

    for attack in ("FGSM", "RFGSM", "PGD"):
        assert two[attack] == one[attack], attack
    assert two["deepfool"]["success"] == one["deepfool"]["success"]
    assert two["deepfool"]["adv_top1"] == one["deepfool"]["adv_top1"]
    np.testing.assert_allclose(two["deepfool"]["l2"], one["deepfool"]["l2"], rtol=1e-5)
    assert two["apgd"]["success"] == one["apgd"]["success"]
    np.testing.assert_allclose(two["apgd"]["adv"], one["apgd"]["adv"], atol=1e-6)
    assert two["fab"]["success"] == one["fab"]["success"]
    # the comparison has something to compare: attacks fooled some images, not all
    assert 0 < sum(one["deepfool"]["success"]) and 0 < sum(one["apgd"]["success"]) < 5
