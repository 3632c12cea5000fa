"""The defense model: a frozen ImageNet feature extractor plus a trainable head.

``build_defense_model`` returns a plain Keras functional model — RGB [0, 1] NHWC in,
logits over the defense classes out, preprocessing inside — made of two named
sub-models, ``trunk`` and ``head``, so that clean training can cache the trunk's
features and train the head alone, and adversarial training can run the whole
model (it needs input gradients through the trunk).

``trainable_blocks`` leaves the top N blocks of the trunk trainable (default 0: the
paper's frozen trunk). Batch-norm layers always stay frozen and in inference mode
(as in the Deep Defense authors' code).

Saved models are standard ``.keras`` files: ``keras.models.load_model`` reads them
after ``import advpipe`` (which registers the custom preprocessing layers). A JSON
sidecar (``<name>.json``) records the class list and how the model was trained.
The ``.keras`` archive is written without the save date and the Python object ids Keras
stamps into it, so identical weights give an identical file and DVC sees an unchanged
output after a rerun.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras

from ..models.zoo import build_trunk

_BLOCK_PATTERNS = (
    re.compile(r"^(blocks_\d+)_"),  # EfficientNet-Lite MBConv blocks
    re.compile(r"^(conv\d_block\d+)_"),  # ResNet50 residual blocks
    re.compile(r"^(block\d+)_"),  # VGG16 convolutional blocks
)
_STEM = {
    "conv_stem",
    "bn0",
    "conv_stem_relu6",
    "bn0_relu6",
    "conv1_pad",
    "conv1_conv",
    "conv1_bn",
    "conv1_relu",
    "pool1_pad",
    "pool1_pool",
}


def _leaf_layers(model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _leaf_layers(layer)
        else:
            yield layer


def _block_of(name: str) -> str:
    for pattern in _BLOCK_PATTERNS:
        m = pattern.match(name)
        if m:
            return m.group(1)
    return "stem" if name in _STEM else "top"


def trunk_blocks(trunk: keras.Model) -> list[list[keras.layers.Layer]]:
    """The trunk's layers with weights, grouped into blocks, input side first.

    Blocks: the stem, then each MBConv / residual / VGG block, then the top layers
    after the last block (e.g. EfficientNet-Lite's head convolution).
    """
    groups: dict[str, list] = {}
    for layer in _leaf_layers(trunk):
        if layer.weights:
            groups.setdefault(_block_of(layer.name), []).append(layer)
    return list(groups.values())


def set_trainable_blocks(trunk: keras.Model, n: int) -> list[str]:
    """Freeze the trunk but its top ``n`` blocks (batch-norm always frozen); return their names."""
    blocks = trunk_blocks(trunk)
    if n > len(blocks):
        raise ValueError(f"trainable_blocks: {n} > the {len(blocks)} blocks of the trunk")
    trunk.trainable = True
    for layer in _leaf_layers(trunk):
        layer.trainable = False
    unfrozen = blocks[len(blocks) - n :] if n else []
    for block in unfrozen:
        for layer in block:
            if not isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = True
    if not n:
        trunk.trainable = False
    return [_block_of(b[0].name) for b in unfrozen]


def build_head(
    num_features: int,
    num_classes: int,
    hidden_units: Sequence[int] = (),
    dropout: float = 0.0,
    seed: int = 0,
) -> keras.Model:
    """Dense ReLU layers (``hidden_units``), dropout, then a Dense layer to logits."""
    inputs = keras.Input((num_features,), name="features")
    x = inputs
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(
            units,
            activation="relu",
            name=f"dense_{i}",
            kernel_initializer=keras.initializers.HeNormal(seed + i),
        )(x)
    if dropout:
        x = keras.layers.Dropout(dropout, seed=seed, name="dropout")(x)
    logits = keras.layers.Dense(
        num_classes, name="logits", kernel_initializer=keras.initializers.GlorotUniform(seed + 99)
    )(x)
    return keras.Model(inputs, logits, name="head")


def build_defense_model(
    trunk_name: str,
    num_classes: int,
    *,
    hidden_units: Sequence[int] = (),
    dropout: float = 0.0,
    trainable_blocks: int = 0,
    image_size: int = 224,
    weights: bool = True,
    weights_path: str | None = None,
    seed: int = 0,
) -> keras.Model:
    """Trunk (ImageNet weights) + a new head for ``num_classes`` defense classes."""
    trunk = build_trunk(
        trunk_name, weights=weights, weights_path=weights_path, image_size=image_size, seed=seed
    )
    set_trainable_blocks(trunk, trainable_blocks)
    head = build_head(trunk.output_shape[-1], num_classes, hidden_units, dropout, seed)
    inputs = keras.Input(trunk.input_shape[1:], name="rgb_0_1")
    return keras.Model(inputs, head(trunk(inputs)), name="defense")


def trunk_of(model: keras.Model) -> keras.Model:
    return model.get_layer("trunk")


def head_of(model: keras.Model) -> keras.Model:
    return model.get_layer("head")


def _float32_config(obj):
    """A model config with every mixed dtype policy replaced by float32."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "DTypePolicy" and isinstance(obj.get("config"), dict):
            name = obj["config"].get("name", "")
            if isinstance(name, str) and name.startswith("mixed_"):
                return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float32_config(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("mixed_"):
        return "float32"
    return obj


def float32_copy(model: keras.Model) -> keras.Model:
    """``model`` itself when it computes in float32, else a float32 model with its weights
    (the variables of a mixed-precision model are float32 already: nothing is rounded)."""
    if all(
        getattr(layer, "compute_dtype", "float32") == "float32"
        for layer in model._flatten_layers(include_self=True)
    ):
        return model
    import advpipe.models.preprocessing  # noqa: F401  (registers the custom layers)

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = model.__class__.from_config(_float32_config(model.get_config()))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def save_model(model: keras.Model, path: str | Path, info: dict | None = None) -> Path:
    """Save ``model`` as ``.keras`` (and ``info`` as a JSON sidecar), each atomically; a
    model trained in mixed precision is saved as its float32 copy (:func:`float32_copy`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        float32_copy(model).save(tmp)
        _make_reproducible(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if info is not None:
        side = path.with_suffix(".json")
        tmp_json = side.with_name(f".{side.name}.tmp")
        tmp_json.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp_json, side)
    return path


def _make_reproducible(path: Path) -> None:
    """Rewrite the ``.keras`` zip at ``path`` without what changes from one save to the next:
    the save date (``metadata.json``, zip entry times) and the ``shared_object_id`` values in
    ``config.json`` (Python object ids; renumbered 1, 2, ... in order of appearance, which keeps
    which objects are shared)."""
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            dst.writestr(fixed, data)


def _renumber_shared_objects(node, ids: dict):
    if isinstance(node, dict):
        return {
            key: (
                ids.setdefault(value, len(ids) + 1)
                if key == "shared_object_id"
                else _renumber_shared_objects(value, ids)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renumber_shared_objects(value, ids) for value in node]
    return node


def load_model(path: str | Path, trainable_blocks: int | None = None) -> keras.Model:
    """Load a saved defense model (and re-apply the trunk's trainable blocks if given)."""
    import advpipe.models.preprocessing  # noqa: F401  (registers the custom layers)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved model here (run its training stage first)")
    model = keras.models.load_model(path, compile=False)
    if trainable_blocks is not None:
        set_trainable_blocks(trunk_of(model), trainable_blocks)
    return model


def load_info(path: str | Path) -> dict:
    return json.loads(Path(path).with_suffix(".json").read_text())
