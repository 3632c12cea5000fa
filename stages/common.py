"""What every stage script shares: quiet TensorFlow, params, the model, the attack set."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from advpipe.config import ParamsError, get, load_params  # noqa: E402

ATTACK_SET = "data/attack"
DEFENSE_SET = "data/defense"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def params() -> dict:
    try:
        return load_params("params.yaml")
    except ParamsError as exc:
        sys.exit(f"error: {exc}")


def model(p: dict):
    """The attacked model named by ``model.name`` (with ``model.weights_path``)."""
    from advpipe.models.zoo import WeightsUnavailableError, build_model

    name = get(p, "model.name")
    log(f"loading model {name}")
    try:
        return build_model(name, weights_path=get(p, "model.weights_path"),
                           image_size=get(p, "data.image_size"), seed=get(p, "seed"))
    except (WeightsUnavailableError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")


def attack_set():
    """uint8 images, int64 labels and the manifest of the attack set."""
    from advpipe.data.images import read_image_set

    images, manifest = read_image_set(ATTACK_SET)
    return images, manifest["label"].to_numpy(dtype="int64"), manifest
