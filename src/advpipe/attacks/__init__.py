"""Adversarial attacks: the ε-parameterised family (shared base, pure-TF core) and DeepFool.

Names are resolved lazily, so importing :mod:`advpipe.attacks.registry` (the list of
attacks, used by the params validation) does not import TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Attack": "base", "LossGradient": "base", "OneStepAttack": "base", "Prepared": "base",
    "FGSM": "fgsm", "FGM": "fgm", "RFGSM": "rfgsm", "StepLL": "step_ll", "PGD": "pgd",
    "deepfool": "deepfool", "DeepFoolResult": "deepfool",
    "sweep": "sweep", "SweepResult": "sweep",
    "ATTACKS": "registry", "ONE_STEP_NAMES": "registry", "ITERATIVE_NAMES": "registry",
    "attack_options": "registry", "build_attack": "registry", "make_attack": "registry",
}

__all__ = sorted(_EXPORTS) + ["ONE_STEP"]


def __getattr__(name: str):
    if name == "ONE_STEP":
        from .registry import ONE_STEP_NAMES, attack_class

        return {n: attack_class(n) for n in ONE_STEP_NAMES}
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
