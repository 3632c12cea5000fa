"""Adversarial attacks: the one-step family (shared base) and DeepFool (compiled TF)."""

from .base import LossGradient, OneStepAttack, Prepared
from .deepfool import DeepFoolResult, deepfool, deepfool_foolbox, deepfool_tf, make_deepfool
from .fgm import FGM
from .fgsm import FGSM
from .rfgsm import RFGSM
from .step_ll import StepLL
from .sweep import SweepResult, sweep

ONE_STEP = {cls.name: cls for cls in (FGSM, FGM, RFGSM, StepLL)}


def make_attack(name: str, model, *, labels: str = "ground_truth", seed: int = 0,
                **options) -> OneStepAttack:
    """Build a one-step attack by name with its own options (e.g. ``norm`` for FGM)."""
    if name not in ONE_STEP:
        raise ValueError(f"unknown attack '{name}'; choose one of {sorted(ONE_STEP)}")
    if name == "rfgsm":
        options.setdefault("seed", seed)
    return ONE_STEP[name](model, labels=labels, **options)


__all__ = ["FGM", "FGSM", "RFGSM", "StepLL", "LossGradient", "OneStepAttack", "Prepared",
           "ONE_STEP", "make_attack", "sweep", "SweepResult", "deepfool", "DeepFoolResult",
           "deepfool_tf", "make_deepfool", "deepfool_foolbox"]
