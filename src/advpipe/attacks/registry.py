"""The one list of attacks: name → class and the constructor options it takes.

Importing this module is cheap (no TensorFlow), so ``config`` can validate names
against it; :func:`make_attack` imports the class when an attack is built, from plain
values. Stages (through ``stages/wiring.py``, which reads the options from params), the
trainer, the defense evaluation and the benchmarks all build attacks here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class AttackEntry:
    module: str  # under advpipe.attacks
    cls: str
    options: tuple[str, ...]  # constructor options (the keys of attacks.<name> in params)
    iterative: bool = False


#: ε-parameterised attacks, in the order tables and plots show them.
ATTACKS: dict[str, AttackEntry] = {
    "fgsm": AttackEntry("fgsm", "FGSM", ()),
    "fgm": AttackEntry("fgm", "FGM", ("norm",)),
    "rfgsm": AttackEntry("rfgsm", "RFGSM", ("alpha_fraction",)),
    "step_ll": AttackEntry("step_ll", "StepLL", ()),
    "pgd": AttackEntry(
        "pgd", "PGD", ("steps", "rel_stepsize", "random_start", "norm"), iterative=True
    ),
}
ONE_STEP_NAMES = tuple(n for n, e in ATTACKS.items() if not e.iterative)
ITERATIVE_NAMES = tuple(n for n, e in ATTACKS.items() if e.iterative)

#: Options of :func:`advpipe.attacks.deepfool.deepfool` (the keys of ``attacks.deepfool``).
DEEPFOOL_OPTIONS = ("steps", "candidates", "overshoot", "batch_size")

#: Decision-based (label-only) attacks of :mod:`advpipe.attacks.decision` (Foolbox's).
DECISION_ATTACKS = ("hopskipjump", "boundary")


def attack_class(name: str):
    if name not in ATTACKS:
        raise ValueError(f"unknown attack '{name}'; choose one of {list(ATTACKS)}")
    entry = ATTACKS[name]
    return getattr(importlib.import_module(f"advpipe.attacks.{entry.module}"), entry.cls)


def make_attack(name: str, model, *, labels: str = "ground_truth", seed: int = 0, **options):
    """Build attack ``name`` on ``model`` with explicit options (e.g. ``norm`` for FGM)."""
    return attack_class(name)(model, labels=labels, seed=seed, **options)
