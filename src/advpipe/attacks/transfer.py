"""Transfer (black-box) attacks: craft on a source model, evaluate on every target model.

For every source model, every attack and every ε, the adversarial batch is crafted
once on the source and shown to every target model (the source itself included:
the diagonal is the white-box accuracy), on the same images. ε-attacks run through
the shared sweep interface (:meth:`Attack.prepare` once per batch, :meth:`Attack.perturb`
per ε, compiled once per attack and model); DeepFool, which has no ε, transfers its
own minimal perturbation (its key in the results is :data:`DEEPFOOL_KEY`).

Per cell ``(attack, ε, source, target)``:

* ``top1``: the target's top-1 accuracy on the source's adversarial examples;
* ``fooling_rate``: among the images **both** models classify correctly (clean), the
  share the target misclassifies after the attack (NaN when there is none).

:func:`whitebox_flags` checks that, at the same ε, the white-box accuracy of every
target (the attack crafted on the target itself) is no higher than its accuracy under
transfer from any other source; a cell that breaks this is flagged (a sign of gradient
masking or of a too-weak white-box attack, Carlini et al. 2019).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from ..inference import compiled_forward, iterate_batches
from ..metrics import Timer, topk_hits

DEEPFOOL_KEY = "deepfool"


def eps_key(e: float) -> str:
    return f"{float(e):g}"


@dataclass
class TransferResult:
    models: list[str]
    attacks: list[str]
    epsilons: list[float]
    clean_correct: dict[str, np.ndarray]  # model -> bool [N]
    # (attack, eps key, source, target) -> bool [N]: target still right after the attack
    correct: dict[tuple[str, str, str, str], np.ndarray]
    deepfool_l2: dict[str, float] = field(default_factory=dict)  # source -> median ||r||_2
    seconds: dict[str, float] = field(default_factory=dict)

    def eps_keys(self, attack: str) -> list[str]:
        return [DEEPFOOL_KEY] if attack == DEEPFOOL_KEY else [eps_key(e) for e in self.epsilons]

    def top1(self, attack: str, eps: str, source: str, target: str) -> float:
        return float(np.mean(self.correct[attack, eps, source, target]))

    def fooling_rate(self, attack: str, eps: str, source: str, target: str) -> float:
        both = self.clean_correct[source] & self.clean_correct[target]
        if not both.any():
            return float("nan")
        return float(np.mean(~self.correct[attack, eps, source, target][both]))

    def cells(self):
        """``(attack, eps key, source, target)`` in table order."""
        for a in self.attacks:
            for e in self.eps_keys(a):
                for s in self.models:
                    for t in self.models:
                        yield a, e, s, t

    def rows(self) -> list[dict]:
        """One CSV row per cell (for ``dvc plots`` and the README tables)."""
        return [
            {
                "attack": a,
                "eps": e,
                "source": s,
                "target": t,
                "whitebox": s == t,
                "top1": self.top1(a, e, s, t),
                "fooling_rate": self.fooling_rate(a, e, s, t),
            }
            for a, e, s, t in self.cells()
        ]

    def matrix(self, attack: str, eps: str, value: str = "top1") -> np.ndarray:
        """``[source, target]`` array of ``top1`` or ``fooling_rate`` for one attack and ε."""
        fn = self.top1 if value == "top1" else self.fooling_rate
        return np.array([[fn(attack, eps, s, t) for t in self.models] for s in self.models])

    def mean_transfer(self, attack: str, eps: str, value: str = "top1") -> float:
        """Mean over the off-diagonal (source ≠ target) cells: the transfer summary."""
        m = self.matrix(attack, eps, value)
        off = m[~np.eye(len(self.models), dtype=bool)]
        off = off[np.isfinite(off)]
        return float(off.mean()) if off.size else float("nan")

    def to_metrics(self) -> dict:
        n = len(next(iter(self.clean_correct.values()))) if self.clean_correct else 0
        out: dict = {
            "n_images": n,
            "models": self.models,
            "clean_top1": {m: float(np.mean(c)) for m, c in self.clean_correct.items()},
            "attacks": {},
        }
        for a in self.attacks:
            out["attacks"][a] = {
                e: {
                    "mean_transfer_top1": self.mean_transfer(a, e),
                    "mean_transfer_fooling_rate": self.mean_transfer(a, e, "fooling_rate"),
                    "cells": {
                        s: {
                            t: {
                                "top1": self.top1(a, e, s, t),
                                "fooling_rate": self.fooling_rate(a, e, s, t),
                            }
                            for t in self.models
                        }
                        for s in self.models
                    },
                }
                for e in self.eps_keys(a)
            }
        if self.deepfool_l2:
            out["deepfool_median_l2"] = dict(self.deepfool_l2)
        flags = whitebox_flags(self)
        out["whitebox_le_transfer"] = {"passed": not flags, "flags": flags}
        return out


def flagged_cells(result: TransferResult, attack: str, eps: str) -> np.ndarray:
    """``[source, target]`` booleans: white-box top-1 of the target > transfer top-1 to it."""
    names = result.models
    return np.array(
        [
            [
                s != t and result.top1(attack, eps, t, t) > result.top1(attack, eps, s, t)
                for t in names
            ]
            for s in names
        ]
    )


def whitebox_flags(result: TransferResult) -> list[str]:
    """Cells where white-box top-1 on a target exceeds transfer top-1 to it (same attack, ε)."""
    flags = []
    for a, e, s, t in result.cells():
        if s == t:
            continue
        white = result.top1(a, e, t, t)
        transfer = result.top1(a, e, s, t)
        if white > transfer:
            flags.append(
                f"{a} eps {e}: white-box top-1 of {t} {white:.3f} > transfer "
                f"from {s} {transfer:.3f}"
            )
    return flags


def transfer_matrix(
    models: Mapping[str, object],
    build: Callable[[str, object], object],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    attacks: Sequence[str],
    epsilons: Sequence[float],
    batch_size: int = 32,
    deepfool: Callable | None = None,
    progress: Callable[[str], None] | None = None,
) -> TransferResult:
    """Every source × target × attack × ε top-1 on ``(images, labels)``.

    ``models``: name -> Keras model, all reading the same image size (see
    :mod:`advpipe.models.native_size`). ``build(attack_name, model)`` returns an ε-attack
    on ``model`` (e.g. :func:`advpipe.attacks.registry.make_attack` with fixed options).
    ``deepfool(model, images, labels) -> DeepFoolResult`` (adversarials kept) runs DeepFool
    when ``"deepfool"`` is in ``attacks``. Labels are the true labels (int64).
    """
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    names = list(models)
    eps_attacks = [a for a in attacks if a != DEEPFOOL_KEY]
    epsilons = sorted(float(e) for e in epsilons)
    labels = np.asarray(labels, dtype=np.int64)
    forwards = {m: compiled_forward(models[m]) for m in names}
    parts: dict[tuple, list] = {}
    clean_parts: dict[str, list] = {m: [] for m in names}
    seconds: dict[str, float] = {}
    df_l2: dict[str, float] = {}

    def add(key, logits, y):
        parts.setdefault(key, []).append(topk_hits(logits, y, 1))

    for _, x, y in iterate_batches(images, labels, batch_size):
        for m in names:
            clean_parts[m].append(topk_hits(forwards[m](tf.constant(x)).numpy(), y, 1))
    for source in names:
        timer = Timer()
        built = {a: build(a, models[source]) for a in eps_attacks}
        for start, x, y in iterate_batches(images, labels, batch_size):
            with timer:
                index = np.arange(start, start + len(x))
                for a, attack in built.items():
                    prepared = attack.prepare(x, y, index=index)
                    for e in epsilons:
                        adv = attack.perturb(prepared, e)
                        for target in names:
                            add((a, eps_key(e), source, target), forwards[target](adv).numpy(), y)
            say(
                f"[transfer] source {source}: {start + len(x)}/{len(images)} images, "
                f"{len(built)} attacks x {len(epsilons)} eps x {len(names)} targets, "
                f"{timer.seconds:.0f} s"
            )
        if DEEPFOOL_KEY in attacks:
            if deepfool is None:
                raise ValueError("attack 'deepfool' needs the deepfool callable")
            with timer:
                res = deepfool(models[source], images, labels)
                adv_all = np.asarray(res.adversarial, np.float32)
                for _start, adv, y in iterate_batches(adv_all, labels, batch_size):
                    for target in names:
                        add(
                            (DEEPFOOL_KEY, DEEPFOOL_KEY, source, target),
                            forwards[target](tf.constant(adv)).numpy(),
                            y,
                        )
                ok = np.asarray(res.success, bool)
                df_l2[source] = (
                    float(np.median(res.perturbation_l2[ok])) if ok.any() else float("nan")
                )
            say(f"[transfer] source {source}: deepfool done, {timer.seconds:.0f} s")
        seconds[source] = round(timer.seconds, 2)
    correct = {k: np.concatenate(v).astype(bool) for k, v in parts.items()}
    clean = {
        m: np.concatenate(v).astype(bool) if v else np.zeros(0, bool)
        for m, v in clean_parts.items()
    }
    return TransferResult(names, list(attacks), epsilons, clean, correct, df_l2, seconds)
