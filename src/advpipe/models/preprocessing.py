"""Preprocessing layers that live *inside* models.

Every model of the zoo takes RGB float images in [0, 1] and applies its own
preprocessing as its first layer, so attack budgets are always expressed in
[0, 1] pixel space whatever the network expects internally.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="advpipe")
class CaffePreprocess(keras.layers.Layer):
    """Keras "caffe" preprocessing (ResNet50, VGG16): x*255, RGB -> BGR, minus the ImageNet mean."""

    BGR_MEAN = (103.939, 116.779, 123.68)

    def call(self, x):
        bgr = ops.flip(x * 255.0, axis=-1)
        return bgr - ops.convert_to_tensor(self.BGR_MEAN, dtype=x.dtype)


@keras.saving.register_keras_serializable(package="advpipe")
class AffineScale(keras.layers.Layer):
    """``y = (x * scale + offset)`` per element; e.g. EfficientNet-Lite's (x*255 - 127)/128."""

    def __init__(self, scale: float, offset: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.offset = float(offset)

    def call(self, x):
        return x * self.scale + self.offset

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}
