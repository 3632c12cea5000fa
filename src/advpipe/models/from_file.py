"""The user's own Keras model from a file, wrapped as a zoo model: RGB [0, 1] NHWC in, logits.

:func:`load_model_file` reads a ``.keras`` archive, a legacy ``.h5`` model or a TensorFlow
SavedModel folder (through ``keras.layers.TFSMLayer``: Keras 3 cannot load one as a model) and
puts in front of it what its input expects (``inputs``):

=========  ================================================================================
``unit``   RGB [0, 1]: the model preprocesses its input itself (this pipeline's models)
``0_255``  RGB [0, 255]: idem (e.g. Keras applications built with ``include_preprocessing``)
``caffe``  Keras ``preprocess_input(mode="caffe")``: [0, 255] BGR minus the ImageNet mean
``torch``  Keras ``mode="torch"``: [0, 1] RGB, minus the ImageNet mean, over its std
``tf``     Keras ``mode="tf"``: x·255/127.5 − 1, in [−1, 1] (MobileNet, Inception, Xception)
``lite``   (x·255 − 127)/128 (EfficientNet-Lite and other TFLite-era models)
=========  ================================================================================

Attacks need logits: a softmax saturates, and a loss computed on probabilities loses its
gradient where the model is confident, which can make a model look robust when it is not
(Carlini & Wagner 2017, https://arxiv.org/abs/1608.04644, Section VIII, on defensive
distillation; Athalye et al. 2018, https://arxiv.org/abs/1802.00420). So a model whose last
operation is a softmax -- a ``Softmax``/``Activation("softmax")`` layer, ``keras.ops.softmax``,
or a layer with ``activation="softmax"`` (e.g. the Dense classifier of a Keras application),
also inside a nested model -- is rebuilt with the same layers and weights up to the softmax's
input: the exact logits. Where no such operation is found (a SavedModel, a custom layer) but
the outputs are probabilities, the wrapper returns log(clip(p, 1e-12, 1)): logits up to a
per-image constant, with the same softmax and the same predictions, but whose gradient is zero
wherever p < 1e-12 and tiny where a class is near-certain; :attr:`LoadedModel.from_probabilities`
flags it so that results can say so.

The output index ``i`` is ImageNet class ``classes[i]``: ``range(1000)`` for 1,000 outputs;
otherwise the list given, or the ``"classes"`` of the JSON sidecar the pipeline writes beside
its own models (``<name>.json``, see :mod:`advpipe.defenses.model`).

Every user-fixable problem raises :class:`ModelFileError`, one line that starts with the key
to fix (``key``, default ``model.file``): ``model.file.path: ...``, ``model.file.classes: ...``.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import ops

from .availability import is_hdf5
from .preprocessing import CaffePreprocess
from .registry import FILE_INPUTS, FILE_OUTPUTS

__all__ = [
    "INPUTS",
    "OUTPUTS",
    "LoadedModel",
    "LogProbabilities",
    "ModelFileError",
    "load_model_file",
    "model_format",
    "strip_softmax",
]

#: What the model's own input expects (see the module docstring); registered in .registry.
INPUTS = FILE_INPUTS
#: What the model returns; ``auto``: a final softmax or outputs that look like probabilities.
OUTPUTS = FILE_OUTPUTS
IMAGENET_CLASSES = 1000
#: Keras ``preprocess_input(mode="torch")``: the ImageNet RGB mean and std of [0, 1] pixels.
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
#: The floor of probabilities before the log (log: −27.6).
PROBABILITY_FLOOR = 1e-12
#: Probabilities: every output ≥ −this and every row sums to 1 within this, on the probe images.
PROBABILITY_TOLERANCE = 1e-3
_PROBE_IMAGES = 2


class ModelFileError(ValueError):
    """A model file or option the pipeline cannot use; one line that starts with the key to fix."""


@keras.saving.register_keras_serializable(package="advpipe")
class LogProbabilities(keras.layers.Layer):
    """``log(clip(p, 1e-12, 1))``: logits up to a per-image constant, from probabilities."""

    def call(self, p):
        return ops.log(ops.clip(p, PROBABILITY_FLOOR, 1.0))


@dataclass(frozen=True)
class LoadedModel:
    """A model read by :func:`load_model_file` and what the pipeline needs to know about it.

    ``model``: RGB [0, 1] NHWC in, logits out. ``classes[i]``: the ImageNet class of output
    ``i``. ``softmax_stripped``: the file's model ended in a softmax, removed (exact logits).
    ``from_probabilities``: the logits are ``log(clip(p, 1e-12, 1))`` of the file's
    probabilities, a possible source of gradient masking.
    """

    model: keras.Model
    classes: tuple[int, ...]
    format: str
    inputs: str
    softmax_stripped: bool
    from_probabilities: bool

    def describe(self) -> str:
        """One line for logs and reports."""
        size = self.model.input_shape[1]
        if self.from_probabilities:
            out = "log(clip(p, 1e-12, 1)) of its probabilities (possible gradient masking)"
        elif self.softmax_stripped:
            out = "logits (its final softmax removed)"
        else:
            out = "logits"
        return (
            f"{self.format} model: {size}x{size} RGB [0, 1] in ({self.inputs} input), "
            f"{len(self.classes)} classes, {out}"
        )


def load_model_file(
    path: str | Path,
    *,
    image_size: int | None = None,
    inputs: str = "unit",
    outputs: str = "auto",
    classes: Sequence[int] | None = None,
    endpoint: str | None = None,
    safe_mode: bool = True,
    key: str = "model.file",
    image_size_key: str | None = None,
) -> LoadedModel:
    """Load the model at ``path`` behind the wrapper that makes it a zoo model.

    ``image_size``: the side of the square images it will read; ``None``: the model's own
    (fixed) input size. ``inputs``/``outputs``: see :data:`INPUTS`, :data:`OUTPUTS`.
    ``classes``: the ImageNet index of each output (needed below 1,000 outputs, unless a
    sidecar gives them). ``endpoint``: the SavedModel function to call (``None``: ``serve``,
    else ``serving_default``). ``safe_mode=False`` lets a ``.keras`` file's Lambda layers
    run their stored Python code. ``key`` prefixes every error message; ``image_size_key``
    (default ``<key>.image_size``) names where ``image_size`` comes from (``data.image_size``).
    """
    if inputs not in INPUTS:
        raise ModelFileError(f"{key}.inputs: must be one of {list(INPUTS)}, got {inputs!r}")
    if outputs not in OUTPUTS:
        raise ModelFileError(f"{key}.outputs: must be one of {list(OUTPUTS)}, got {outputs!r}")
    path = Path(path)
    fmt = model_format(path, key=key)
    if fmt == "saved_model":
        core, shape, dtype = _read_saved_model(path, endpoint, key)
        stripped = None
    else:
        core, shape, dtype = _read_keras(path, safe_mode, key)
        stripped = strip_softmax(core)
    size = _image_size(shape, dtype, image_size, key, image_size_key or f"{key}.image_size")

    rgb = keras.Input((size, size, 3), name="rgb_0_1")
    x = _preprocessing(inputs)(rgb) if inputs != "unit" else rgb
    y = _single_output(stripped(x) if stripped is not None else core(x), key)
    known = _classes(classes, int(y.shape[-1]), path, key)
    if stripped is not None:
        if outputs == "logits":
            raise ModelFileError(
                f"{key}.outputs: the model ends in a softmax (probabilities), not logits: "
                "set it to 'auto' or 'probabilities'"
            )
        logits = y
        from_probabilities = False
    else:
        from_probabilities = _is_probabilities(keras.Model(rgb, y), outputs, key)
        logits = LogProbabilities(name="log_probabilities")(y) if from_probabilities else y
    model = keras.Model(rgb, logits, name="from_file")
    return LoadedModel(
        model=model,
        classes=known,
        format=fmt,
        inputs=inputs,
        softmax_stripped=stripped is not None,
        from_probabilities=from_probabilities,
    )


# --------------------------------------------------------------------------- reading
def model_format(path: Path, *, key: str = "model.file") -> str:
    """``keras``, ``h5`` or ``saved_model``, from what is at ``path``."""
    if path.is_dir():
        if not any((path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
            raise ModelFileError(
                f"{key}.path: '{path}' is a folder without saved_model.pb (a TensorFlow "
                "SavedModel folder, a .keras or a .h5 file is needed)"
            )
        return "saved_model"
    if not path.is_file():
        raise ModelFileError(f"{key}.path: no such file or folder '{path}'")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ModelFileError(f"{key}.path: '{path}' is not a .keras archive (not a zip file)")
        return "keras"
    if suffix in (".h5", ".hdf5"):
        if not is_hdf5(path):
            raise ModelFileError(f"{key}.path: '{path}' is not an HDF5 file")
        return "h5"
    raise ModelFileError(
        f"{key}.path: '{path}' is neither a .keras nor a .h5 file nor a SavedModel folder"
    )


def _read_keras(path: Path, safe_mode: bool, key: str):
    import advpipe.models.preprocessing  # noqa: F401  (registers the pipeline's own layers)

    try:
        model = keras.models.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as exc:  # Keras and h5py raise many types: all mean "cannot load"
        hint = (
            f" (set {key}.safe_mode to false only if you trust this file)"
            if "safe_mode" in str(exc)
            else ""
        )
        raise ModelFileError(f"{key}.path: cannot load '{path}': {_one_line(exc)}{hint}") from exc
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ModelFileError(f"{key}.path: '{path}' holds no Keras model with a known input")
    if len(model.inputs) != 1:
        raise ModelFileError(
            f"{key}.path: the model takes {len(model.inputs)} inputs; one image input is needed"
        )
    return model, tuple(model.inputs[0].shape), str(model.inputs[0].dtype)


def _read_saved_model(path: Path, endpoint: str | None, key: str):
    import tensorflow as tf

    try:
        saved = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises many types: all mean "cannot load"
        raise ModelFileError(f"{key}.path: cannot load '{path}': {_one_line(exc)}") from exc
    attributes = [n for n in ("serve",) if callable(getattr(saved, n, None))]
    available = attributes + [n for n in saved.signatures if n not in attributes]
    if endpoint is None:
        endpoint = next((n for n in ("serve", "serving_default") if n in available), None)
        if endpoint is None and len(available) == 1:
            endpoint = available[0]
    if endpoint not in available:
        raise ModelFileError(
            f"{key}.endpoint: the SavedModel '{path}' has no endpoint "
            f"{endpoint!r}; it has {available or 'none'}"
        )
    fn = getattr(saved, endpoint) if endpoint in attributes else saved.signatures[endpoint]
    signature = getattr(fn, "input_signature", None)
    if signature is None:
        concrete = fn if hasattr(fn, "structured_input_signature") else fn.concrete_functions[0]
        signature = concrete.structured_input_signature
    specs = [s for s in tf.nest.flatten(signature) if isinstance(s, tf.TensorSpec)]
    if len(specs) != 1:
        raise ModelFileError(
            f"{key}.endpoint: '{endpoint}' of '{path}' takes {len(specs)} tensors; "
            "one image input is needed"
        )
    layer = keras.layers.TFSMLayer(
        str(path), call_endpoint=endpoint, trainable=False, name="saved_model"
    )
    return layer, tuple(specs[0].shape), specs[0].dtype.name


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


# --------------------------------------------------------------------------- the wrapper
def _image_size(shape: tuple, dtype: str, image_size: int | None, key: str, size_key: str) -> int:
    """The side of the wrapper's input, checked against the model's NHWC RGB input."""
    if len(shape) != 4 or shape[-1] != 3:
        layout = " (channels first?)" if len(shape) == 4 and shape[1] == 3 else ""
        raise ModelFileError(
            f"{key}.path: the model reads tensors of shape {_shape(shape)}{layout}; "
            "NHWC RGB images (batch, height, width, 3) are needed"
        )
    if not dtype.startswith(("float", "bfloat")):
        raise ModelFileError(
            f"{key}.path: the model reads {dtype} tensors; a float input is needed (gradients)"
        )
    height, width = shape[1], shape[2]
    if height is not None and width is not None and height != width:
        raise ModelFileError(
            f"{size_key}: the model reads {height}x{width} images; square images are needed"
        )
    fixed = height if height is not None else width
    if image_size is None:
        if fixed is None:
            raise ModelFileError(f"{size_key}: the model reads images of any size: set the size")
        return int(fixed)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ModelFileError(f"{size_key}: must be an integer >= 1, got {image_size!r}")
    if fixed is not None and fixed != image_size:
        raise ModelFileError(
            f"{size_key}: the model reads {fixed}x{fixed} images, not {image_size}x{image_size}"
        )
    return image_size


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _preprocessing(inputs: str) -> keras.layers.Layer:
    """The layer from RGB [0, 1] to what the model's input expects."""
    if inputs == "caffe":
        return CaffePreprocess(name="caffe_preprocess")
    scale, offset = {
        "0_255": (255.0, 0.0),
        "tf": (2.0, -1.0),
        "lite": (255.0 / 128.0, -127.0 / 128.0),
        "torch": (
            [1.0 / s for s in TORCH_STD],
            [-m / s for m, s in zip(TORCH_MEAN, TORCH_STD)],
        ),
    }[inputs]
    return keras.layers.Rescaling(scale, offset=offset, name=f"{inputs}_preprocess")


def _single_output(y, key: str):
    """The one output tensor (a SavedModel signature returns a dict), of shape (batch, K)."""
    if isinstance(y, dict):
        y = list(y.values())
    if isinstance(y, (list, tuple)):
        if len(y) != 1:
            raise ModelFileError(
                f"{key}.path: the model has {len(y)} outputs; one output of class scores is needed"
            )
        (y,) = y
    if len(y.shape) != 2 or y.shape[-1] is None or y.shape[-1] < 2:
        raise ModelFileError(
            f"{key}.path: the model returns tensors of shape {_shape(tuple(y.shape))}; "
            "(batch, classes) scores over at least 2 classes are needed"
        )
    return y


def _is_probabilities(probe: keras.Model, outputs: str, key: str) -> bool:
    """Whether the outputs are probabilities (``outputs``, checked on a few random images)."""
    size = probe.input_shape[1]
    images = np.random.default_rng(0).uniform(0, 1, (_PROBE_IMAGES, size, size, 3))
    try:
        scores = ops.convert_to_numpy(probe(images.astype(np.float32), training=False))
    except Exception as exc:  # the model's own errors
        raise ModelFileError(
            f"{key}.path: the model fails on a test batch: {_one_line(exc)}"
        ) from exc
    if not np.isfinite(scores).all():
        raise ModelFileError(f"{key}.path: the model returns non-finite scores on a test batch")
    looks = bool(
        (scores >= -PROBABILITY_TOLERANCE).all()
        and np.allclose(scores.sum(axis=-1), 1.0, atol=PROBABILITY_TOLERANCE)
    )
    if outputs == "logits" and looks:
        raise ModelFileError(
            f"{key}.outputs: the outputs are non-negative and sum to 1 (probabilities), not "
            "logits: set it to 'auto' or 'probabilities'"
        )
    if outputs == "probabilities" and not looks:
        raise ModelFileError(
            f"{key}.outputs: the outputs are not probabilities (they do not all lie in "
            "[0, 1] and sum to 1): set it to 'auto' or 'logits'"
        )
    return looks


# --------------------------------------------------------------------------- the softmax
def strip_softmax(model: keras.Model) -> keras.Model | None:
    """``model`` up to the input of its final softmax (same layers and weights), or None.

    The softmax: a ``Softmax`` layer or ``keras.ops.softmax`` over the last axis, or a layer
    whose ``activation`` is softmax (rebuilt with a linear one), at the end of ``model`` or of
    a nested model at its end. None if ``model`` ends otherwise or is not a graph of layers.
    """
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1 or not getattr(model, "inputs", None):
        return None
    pre = _pre_softmax(outputs[0])
    return None if pre is None else keras.Model(model.inputs, pre, name=model.name)


def _pre_softmax(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    op, node_index = history[0], history[1]
    node = op._inbound_nodes[node_index]
    if len(node.input_tensors) != 1:
        return None
    (x,) = node.input_tensors
    if type(op).__name__ == "Softmax" and getattr(op, "axis", None) in (-1, len(x.shape) - 1):
        return x  # keras.layers.Softmax, keras.ops.softmax
    if isinstance(op, keras.Model):
        inner = strip_softmax(op)
        return None if inner is None else inner(x)
    activation = getattr(op, "activation", None)
    config = op.get_config() if hasattr(op, "get_config") else {}
    if getattr(activation, "__name__", None) != "softmax" or "activation" not in config:
        return None
    linear = type(op).from_config({**config, "activation": "linear"})
    logits = linear(x)
    linear.set_weights(op.get_weights())
    return logits


# --------------------------------------------------------------------------- the classes
def _classes(given: Sequence[int] | None, n: int, path: Path, key: str) -> tuple[int, ...]:
    """The ImageNet class of each of the ``n`` outputs: ``given``, the sidecar's, or all 1,000."""
    side = _sidecar_classes(path, key)
    if given is not None:
        given = _check_classes(given, n, "the list", key)
        if side is not None and side != given:
            raise ModelFileError(
                f"{key}.classes: {list(given)} differs from the classes {list(side)} in "
                f"'{_sidecar(path)}'"
            )
        return given
    if side is not None:
        return _check_classes(side, n, f"'{_sidecar(path)}'", key)
    if n == IMAGENET_CLASSES:
        return tuple(range(IMAGENET_CLASSES))
    raise ModelFileError(
        f"{key}.classes: the model has {n} outputs, not {IMAGENET_CLASSES}: list the "
        "ImageNet class index of each output"
    )


def _check_classes(classes: Sequence[int], n: int, source: str, key: str) -> tuple[int, ...]:
    values = list(classes)
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in values):
        raise ModelFileError(f"{key}.classes: {source} must list integers, got {values}")
    if len(values) != n:
        raise ModelFileError(
            f"{key}.classes: {source} has {len(values)} classes but the model has {n} outputs"
        )
    if not all(0 <= c < IMAGENET_CLASSES for c in values):
        raise ModelFileError(
            f"{key}.classes: {source} must hold ImageNet class indices in "
            f"[0, {IMAGENET_CLASSES - 1}], got {values}"
        )
    if len(set(values)) != len(values):
        raise ModelFileError(f"{key}.classes: {source} repeats a class: {values}")
    return tuple(values)


def _sidecar(path: Path) -> Path:
    return path.with_name(re.sub(r"\.(keras|h5|hdf5)$", "", path.name, flags=re.I) + ".json")


def _sidecar_classes(path: Path, key: str) -> tuple[int, ...] | None:
    """The ``"classes"`` of the pipeline's JSON sidecar beside ``path``, if there is one."""
    side = _sidecar(path)
    if not side.is_file():
        return None
    try:
        info = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # not the pipeline's sidecar (e.g. a Keras 2 architecture file)
    if not isinstance(info, dict) or "classes" not in info:
        return None
    if not isinstance(info["classes"], list):
        raise ModelFileError(f"{key}.classes: '{side}' has \"classes\" that is not a list")
    return tuple(info["classes"])
