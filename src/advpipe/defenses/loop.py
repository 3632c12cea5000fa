"""The training loop every defense method shares.

A method (clean, Kurakin adversarial training, Deep Defense) supplies only its loss
for one replica's batch: ``method.loss(model, x, y, step) -> (loss, stats)``. The
loop does the rest, as a Keras user expects:

* one compiled training step (``tf.function``) run under a ``tf.distribute``
  strategy (the default one, or ``MirroredStrategy`` across devices); losses are
  per replica, divided by the number of replicas, and the optimizer sums gradients
  across replicas;
* seeded shuffling, so a run is reproducible;
* one progress line per epoch (loss, clean accuracy, adversarial accuracy, val
  accuracy, seconds) and, for slow methods, the measured seconds per step and the
  projected epoch time after the first steps;
* the best epoch by the monitored validation figure kept (clean val accuracy, or for
  adversarial training val accuracy under the training attack; a tie goes to the later
  epoch): written atomically at every improvement, so an interrupted run leaves the
  last best model, never a corrupt file; early stopping after ``patience`` epochs
  without strict improvement; a cap on the steps;
* the learning curves as rows (one per epoch) for a DVC plot.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from ..data.images import to_unit_float
from ..runtime import compiled


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite (a hyperparameter problem: reported in one line)."""


STAT_KEYS = ("loss_sum", "n", "clean_correct", "clean_n", "adv_correct", "adv_n")


@dataclass
class TrainConfig:
    optimizer: str = "adam"  # adam | sgd
    learning_rate: float = 1e-3
    momentum: float = 0.9  # sgd only
    epochs: int = 10
    batch_size: int = 32
    patience: int = 0  # 0: no early stopping
    max_steps: int | None = None  # cap on training steps (expensive methods)
    lr_decay_at: float | None = None  # halve the learning rate after this fraction of epochs
    monitor: str = "val_acc"  # what picks the best epoch: a key evaluate() returns
    seed: int = 0


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(cfg.learning_rate)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(cfg.learning_rate, momentum=cfg.momentum)
    raise ValueError(f"optimizer must be adam or sgd, got {cfg.optimizer!r}")


def cross_entropy(labels, logits):
    """Per-example softmax cross-entropy, in float32 whatever the model computes in."""
    logits = tf.cast(logits, tf.float32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def correct(labels, logits):
    return tf.reduce_sum(
        tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int64), labels), tf.float32)
    )


class CleanLoss:
    """Plain training: the mean cross-entropy of the batch."""

    name = "clean"

    def loss(self, model, x, y, step):
        logits = model(x, training=True)
        n = tf.cast(tf.shape(y)[0], tf.float32)
        per_example = cross_entropy(y, logits)
        stats = {
            "loss_sum": tf.reduce_sum(per_example),
            "n": n,
            "clean_correct": correct(y, logits),
            "clean_n": n,
            "adv_correct": tf.constant(0.0),
            "adv_n": tf.constant(0.0),
        }
        return tf.reduce_sum(per_example) / n, stats


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = -1.0
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    seconds_per_step: float = float("nan")


def check_batch_norm(model, replicas: int) -> None:
    """Several replicas need batch norm frozen: each would otherwise normalise with its own
    share's statistics and update its own moving averages (the defense models keep every
    BatchNormalization layer frozen, in inference mode, whatever ``trainable_blocks``)."""
    if replicas < 2:
        return
    live = [
        layer.name
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if live:
        raise ValueError(
            f"runtime.distribute: training over {replicas} replicas needs batch norm frozen; "
            f"trainable BatchNormalization layers: {live[:3]}{' ...' if len(live) > 3 else ''}"
        )


class Trainer:
    """Trains ``model`` with ``method``'s loss; see the module docstring.

    ``model`` (and anything with variables) must have been built under
    ``strategy.scope()``. ``to_input`` maps a stored batch (uint8 images, or cached
    features) to what ``model`` takes. ``evaluate() -> {"val_acc": ..., ...}`` is called
    after every epoch (``cfg.monitor`` names the figure that picks the best epoch);
    ``save(epoch)`` writes the best model so far.
    """

    def __init__(
        self,
        model,
        method,
        cfg: TrainConfig,
        *,
        strategy=None,
        evaluate: Callable[[], dict],
        save: Callable[[int], None],
        to_input: Callable = to_unit_float,
        log: Callable[[str], None] | None = None,
    ):
        self.model = model
        self.method = method
        self.cfg = cfg
        self.strategy = strategy or tf.distribute.get_strategy()
        self.evaluate = evaluate
        self.save = save
        self.to_input = to_input
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        check_batch_norm(model, self.strategy.num_replicas_in_sync)
        with self.strategy.scope():
            self.optimizer = make_optimizer(cfg)
            # slots created here, in cross-replica context, not inside the first compiled step
            self.optimizer.build(model.trainable_variables)
        self._step_fn = self._build_step()

    def _build_step(self):
        model, method, optimizer, strategy = self.model, self.method, self.optimizer, self.strategy
        replicas = strategy.num_replicas_in_sync

        def replica_step(x, y, step):
            with tf.GradientTape() as tape:
                loss, stats = method.loss(model, x, y, step)
                scaled = loss / replicas
            variables = model.trainable_variables
            grads = tape.gradient(scaled, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return stats

        @compiled
        def train_step(x, y, step):
            stats = strategy.run(replica_step, args=(x, y, step))
            return {
                k: strategy.reduce(tf.distribute.ReduceOp.SUM, stats[k], axis=None)
                for k in STAT_KEYS
            }

        return train_step

    def train_step(self, x, y, step: int) -> dict:
        """One optimisation step on one global batch (NumPy in, summed statistics out)."""
        x = self.to_input(x)
        y = np.asarray(y, np.int64)
        replicas = self.strategy.num_replicas_in_sync
        if len(x) % replicas:
            raise ValueError(f"batch of {len(x)} does not split over {replicas} replicas")
        share = len(x) // replicas

        def part(array):  # each replica takes its contiguous share of the global batch
            return lambda ctx: tf.constant(
                array[
                    ctx.replica_id_in_sync_group * share : (ctx.replica_id_in_sync_group + 1)
                    * share
                ]
            )

        xs = self.strategy.experimental_distribute_values_from_function(part(x))
        ys = self.strategy.experimental_distribute_values_from_function(part(y))
        out = self._step_fn(xs, ys, tf.constant(step, tf.int64))
        return {k: float(v) for k, v in out.items()}

    def fit(self, inputs: np.ndarray, labels: np.ndarray) -> History:
        cfg = self.cfg
        n = len(inputs)
        batch = min(cfg.batch_size, n)
        batch -= batch % self.strategy.num_replicas_in_sync  # an equal share per replica
        per_epoch = n // batch  # full batches only: every step sees m examples (eq. 9)
        rng = np.random.default_rng(cfg.seed)
        history = History()
        decay_epoch = (
            math.ceil(cfg.lr_decay_at * cfg.epochs) if cfg.lr_decay_at is not None else None
        )
        since_best = 0
        labels = np.asarray(labels, np.int64)
        for epoch in range(1, cfg.epochs + 1):
            if decay_epoch is not None and epoch == decay_epoch + 1:
                self.optimizer.learning_rate.assign(cfg.learning_rate / 2)
                self.log(f"[{self.method.name}] learning rate halved to {cfg.learning_rate / 2:g}")
            order = rng.permutation(n)
            totals = dict.fromkeys(STAT_KEYS, 0.0)
            start = time.perf_counter()
            for i in range(per_epoch):
                if cfg.max_steps is not None and history.steps >= cfg.max_steps:
                    break
                idx = np.sort(order[i * batch : (i + 1) * batch])
                t0 = time.perf_counter()
                stats = self.train_step(inputs[idx], labels[idx], history.steps)
                history.steps += 1
                if not math.isfinite(stats["loss_sum"]):
                    raise TrainingDiverged(
                        f"{self.method.name}: the loss is {stats['loss_sum']} at step "
                        f"{history.steps} (epoch {epoch}): training diverged; lower the "
                        "learning rate (or the regulariser weight) in params.yaml"
                    )
                for k in STAT_KEYS:
                    totals[k] += stats[k]
                if history.steps == 2:  # the first step includes tracing
                    history.seconds_per_step = time.perf_counter() - t0
                    self.log(
                        f"[{self.method.name}] {history.seconds_per_step:.2f} s per step "
                        f"(batch {batch}); projected {per_epoch * history.seconds_per_step:.0f}"
                        f" s per epoch of {per_epoch} steps"
                    )
            seconds = time.perf_counter() - start
            history.seconds += seconds
            if totals["n"] == 0:
                self.log(f"[{self.method.name}] step cap {cfg.max_steps} reached")
                break
            scores = {k: float(v) for k, v in self.evaluate().items()}
            if cfg.monitor not in scores:
                raise ValueError(f"monitor '{cfg.monitor}' is not among {sorted(scores)}")
            val = scores[cfg.monitor]
            row = {
                "epoch": epoch,
                "train_loss": totals["loss_sum"] / totals["n"],
                "clean_acc": _ratio(totals["clean_correct"], totals["clean_n"]),
                "adv_acc": _ratio(totals["adv_correct"], totals["adv_n"]),
                **scores,
                "seconds": round(seconds, 2),
                "steps": history.steps,
            }
            history.rows.append(row)
            since_best = 0 if val > history.best_val else since_best + 1
            improved = val >= history.best_val
            if improved:
                history.best_val, history.best_epoch = val, epoch
                self.save(epoch)
            adv = "" if math.isnan(row["adv_acc"]) else f", adv acc {row['adv_acc']:.3f}"
            shown = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in scores.items())
            self.log(
                f"[{self.method.name}] epoch {epoch}/{cfg.epochs}: loss {row['train_loss']:.4f}, "
                f"clean acc {row['clean_acc']:.3f}{adv}, {shown}"
                f"{' (best ' + cfg.monitor + ')' if improved else ''}, {seconds:.1f} s"
            )
            if cfg.patience and since_best >= cfg.patience:
                history.stopped_early = True
                self.log(
                    f"[{self.method.name}] early stop: no val improvement in {cfg.patience} epochs"
                )
                break
            if cfg.max_steps is not None and history.steps >= cfg.max_steps:
                self.log(f"[{self.method.name}] step cap {cfg.max_steps} reached")
                break
        return history


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")
