"""Models in a shared pixel space: every model reads the same HxW [0, 1] images.

EfficientNet-Lite1 and Lite2 were trained at 240 and 260 pixels. To attack and
evaluate models of different native sizes on the *same* images (the transfer
matrix, the decision-based attack), :func:`build_at_input_size` builds a zoo model
at its native size and puts a bilinear resize from the shared size (the attack
set's ``data.image_size``, 224) in front of it, inside the model. Gradients flow
through the resize, so a perturbation crafted on one model is a perturbation of
the shared 224x224 image, and ε keeps its meaning in [0, 1] pixel space.

The image each model sees is the attack set's centre crop (short side 256, crop
224), upsampled bilinearly: the same field of view as the standard evaluation at
the native size (short side 274/297, crop 240/260), at the shared resolution.
"""

from __future__ import annotations

import keras

from .zoo import build_model


def native_input_size(name: str) -> int:
    """The input resolution zoo model ``name`` was trained at (224 for ResNet50/VGG16)."""
    if name.startswith("efficientnet_lite"):
        from .efficientnet_lite import NATIVE_INPUT_SIZES

        return NATIVE_INPUT_SIZES[name.removeprefix("efficientnet_")]
    return 224


def resized_input(model: keras.Model, input_size: int, name: str | None = None) -> keras.Model:
    """``model`` behind a bilinear resize from ``input_size`` to its own (square) input size."""
    native = model.input_shape[1]
    if native == input_size:
        return model
    inputs = keras.Input((input_size, input_size, 3), name="rgb_0_1")
    x = keras.layers.Resizing(native, native, interpolation="bilinear",
                              name=f"resize_{input_size}_to_{native}")(inputs)
    return keras.Model(inputs, model(x), name=name or model.name)


def build_at_input_size(name: str, input_size: int = 224, *, native: bool = True,
                        weights_path: str | None = None, seed: int = 0) -> keras.Model:
    """Zoo model ``name`` reading ``input_size`` images: at its native size behind a resize
    (``native=True``), or run directly at ``input_size`` (fully convolutional models)."""
    size = native_input_size(name) if native else input_size
    model = build_model(name, weights_path=weights_path, image_size=size, seed=seed)
    return resized_input(model, input_size, name=name)
