"""From validated ``params.yaml`` to the library's plain arguments.

The library under ``src/advpipe/`` never sees the params mapping: stage scripts call
these functions, which read one params group each and pass plain values on. Importing
this module has no side effects (unlike ``common``), so tests import it too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from advpipe.attacks.registry import ATTACKS, DEEPFOOL_OPTIONS, make_attack
from advpipe.config import get

Params = Mapping[str, Any]


def attack_options(params: Params, name: str) -> dict:
    """The constructor options of attack ``name`` (``attacks.<name>``, epsilons excluded)."""
    group = params["attacks"][name]
    return {key: group[key] for key in ATTACKS[name].options}


def deepfool_options(params: Params) -> dict:
    """DeepFool's options (steps, candidates, overshoot, batch size) from ``attacks.deepfool``."""
    group = params["attacks"]["deepfool"]
    return {key: group[key] for key in DEEPFOOL_OPTIONS}


def build_attack(name: str, model, params: Params, *, labels: str | None = None):
    """Attack ``name`` on ``model`` as ``params.yaml`` configures it (``attacks.<name>``,
    ``attacks.labels`` unless ``labels`` is given, ``seed``)."""
    return make_attack(
        name,
        model,
        labels=labels or params["attacks"]["labels"],
        seed=params["seed"],
        **attack_options(params, name),
    )


def transfer_from_params(
    models: Mapping[str, object],
    images: np.ndarray,
    labels: np.ndarray,
    params: Params,
    *,
    batch_size: int,
    progress: Callable[[str], None] | None = None,
):
    """:func:`advpipe.attacks.transfer.transfer_matrix` with the attacks, ε and DeepFool of
    ``blackbox.transfer.attacks``/``epsilons``, ``attacks.<name>`` and ``attacks.deepfool``."""
    from advpipe.attacks.deepfool import deepfool
    from advpipe.attacks.transfer import transfer_matrix

    options = deepfool_options(params)
    group = params["blackbox"]["transfer"]
    return transfer_matrix(
        models,
        lambda a, m: build_attack(a, m, params),
        images,
        labels,
        attacks=group["attacks"],
        epsilons=group["epsilons"],
        batch_size=batch_size,
        deepfool=lambda m, x, y: deepfool(
            m, x, y, keep_adversarial=True, progress=progress, **options
        ),
        progress=progress,
    )


def train_config(params: Params, group: str):
    """:class:`advpipe.defenses.loop.TrainConfig` from ``defense.<group>``."""
    from dataclasses import fields

    from advpipe.defenses.loop import TrainConfig

    values = params["defense"][group]
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names}, seed=params["seed"])


def defense_setup(params: Params, name: str):
    """:class:`advpipe.defenses.train.DefenseSetup` of defense ``name``."""
    from advpipe.defenses.loop import TrainConfig
    from advpipe.defenses.registry import DEFENSES
    from advpipe.defenses.train import DefenseSetup, ModelSpec

    entry = DEFENSES[name]
    model = get(params, "defense.model")
    group = params["defense"][entry.params_group]
    train_keys = {f for f in TrainConfig.__dataclass_fields__}
    return DefenseSetup(
        model=ModelSpec(
            trunk=model["trunk"],
            hidden_units=model["hidden_units"],
            dropout=model["dropout"],
            trainable_blocks=model["trainable_blocks"],
            image_size=get(params, "data.image_size"),
            weights_path=model["weights_path"],
        ),
        train=train_config(params, entry.params_group),
        method={k: v for k, v in group.items() if k not in train_keys},
        attack_options={a: attack_options(params, a) for a in ATTACKS},
        deepfool_steps=get(params, "attacks.deepfool.steps"),
        seed=get(params, "seed"),
    )


def autoattack_options(params: Params) -> dict:
    """:func:`advpipe.attacks.autoattack.autoattack`'s options from ``attacks.autoattack``
    (``epsilons`` excluded: the attack set and the defense evaluation each have theirs)."""
    from advpipe.attacks.autoattack import Settings

    group = params["attacks"]["autoattack"]
    return {
        "norm": group["norm"],
        "version": group["version"],
        "attacks": list(group["attacks"]),
        "settings": Settings(**{k: group[k] for k in Settings.__dataclass_fields__ if k in group}),
        "seed": params["seed"],
    }
