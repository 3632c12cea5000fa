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
  accuracy, and the seconds of training steps, guard checks and validation apart) and,
  for slow methods, the measured seconds per step and the projected epoch time after
  the first steps;
* the best epoch by the monitored validation figure kept (clean val accuracy, or for
  adversarial training val accuracy under the training attack; a tie goes to the later
  epoch): written atomically at every improvement, so an interrupted run leaves the
  last best model, never a corrupt file; early stopping after ``patience`` epochs
  without strict improvement; a cap on the steps;
* the learning curves as rows (one per epoch) for a DVC plot.

Options for whole-network training on a small budget, each off by default (the default
step function, random draws and curves are those of the plain loop):

* ``accumulation_steps``: ``batch_size`` is the effective batch of one optimizer step;
  each replica's share is cut into ``accumulation_steps`` equal micro-batches (memory
  goes with the micro-batch, ``batch_size / (replicas · accumulation_steps)`` examples),
  whose gradients are summed, each loss weighted by ``1 / accumulation_steps`` (a
  method's loss is the mean over its batch, so the sum is the mean over the effective
  batch), in one compiled step (a ``tf.while_loop`` that runs one micro-batch at a
  time), then applied once. The method sees the optimizer step index as ``step`` for
  every micro-batch; a method that seeds noise from ``step`` should fold in
  :func:`micro_batch_index` too, or its micro-batches of one step draw the same noise;
* ``lr_schedule`` (:mod:`advpipe.defenses.lr_schedules`): the learning rate assigned
  before every optimizer step; each epoch's row then holds ``lr`` (the last step's);
* ``augment`` (:mod:`advpipe.defenses.augment`): random crops and flips applied inside
  the compiled step before the method's loss, seeded per image by (seed, step, index in
  the global batch);
* ``guard`` (:mod:`advpipe.defenses.overfitting_guard`): a robust-accuracy check called
  ``guard_checks_per_epoch`` times per epoch; on a catastrophic-overfitting collapse the
  weights of the previous check are restored, the epoch is closed and training stops
  (``History.overfitting``).

Batch norm needs no option: the defense models keep every BatchNormalization layer
frozen, in inference mode (:mod:`advpipe.defenses.model`).
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from ..data.images import to_unit_float
from ..runtime import compiled
from .augment import augment_batch, check_options, image_seeds
from .lr_schedules import SCHEDULES, learning_rate_at
from .overfitting_guard import OverfittingGuard


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite (a hyperparameter problem: reported in one line)."""


#: A progress line (step, running loss, s/step, time to the end of the epoch) at most this
#: often during an epoch; the epoch summary line follows each epoch.
PROGRESS_SECONDS = 60.0

STAT_KEYS = ("loss_sum", "n", "clean_correct", "clean_n", "adv_correct", "adv_n")

_MICRO = threading.local()  # per thread: MirroredStrategy traces each replica in its own


def micro_batch_index():
    """Inside a method's ``loss`` under gradient accumulation: the index of the micro-batch
    (an int32 scalar tensor, 0 to ``accumulation_steps - 1``); else the constant 0.

    For per-step noise seeds: ``step`` is the optimizer step, the same for every
    micro-batch of it; fold this in (0 without accumulation, so seeds stay as they were)."""
    index = getattr(_MICRO, "index", None)
    return tf.constant(0, tf.int32) if index is None else index


@contextlib.contextmanager
def _micro_batch(index):
    previous = getattr(_MICRO, "index", None)
    _MICRO.index = index
    try:
        yield
    finally:
        _MICRO.index = previous


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
    # gradient accumulation: batch_size is the effective batch of one optimizer step, run as
    # this many equal micro-batches per replica (memory: batch_size / (replicas * this))
    accumulation_steps: int = 1
    lr_schedule: str = "constant"  # constant | cosine | cyclic | step (lr_schedules.py)
    lr_peak_at: float = 0.4  # cyclic: the fraction of the steps where it peaks
    augment: str = "none"  # none | crop_flip | resized_crop_flip (augment.py)
    augment_pad: int = 4  # crop_flip: pixels of padding on each side
    augment_padding: str = "reflect"  # crop_flip: reflect | zero
    crop_scale_min: float = 0.35  # resized_crop_flip: smallest area fraction of the window
    # catastrophic-overfitting guard: a callable returning robust accuracy on a fixed batch
    guard: Callable[[], float] | None = None
    guard_checks_per_epoch: int = 4
    guard_drop: float = 0.2  # stop when robust accuracy falls this much below its best


def check_config(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` for an option out of range or two options that conflict."""
    if int(cfg.accumulation_steps) != cfg.accumulation_steps or cfg.accumulation_steps < 1:
        raise ValueError(
            f"accumulation_steps must be an integer >= 1, got {cfg.accumulation_steps}"
        )
    if cfg.lr_schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(SCHEDULES)}, got {cfg.lr_schedule!r}")
    if cfg.lr_schedule != "constant" and cfg.lr_decay_at is not None:
        raise ValueError(
            f"lr_decay_at halves a constant learning rate; lr_schedule '{cfg.lr_schedule}' "
            "sets its own: leave lr_decay_at unset (null)"
        )
    if not 0.0 <= cfg.lr_peak_at <= 1.0:
        raise ValueError(f"lr_peak_at must be in [0, 1], got {cfg.lr_peak_at}")
    check_options(
        mode=cfg.augment,
        pad=cfg.augment_pad,
        padding=cfg.augment_padding,
        crop_scale_min=cfg.crop_scale_min,
    )
    if cfg.guard is not None and cfg.guard_checks_per_epoch < 1:
        raise ValueError(
            f"guard_checks_per_epoch must be at least 1, got {cfg.guard_checks_per_epoch}"
        )


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
    # the overfitting guard's checks ({"step", "robust_acc"}) and, after a collapse, what
    # OverfittingGuard.event says ({"step", "before", "after", "best", "restored_step"})
    guard_checks: list[dict] = field(default_factory=list)
    overfitting: dict | None = None


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
        check_config(cfg)
        check_batch_norm(model, self.strategy.num_replicas_in_sync)
        with self.strategy.scope():
            self.optimizer = make_optimizer(cfg)
            # slots created here, in cross-replica context, not inside the first compiled step
            self.optimizer.build(model.trainable_variables)
        self._step_fn = self._build_step()

    def _build_step(self):
        model, method, optimizer, strategy = self.model, self.method, self.optimizer, self.strategy
        replicas = strategy.num_replicas_in_sync
        cfg = self.cfg

        def plain_step(x, y, step):
            with tf.GradientTape() as tape:
                loss, stats = method.loss(model, x, y, step)
                scaled = loss / replicas
            variables = model.trainable_variables
            grads = tape.gradient(scaled, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return stats

        def augmented(x, step):
            share = tf.shape(x)[0]
            context = tf.distribute.get_replica_context()
            replica = context.replica_id_in_sync_group if context else 0
            index = tf.cast(replica, tf.int32) * share + tf.range(share)  # in the global batch
            return augment_batch(
                x,
                image_seeds(cfg.seed, step, index),
                mode=cfg.augment,
                pad=cfg.augment_pad,
                padding=cfg.augment_padding,
                crop_scale_min=cfg.crop_scale_min,
            )

        def accumulated_step(x, y, step):
            parts = cfg.accumulation_steps
            variables = model.trainable_variables
            xs, ys = _split(x, parts), _split(y, parts)

            def body(j, sums, totals):
                with tf.GradientTape() as tape, _micro_batch(j):
                    loss, stats = method.loss(model, xs[j], ys[j], step)
                    scaled = loss / (parts * replicas)
                grads = tape.gradient(scaled, variables)
                sums = [a if g is None else a + g for a, g in zip(sums, grads)]
                totals = {k: totals[k] + tf.cast(stats[k], tf.float32) for k in STAT_KEYS}
                return j + 1, sums, totals

            _, sums, totals = tf.while_loop(
                lambda j, *_: j < parts,
                body,
                (
                    tf.constant(0),
                    [tf.zeros(v.shape, v.dtype) for v in variables],
                    {k: tf.constant(0.0) for k in STAT_KEYS},
                ),
                parallel_iterations=1,  # one micro-batch in memory at a time
            )
            optimizer.apply_gradients(zip(sums, variables))
            return totals

        def replica_step(x, y, step):
            if cfg.augment != "none":
                x = augmented(x, step)
            if cfg.accumulation_steps > 1:
                return accumulated_step(x, y, step)
            return plain_step(x, y, step)

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
        if share % self.cfg.accumulation_steps:
            raise ValueError(
                f"a replica's batch of {share} does not split into "
                f"{self.cfg.accumulation_steps} equal micro-batches (accumulation_steps)"
            )

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
        name = self.method.name
        n = len(inputs)
        batch = min(cfg.batch_size, n)
        # an equal share per replica, cut into equal micro-batches
        unit = self.strategy.num_replicas_in_sync * cfg.accumulation_steps
        batch -= batch % unit
        if batch == 0:
            raise ValueError(
                f"batch_size {cfg.batch_size} ({n} examples) is smaller than replicas x "
                f"accumulation_steps = {unit}"
            )
        per_epoch = n // batch  # full batches only: every step sees m examples (eq. 9)
        total_steps = cfg.epochs * per_epoch
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        scheduled = cfg.lr_schedule != "constant"
        guard = None
        if cfg.guard is not None:
            guard = OverfittingGuard(
                check=cfg.guard, drop=cfg.guard_drop, log=lambda m: self.log(f"[{name}] {m}")
            )
            checks = guard_steps(per_epoch, cfg.guard_checks_per_epoch)
        rng = np.random.default_rng(cfg.seed)
        history = History()
        decay_epoch = (
            math.ceil(cfg.lr_decay_at * cfg.epochs) if cfg.lr_decay_at is not None else None
        )
        since_best = 0
        lr = cfg.learning_rate
        labels = np.asarray(labels, np.int64)
        for epoch in range(1, cfg.epochs + 1):
            if decay_epoch is not None and epoch == decay_epoch + 1:
                self.optimizer.learning_rate.assign(cfg.learning_rate / 2)
                self.log(f"[{name}] learning rate halved to {cfg.learning_rate / 2:g}")
            order = rng.permutation(n)
            totals = dict.fromkeys(STAT_KEYS, 0.0)
            collapsed = False
            guard_seconds = 0.0
            start = shown = time.perf_counter()
            for i in range(per_epoch):
                if cfg.max_steps is not None and history.steps >= cfg.max_steps:
                    break
                idx = np.sort(order[i * batch : (i + 1) * batch])
                if scheduled:
                    lr = learning_rate_at(
                        history.steps,
                        total_steps,
                        schedule=cfg.lr_schedule,
                        peak=cfg.learning_rate,
                        peak_at=cfg.lr_peak_at,
                    )
                    self.optimizer.learning_rate.assign(lr)
                t0 = time.perf_counter()
                stats = self.train_step(inputs[idx], labels[idx], history.steps)
                history.steps += 1
                if not math.isfinite(stats["loss_sum"]):
                    raise TrainingDiverged(
                        f"{name}: the loss is {stats['loss_sum']} at step "
                        f"{history.steps} (epoch {epoch}): training diverged; lower the "
                        "learning rate (or the regulariser weight) in params.yaml"
                    )
                for k in STAT_KEYS:
                    totals[k] += stats[k]
                if history.steps == 2:  # the first step includes tracing
                    history.seconds_per_step = time.perf_counter() - t0
                    micro = (
                        f" in {cfg.accumulation_steps} micro-batches"
                        if cfg.accumulation_steps > 1
                        else ""
                    )
                    self.log(
                        f"[{name}] {history.seconds_per_step:.2f} s per step "
                        f"(batch {batch}{micro}); projected "
                        f"{per_epoch * history.seconds_per_step:.0f}"
                        f" s per epoch of {per_epoch} steps"
                    )
                if time.perf_counter() - shown >= PROGRESS_SECONDS and i + 1 < per_epoch:
                    shown = time.perf_counter()
                    done = i + 1
                    eta = (time.perf_counter() - start) / done * (per_epoch - done)
                    self.log(
                        f"[{name}] epoch {epoch}/{cfg.epochs}: step {done}/{per_epoch}, loss "
                        f"{totals['loss_sum'] / max(totals['n'], 1):.4f}"
                        + (
                            f", adv acc {totals['adv_correct'] / totals['adv_n']:.3f}"
                            if totals["adv_n"]
                            else ""
                        )
                        + f", {time.perf_counter() - t0:.1f} s/step, epoch ends in {eta:.0f} s"
                    )
                if guard is not None and i + 1 in checks:
                    t_guard = time.perf_counter()
                    collapsed = guard(self.model, history.steps)
                    guard_seconds += time.perf_counter() - t_guard
                    history.guard_checks = guard.checks
                    if collapsed:
                        history.overfitting = guard.event
                        break
            seconds = time.perf_counter() - start - guard_seconds  # the training steps
            history.seconds += seconds
            if totals["n"] == 0:
                self.log(f"[{name}] step cap {cfg.max_steps} reached")
                break
            t_val = time.perf_counter()
            scores = {k: float(v) for k, v in self.evaluate().items()}
            val_seconds = time.perf_counter() - t_val
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
                "guard_seconds": round(guard_seconds, 2),
                "val_seconds": round(val_seconds, 2),
                "steps": history.steps,
            }
            if scheduled:
                row["lr"] = lr
            history.rows.append(row)
            since_best = 0 if val > history.best_val else since_best + 1
            improved = val >= history.best_val
            if improved:
                history.best_val, history.best_epoch = val, epoch
                self.save(epoch)
            adv = "" if math.isnan(row["adv_acc"]) else f", adv acc {row['adv_acc']:.3f}"
            shown = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in scores.items())
            shown_lr = f", lr {lr:.3g}" if scheduled else ""
            self.log(
                f"[{name}] epoch {epoch}/{cfg.epochs}: loss {row['train_loss']:.4f}, "
                f"clean acc {row['clean_acc']:.3f}{adv}, {shown}{shown_lr}"
                f"{' (best ' + cfg.monitor + ')' if improved else ''}, {seconds:.1f} s "
                f"training"
                + (f" + {guard_seconds:.1f} s guard" if guard_seconds else "")
                + f" + {val_seconds:.1f} s validation"
            )
            if collapsed:
                self.log(
                    f"[{name}] stopped: catastrophic overfitting at step "
                    f"{history.overfitting['step']}; epoch {epoch}'s val figures are those of "
                    f"the weights of step {history.overfitting['restored_step']}"
                )
                break
            if cfg.patience and since_best >= cfg.patience:
                history.stopped_early = True
                self.log(f"[{name}] early stop: no val improvement in {cfg.patience} epochs")
                break
            if cfg.max_steps is not None and history.steps >= cfg.max_steps:
                self.log(f"[{name}] step cap {cfg.max_steps} reached")
                break
        return history


def _split(t, parts: int):
    """``t`` reshaped to ``[parts, len(t) / parts, ...]`` (static shapes kept when known)."""
    if t.shape.is_fully_defined():
        return tf.reshape(t, [parts, t.shape[0] // parts, *t.shape[1:]])
    return tf.reshape(t, tf.concat([[parts, -1], tf.shape(t)[1:]], axis=0))


def guard_steps(per_epoch: int, checks: int) -> set[int]:
    """The steps of an epoch (1-based) after which the guard checks: ``checks`` evenly
    spaced, the last at the end of the epoch (fewer when the epoch has fewer steps)."""
    return {math.ceil(k * per_epoch / checks) for k in range(1, checks + 1)} - {0}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")
