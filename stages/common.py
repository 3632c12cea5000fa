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


def defense_split(split: str, classes: list[int] | None = None):
    """uint8 images, class positions (int64), manifest and class list of one defense split."""
    from advpipe.defenses.dataset import defense_classes, load_split

    classes = classes or defense_classes(DEFENSE_SET)
    images, labels, manifest = load_split(DEFENSE_SET, split, classes)
    return images, labels, manifest, classes


def timings(name: str, data: dict) -> None:
    """Wall times of a stage, kept out of the metrics so `dvc metrics diff` shows science only."""
    from advpipe.reporting import write_json

    write_json(f"timings/{name}.json", data)


def guard(fn):
    """Run ``fn()``; a user mistake it raises (bad file, bad value) becomes one error line."""
    from advpipe.models.zoo import WeightsUnavailableError

    try:
        return fn()
    except (ParamsError, FileNotFoundError, WeightsUnavailableError) as exc:
        sys.exit(f"error: {exc}")
