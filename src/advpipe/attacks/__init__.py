"""Adversarial attacks: the ε-parameterised family (shared base, pure-TF core) and DeepFool.

:mod:`.registry` lists them (name → class and options); build attacks there.
"""

from .base import Attack, LossGradient, Prepared
from .deepfool import DeepFoolResult, deepfool, deepfool_foolbox, deepfool_tf, make_deepfool
from .fgm import FGM
from .fgsm import FGSM
from .pgd import PGD
from .registry import ATTACKS, ITERATIVE_NAMES, ONE_STEP_NAMES, attack_class, make_attack
from .rfgsm import RFGSM
from .step_ll import StepLL
from .sweep import SweepResult, sweep

__all__ = [
    "Attack",
    "FGM",
    "FGSM",
    "PGD",
    "RFGSM",
    "StepLL",
    "LossGradient",
    "Prepared",
    "ATTACKS",
    "ONE_STEP_NAMES",
    "ITERATIVE_NAMES",
    "attack_class",
    "make_attack",
    "sweep",
    "SweepResult",
    "deepfool",
    "DeepFoolResult",
    "deepfool_tf",
    "make_deepfool",
    "deepfool_foolbox",
]
