"""Train one defense model by name, from plain values.

``train_defense(name, setup, train, val, classes)`` builds (or, for fine-tuning
methods, loads the clean head), runs :class:`~advpipe.defenses.loop.Trainer` with the
method's loss, keeps the best epoch on disk and returns what the stage writes: learning
curves, metrics (with label leaking for adversarial training) and timings.
:class:`DefenseSetup` holds everything besides the data; the stage fills it from
``params.yaml``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ..attacks.registry import make_attack
from ..inference import compiled_forward, predict_logits
from ..metrics import Timer, accuracy
from ..runtime import compiled, output_dir
from .loop import CleanLoss, TrainConfig, Trainer
from .model import build_defense_model, head_of, load_model, save_model, trunk_of
from .registry import DEFENSES, ROBUST, model_path


@dataclass(frozen=True)
class ModelSpec:
    """The defense model: trunk, head and how much of the trunk trains."""

    trunk: str
    hidden_units: list[int] = field(default_factory=list)
    dropout: float = 0.0
    trainable_blocks: int = 0
    image_size: int = 224
    weights_path: str | None = None


@dataclass(frozen=True)
class DefenseSetup:
    """Everything :func:`train_defense` needs besides the data, as plain values.

    ``method``: the method's options (Kurakin: ``adversarial_fraction``, ``lambda``,
    ``eps_stddev``, ``eps_max``, ``labels``; Deep Defense: ``mu``, ``c``, ``d``,
    ``steps``, ``overshoot``, ``candidates``); ``attack_options``: the constructor
    options of each attack adversarial training may use (name -> options);
    ``deepfool_steps``: DeepFool's steps for Deep Defense's val ρ₂.
    """

    model: ModelSpec
    train: TrainConfig
    method: dict[str, Any] = field(default_factory=dict)
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    deepfool_steps: int = 50
    seed: int = 0


def _attack(setup: DefenseSetup, name: str, model, labels: str):
    return make_attack(
        name, model, labels=labels, seed=setup.seed, **setup.attack_options.get(name, {})
    )


def make_method(name: str, model, setup: DefenseSetup, steps_per_epoch: int = 1):
    """The loss of defense ``name`` on ``model`` (attacks built on the model being trained).

    ``steps_per_epoch`` turns the robust methods' ``eps_warmup_epochs`` into steps."""
    entry = DEFENSES[name]
    opts = setup.method
    if entry.method in ROBUST:
        return _robust_method(entry.method, opts, setup.seed, steps_per_epoch)
    if entry.method == "clean":
        return CleanLoss()
    if entry.method == "kurakin":
        from .adversarial import AdversarialTraining

        attack = _attack(setup, entry.attack, model, opts["labels"])
        return AdversarialTraining(
            attack,
            adversarial_fraction=opts["adversarial_fraction"],
            lam=opts["lambda"],
            eps_stddev=opts["eps_stddev"],
            eps_max=opts["eps_max"],
            seed=setup.seed,
        )
    if entry.method == "deep_defense":
        from .deep_defense import DeepDefense

        return DeepDefense(
            **{k: opts[k] for k in ("mu", "c", "d", "steps", "overshoot", "candidates")}
        )
    raise ValueError(f"no training method '{entry.method}'")


def _robust_method(method: str, opts: dict, seed: int, steps_per_epoch: int):
    warmup = int(round(opts["eps_warmup_epochs"] * steps_per_epoch))
    common = {"epsilon": opts["epsilon"], "warmup_steps": warmup, "seed": seed}
    if method == "pgd_at":
        from .pgd_at import PGDAdversarialTraining

        return PGDAdversarialTraining(
            steps=opts["steps"],
            rel_stepsize=opts["rel_stepsize"],
            clean_fraction=opts["clean_fraction"],
            **common,
        )
    if method == "trades":
        from .trades import TRADES

        return TRADES(beta=opts["beta"], steps=opts["steps"], **common)
    from .fast_at import FastAdversarialTraining

    return FastAdversarialTraining(alpha=opts["alpha"], **common)


def robust_accuracy(model, *, epsilon, steps, restarts=1, seed=0, batch_size=32):
    """``f(images, labels) -> top-1`` under PGD (L∞, random start, step ε/4, ``restarts``
    starts: an image counts as robust only if it is classified correctly and every start
    fails; a misclassified or broken image is not attacked again), compiled once for
    ``model``: the robust methods' val monitor and their overfitting guard."""
    from ..attacks.pgd import PGD

    attacks = [PGD(model, steps=steps, rel_stepsize=0.25, seed=seed + r) for r in range(restarts)]
    forward = compiled_forward(model)

    def measure(images, labels) -> float:
        robust = np.zeros(len(images), bool)
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].astype(np.float32) / 255.0
            y = np.asarray(labels[start : start + batch_size], np.int64)
            index = np.arange(start, start + len(x))
            alive = forward(tf.constant(x)).numpy().argmax(1) == y
            for attack in attacks:
                if not alive.any():
                    break
                adv = attack(x[alive], y[alive], epsilon, index=index[alive])
                alive[alive] = forward(tf.constant(adv)).numpy().argmax(1) == y[alive]
            robust[index] = alive
        return float(robust.mean()) if len(images) else float("nan")

    return measure


def _features(trunk, images, batch_size):
    forward = compiled_forward(trunk)
    return predict_logits(trunk, images, batch_size, forward=forward)


def train_defense(
    name: str,
    setup: DefenseSetup,
    train: tuple,
    val: tuple,
    classes: list[int],
    *,
    strategy=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train defense ``name``; the best model is at ``models/defense/<name>.keras``."""
    entry = DEFENSES[name]
    spec = setup.model
    cfg = setup.train
    strategy = strategy or tf.distribute.get_strategy()
    blocks = spec.trainable_blocks
    if entry.method in ROBUST and setup.method.get("trainable_blocks") is not None:
        blocks = setup.method["trainable_blocks"]  # e.g. the whole network on the clean head
    with strategy.scope():
        if entry.method == "clean":
            model = build_defense_model(
                spec.trunk,
                len(classes),
                hidden_units=spec.hidden_units,
                dropout=spec.dropout,
                trainable_blocks=blocks,
                image_size=spec.image_size,
                weights_path=spec.weights_path,
                seed=setup.seed,
            )
        else:
            model = load_model(model_path("clean"), trainable_blocks=blocks)
    (x_train, y_train), (x_val, y_val) = train, val
    # every worker of a multi-worker run saves (Keras needs it); only the chief's copy counts
    scratch = contextlib.ExitStack()
    final = Path(model_path(name))
    path = Path(scratch.enter_context(output_dir(final.parent, strategy))) / final.name
    info = {
        "name": name,
        "method": entry.method,
        "attack": entry.attack,
        "classes": classes,
        "trunk": spec.trunk,
        "trainable_blocks": blocks,
        "input": "RGB float32 in [0, 1], NHWC",
        "output": "logits over classes",
    }
    timer = Timer()
    with timer:
        if entry.method == "clean" and blocks == 0 and cfg.augment != "none":
            raise ValueError(
                "defense.clean.augment: the frozen-trunk head trains on cached features, "
                "which cannot be augmented; set defense.model.trainable_blocks > 0 or augment none"
            )
        if entry.method == "clean" and blocks == 0:
            # frozen trunk: cache its features once and train the head on them
            log(f"[{name}] caching trunk features of {len(x_train)} + {len(x_val)} images")
            trunk = trunk_of(model)
            f_train = _features(trunk, x_train, cfg.batch_size)
            f_val = _features(trunk, x_val, cfg.batch_size)
            target, inputs, to_input = head_of(model), f_train, (lambda a: a)
            head_forward = compiled_forward(target)
            evaluate = lambda: {
                "val_acc": accuracy(  # noqa: E731
                    predict_logits(target, f_val, 256, forward=head_forward), y_val
                )["top1"]
            }
        else:
            target, inputs, to_input = model, x_train, None
            forward = compiled_forward(model)
            evaluate = lambda: {
                "val_acc": accuracy(  # noqa: E731
                    predict_logits(model, x_val, cfg.batch_size, forward=forward), y_val
                )["top1"]
            }
        steps_per_epoch = max(1, len(x_train) // max(1, min(cfg.batch_size, len(x_train))))
        method = make_method(name, model, setup, steps_per_epoch)
        if entry.method in ROBUST:
            clean_val = evaluate
            opts = setup.method
            val_robust = robust_accuracy(
                model,
                epsilon=opts["epsilon"],
                steps=opts["val_pgd_steps"],
                restarts=opts["val_pgd_restarts"],
                seed=setup.seed,
                batch_size=cfg.batch_size,
            )
            evaluate = lambda: {  # noqa: E731
                **clean_val(),
                "val_robust_acc": val_robust(x_val, y_val),
            }
            cfg.monitor = "val_robust_acc"
            if cfg.guard_checks_per_epoch > 0:  # Wong et al.'s catastrophic-overfitting guard
                held = slice(0, opts["guard_images"])
                guard_pgd = robust_accuracy(
                    model,
                    epsilon=opts["epsilon"],
                    steps=opts["val_pgd_steps"],
                    seed=setup.seed,
                    batch_size=cfg.batch_size,
                )
                cfg.guard = lambda: guard_pgd(x_val[held], y_val[held])
        if entry.method == "kurakin":
            clean_val = evaluate
            evaluate = lambda: {
                **clean_val(),
                "val_adv_acc": attacked_accuracy(  # noqa: E731
                    model, setup, entry.attack, x_val, y_val, "ground_truth"
                ),
            }
            cfg.monitor = "val_adv_acc"
        elif entry.method == "deep_defense":
            from ..attacks.deepfool import deepfool, make_deepfool

            clean_val = evaluate
            run = make_deepfool(
                model,
                steps=setup.deepfool_steps,
                candidates=setup.method["candidates"],
                overshoot=setup.method["overshoot"],
            )
            evaluate = lambda: {
                **clean_val(),
                "val_rho2": deepfool(  # noqa: E731
                    model,
                    x_val,
                    y_val,
                    batch_size=cfg.batch_size,
                    attack=run,
                    progress=lambda m: None,
                ).to_metrics()["rho2"],
            }
            cfg.monitor = "val_rho2"
        kwargs = {"to_input": to_input} if to_input else {}
        trainer = Trainer(
            target,
            method,
            cfg,
            strategy=strategy,
            evaluate=evaluate,
            save=lambda epoch: save_model(model, path, {**info, "best_epoch": epoch}),
            log=log,
            **kwargs,
        )
        history = trainer.fit(inputs, y_train)
    best = load_model(path)
    scratch.close()
    metrics = {
        "model": name,
        "classes": classes,
        "n_train": int(len(x_train)),
        "n_val": int(len(x_val)),
        "best_epoch": history.best_epoch,
        "monitor": cfg.monitor,
        "best_monitored": history.best_val,
        "best_val_top1": next(
            (r["val_acc"] for r in history.rows if r["epoch"] == history.best_epoch), None
        ),
        "epochs_run": len(history.rows),
        "steps": history.steps,
        "stopped_early": history.stopped_early,
    }
    if entry.method in ROBUST:  # the guard's record: null when it never fired
        metrics["epsilon"] = setup.method["epsilon"]
        metrics["catastrophic_overfitting"] = history.overfitting
        metrics["guard_checks"] = history.guard_checks
    if entry.method == "kurakin":
        metrics["label_leaking"] = label_leaking(best, setup, entry.attack, x_train, y_train)
        log(f"[{name}] label leaking check (train split): {metrics['label_leaking']}")
    # the curves hold what was learned; wall-clock seconds go to the timings file only
    clock = ("seconds", "guard_seconds", "val_seconds")
    curves = [
        {"model": name, **{k: v for k, v in r.items() if k not in clock}} for r in history.rows
    ]
    return {
        "metrics": metrics,
        "curves": curves,
        "timings": {
            "train_seconds": round(timer.seconds, 2),
            "seconds_per_step": round(history.seconds_per_step, 4),
            # per epoch: the training steps, the guard's checks, the validation
            "epochs": [r["seconds"] for r in history.rows],
            "epochs_guard": [r["guard_seconds"] for r in history.rows],
            "epochs_validation": [r["val_seconds"] for r in history.rows],
        },
    }


def label_leaking(
    model, setup: DefenseSetup, attack_name: str, images, labels, batch_size=32
) -> dict:
    """Kurakin et al.'s label-leaking check on the training images.

    Top-1 on clean images and on the training attack's examples (per-example ε drawn
    as in training) made with the true labels and with the model's predictions. With
    leaking, accuracy on true-label examples exceeds clean accuracy.
    """
    forward = compiled_forward(model)
    out = {}
    clean = predict_logits(model, images, batch_size, forward=forward)
    out["clean_top1"] = accuracy(clean, labels)["top1"]
    for mode in ("ground_truth", "predicted"):
        out[f"adv_top1_{mode}_labels"] = attacked_accuracy(
            model, setup, attack_name, images, labels, mode, batch_size
        )
    out["leaking"] = bool(out["adv_top1_ground_truth_labels"] > out["clean_top1"])
    return out


_COMPILED: dict = {}


def attacked_accuracy(
    model, setup: DefenseSetup, attack_name, images, labels, mode, batch_size=32
) -> float:
    """Top-1 under the training attack, per-example ε drawn as in training (fixed seed)."""
    from ..attacks.base import example_seeds
    from .adversarial import sample_epsilons

    key = (id(model), attack_name, mode)
    if key not in _COMPILED:  # one compiled attack + forward per model, reused every epoch
        attack = _attack(setup, attack_name, model, mode)
        _COMPILED[key] = (compiled(attack.generate), compiled_forward(model))
    generate, forward = _COMPILED[key]
    eps_all = sample_epsilons(
        len(images),
        tf.constant([setup.seed, 7], tf.int64),
        setup.method["eps_stddev"],
        setup.method["eps_max"],
    ).numpy()
    preds = []
    for start in range(0, len(images), batch_size):
        x = tf.constant(images[start : start + batch_size].astype(np.float32) / 255.0)
        y = tf.constant(labels[start : start + batch_size])
        eps = tf.constant(eps_all[start : start + batch_size])
        seeds = example_seeds(setup.seed, np.arange(start, start + len(x)))
        preds.append(forward(generate(x, y, eps, seeds)).numpy())
    return accuracy(np.concatenate(preds), labels)["top1"]
