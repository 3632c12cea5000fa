"""Adversarial attacks: the ε-parameterised family (shared base, pure-TF core) and DeepFool.

:mod:`.registry` lists them (name → class and params options); build attacks there.
"""

from .base import Attack, LossGradient, OneStepAttack, Prepared
from .deepfool import DeepFoolResult, deepfool, deepfool_foolbox, deepfool_tf, make_deepfool
from .fgm import FGM
from .fgsm import FGSM
from .pgd import PGD
from .registry import (ATTACKS, ITERATIVE_NAMES, ONE_STEP_NAMES, attack_class, attack_options,
                       build_attack, make_attack)
from .rfgsm import RFGSM
from .step_ll import StepLL
from .sweep import SweepResult, sweep

ONE_STEP = {name: attack_class(name) for name in ONE_STEP_NAMES}

__all__ = ["Attack", "FGM", "FGSM", "PGD", "RFGSM", "StepLL", "LossGradient", "OneStepAttack",
           "Prepared", "ATTACKS", "ONE_STEP", "ONE_STEP_NAMES", "ITERATIVE_NAMES",
           "attack_class", "attack_options", "build_attack", "make_attack", "sweep",
           "SweepResult", "deepfool", "DeepFoolResult", "deepfool_tf", "make_deepfool",
           "deepfool_foolbox"]
