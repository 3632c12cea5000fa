"""The one list of attacks: name → class and the options it reads from ``params.yaml``.

Importing this module is cheap (no TensorFlow), so ``config`` can validate names
against it; :func:`build_attack` imports the class when an attack is built. Stages,
the trainer, the defense evaluation and the benchmarks all build attacks here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class AttackEntry:
    module: str              # under advpipe.attacks
    cls: str
    options: tuple[str, ...]  # keys of attacks.<name> passed to the constructor
    iterative: bool = False


#: ε-parameterised attacks, in the order tables and plots show them.
ATTACKS: dict[str, AttackEntry] = {
    "fgsm": AttackEntry("fgsm", "FGSM", ()),
    "fgm": AttackEntry("fgm", "FGM", ("norm",)),
    "rfgsm": AttackEntry("rfgsm", "RFGSM", ("alpha_fraction",)),
    "step_ll": AttackEntry("step_ll", "StepLL", ()),
    "pgd": AttackEntry("pgd", "PGD", ("steps", "rel_stepsize", "random_start"), iterative=True),
}
ONE_STEP_NAMES = tuple(n for n, e in ATTACKS.items() if not e.iterative)
ITERATIVE_NAMES = tuple(n for n, e in ATTACKS.items() if e.iterative)

#: Keys of ``attacks.deepfool`` passed to :func:`advpipe.attacks.deepfool.deepfool`.
DEEPFOOL_OPTIONS = ("steps", "candidates", "overshoot", "batch_size")

#: Decision-based (label-only) attacks of :mod:`advpipe.attacks.decision` (Foolbox's).
DECISION_ATTACKS = ("hopskipjump", "boundary")


def attack_class(name: str):
    if name not in ATTACKS:
        raise ValueError(f"unknown attack '{name}'; choose one of {list(ATTACKS)}")
    entry = ATTACKS[name]
    return getattr(importlib.import_module(f"advpipe.attacks.{entry.module}"), entry.cls)


def attack_options(params: Mapping[str, Any], name: str) -> dict:
    """The constructor options of attack ``name`` from a validated params mapping."""
    group = params["attacks"][name]
    return {key: group[key] for key in ATTACKS[name].options}


def deepfool_options(params: Mapping[str, Any]) -> dict:
    """DeepFool's options (steps, candidates, overshoot, batch size) from ``params.yaml``."""
    group = params["attacks"]["deepfool"]
    return {key: group[key] for key in DEEPFOOL_OPTIONS}


def make_attack(name: str, model, *, labels: str = "ground_truth", seed: int = 0, **options):
    """Build attack ``name`` on ``model`` with explicit options (e.g. ``norm`` for FGM)."""
    return attack_class(name)(model, labels=labels, seed=seed, **options)


def build_attack(name: str, model, params: Mapping[str, Any], *, labels: str | None = None):
    """Build attack ``name`` on ``model`` as ``params.yaml`` configures it."""
    return make_attack(name, model, labels=labels or params["attacks"]["labels"],
                       seed=params["seed"], **attack_options(params, name))
