"""A few steps of Kurakin adversarial training, run by ``tests/test_multi_worker.py``.

Usage: ``python tests/multi_worker_train.py {worker,reference} OUT``

* ``worker``: one worker of a ``MultiWorkerMirroredStrategy`` cluster (``TF_CONFIG`` set
  by the test), built by ``advpipe.runtime.make_strategy("multi_worker", training=True)``;
  it saves through ``runtime.output_dir(OUT, strategy)`` as the training stage does.
* ``reference``: the same steps in one process, ``MirroredStrategy`` over two logical
  CPU devices; it writes the initial and final weights to ``OUT/reference.npz``.

Both print one ``RESULT {json}`` line on stdout (the folder saved to, the chief flag, the
replica count and the per-step statistics).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

STEPS, BATCH, CLASSES, SIZE, TRAINABLE_BLOCKS = 3, 8, 3, 32, 1


def data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (STEPS * BATCH, SIZE, SIZE, 3)).astype(np.uint8)
    y = rng.integers(0, CLASSES, STEPS * BATCH).astype(np.int64)
    return x, y


def weights(model) -> list[np.ndarray]:
    return [np.asarray(w.numpy()) for w in model.trainable_weights]


def main(mode: str, out: Path) -> None:
    import tensorflow as tf

    from advpipe import runtime

    if mode == "worker":
        # first TensorFlow call of the process: collective ops are configured at startup
        strategy = runtime.make_strategy("multi_worker", training=True)
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    from advpipe.attacks import FGSM
    from advpipe.defenses.adversarial import AdversarialTraining
    from advpipe.defenses.loop import TrainConfig, Trainer
    from advpipe.defenses.model import build_defense_model, save_model

    with strategy.scope():
        # the trunk's conv block trainable too: every layer's gradient is all-reduced
        model = build_defense_model(
            "tiny", CLASSES, image_size=SIZE, seed=2, trainable_blocks=TRAINABLE_BLOCKS
        )
        method = AdversarialTraining(FGSM(model), seed=0)
    initial = weights(model)
    cfg = TrainConfig(optimizer="sgd", learning_rate=0.1, batch_size=BATCH, seed=0)
    trainer = Trainer(
        model, method, cfg, strategy=strategy, evaluate=lambda: {}, save=lambda epoch: None
    )
    x, y = data()
    stats = [
        trainer.train_step(x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH], i)
        for i in range(STEPS)
    ]
    final = weights(model)
    if mode == "worker":
        with runtime.output_dir(out, strategy) as folder:
            folder.mkdir(parents=True, exist_ok=True)
            save_model(model, folder / "model.keras")
            np.savez(folder / "weights.npz", *final)
            (folder / "stats.json").write_text(json.dumps(stats))
            used = folder
    else:
        out.mkdir(parents=True, exist_ok=True)
        np.savez(
            out / "reference.npz",
            **{f"initial_{i}": w for i, w in enumerate(initial)},
            **{f"final_{i}": w for i, w in enumerate(final)},
        )
        used = out
    result = {
        "folder": str(used),
        "chief": runtime.is_chief(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "stats": stats,
        "weight_sums": [float(np.sum(w, dtype=np.float64)) for w in final],
    }
    print("RESULT", json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("worker", "reference"):
        sys.exit("usage: python tests/multi_worker_train.py {worker,reference} OUT")
    main(sys.argv[1], Path(sys.argv[2]))
