"""The one list of defense models: name → how it is trained (no TensorFlow imported here).

``clean`` is the head trained on clean images; every other model fine-tunes it with
a defense method: the study's (Kurakin's one-step adversarial training, Deep Defense) and
those that survive iterative attacks (PGD-AT, TRADES, fast AT). Stages, params
validation, the report and the transfer matrix ask this list; dvc.yaml's ``foreach``
lists repeat it (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DefenseEntry:
    method: str  # clean | kurakin | deep_defense | pgd_at | trades | fast_at
    params_group: str  # defense.<group> holds its training params
    attack: str | None = None  # the attack adversarial training uses
    label: str = ""  # how tables name it


DEFENSES: dict[str, DefenseEntry] = {
    "clean": DefenseEntry("clean", "clean", label="clean head"),
    "kurakin_step_ll": DefenseEntry(
        "kurakin", "kurakin", "step_ll", "Kurakin adv. training (step-LL)"
    ),
    "kurakin_fgsm": DefenseEntry("kurakin", "kurakin", "fgsm", "Kurakin adv. training (FGSM)"),
    "deep_defense": DefenseEntry("deep_defense", "deep_defense", label="Deep Defense"),
    # defenses that survive iterative attacks (issue #14): each fine-tunes the clean head
    "pgd_at": DefenseEntry("pgd_at", "pgd_at", label="PGD adv. training (Madry)"),
    "trades": DefenseEntry("trades", "trades", label="TRADES"),
    "fast_at": DefenseEntry("fast_at", "fast_at", label="fast adv. training (Wong)"),
}
#: the methods trained against an ε-ball attack, early-stopped on val robust accuracy
ROBUST = ("pgd_at", "trades", "fast_at")
FINE_TUNED = tuple(n for n in DEFENSES if n != "clean")


def model_path(name: str) -> str:
    return f"models/defense/{name}.keras"
