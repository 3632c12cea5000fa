"""The user's own model from a file (.keras, .h5, SavedModel) wrapped as a zoo model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advpipe.defenses.model import build_defense_model, load_model, save_model
from advpipe.models.from_file import (
    LogProbabilities,
    ModelFileError,
    load_model_file,
    strip_softmax,
)

CLASSES = [96, 530, 950]


@pytest.fixture(scope="module")
def images():
    x = np.random.default_rng(1).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    x[0] = 0.0
    x[1] = 1.0
    return x


@pytest.fixture(scope="module")
def defense(tmp_path_factory):
    """A defense model of this pipeline (tiny trunk, 32x32, 3 classes) saved as the
    pipeline saves it: ``clean.keras`` + ``clean.json``."""
    model = build_defense_model("tiny", len(CLASSES), hidden_units=(8,), image_size=32, seed=3)
    path = save_model(
        model, tmp_path_factory.mktemp("defense") / "clean.keras", {"classes": CLASSES}
    )
    return model, path


def _logits(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _softmax(z):
    return keras.ops.convert_to_numpy(keras.ops.softmax(z))


def _has(model, cls):
    return any(isinstance(layer, cls) for layer in model.layers)


def _error(excinfo, key):
    text = str(excinfo.value)
    assert "\n" not in text
    assert text.startswith(f"{key}: "), text
    return text


def _classifier(softmax: bool, *, size=32, classes=3, seed=0):
    """A small CNN reading its input as is (no preprocessing), optionally ending in softmax."""
    init = keras.initializers.GlorotUniform(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu", kernel_initializer=init)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    bias = keras.initializers.RandomNormal(0, 0.5, seed=seed + 1)
    out = keras.layers.Dense(
        classes,
        activation="softmax" if softmax else None,
        kernel_initializer=init,
        bias_initializer=bias,
        name="predictions",
    )(x)
    return keras.Model(inputs, out, name="classifier")


# --------------------------------------------------------------------------- the pipeline's model
def test_a_saved_defense_model_gives_the_pipelines_logits(defense, images):
    model, path = defense
    loaded = load_model_file(path, image_size=32)
    assert loaded.classes == tuple(CLASSES)  # from the sidecar clean.json
    assert loaded.format == "keras"
    assert not loaded.softmax_stripped and not loaded.from_probabilities
    assert loaded.model.input_shape == (None, 32, 32, 3)
    ours = _logits(loaded.model, images)
    np.testing.assert_allclose(ours, _logits(model, images), atol=1e-5)
    np.testing.assert_allclose(ours, _logits(load_model(path), images), atol=1e-5)
    assert "3 classes, logits" in loaded.describe()


def test_h5_gives_the_same_logits(defense, images, tmp_path):
    model, _ = defense
    path = tmp_path / "clean.h5"
    model.save(path)
    loaded = load_model_file(path, classes=CLASSES)  # image_size: the model's own
    assert loaded.format == "h5" and loaded.model.input_shape == (None, 32, 32, 3)
    np.testing.assert_allclose(_logits(loaded.model, images), _logits(model, images), atol=1e-5)


def test_saved_model_folder_gives_the_same_logits_and_gradients(defense, images, tmp_path):
    model, _ = defense
    folder = tmp_path / "clean_export"
    model.export(folder, verbose=False)
    loaded = load_model_file(folder, image_size=32, classes=CLASSES)
    assert loaded.format == "saved_model" and not loaded.from_probabilities
    np.testing.assert_allclose(_logits(loaded.model, images), _logits(model, images), atol=1e-5)

    x = tf.constant(images)

    def input_gradient(m):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(m(x, training=False)[:, 0])
        return tape.gradient(loss, x).numpy()

    ours = input_gradient(loaded.model)
    assert np.abs(ours).max() > 0
    np.testing.assert_allclose(ours, input_gradient(model), atol=1e-5)


def test_saved_model_endpoint_is_chosen_or_named(defense, images, tmp_path):
    model, _ = defense
    folder = tmp_path / "export"
    model.export(folder, verbose=False)
    by_signature = load_model_file(folder, classes=CLASSES, endpoint="serving_default")
    np.testing.assert_allclose(
        _logits(by_signature.model, images), _logits(model, images), atol=1e-5
    )
    with pytest.raises(ModelFileError) as err:
        load_model_file(folder, classes=CLASSES, endpoint="predict")
    assert "'serve'" in _error(err, "model.file.endpoint")


# --------------------------------------------------------------------------- probabilities
def test_a_final_softmax_is_stripped_to_the_exact_logits(images, tmp_path):
    logits_model = _classifier(False)
    probs_model = _classifier(True)  # same seeds: same weights
    path = tmp_path / "probs.keras"
    probs_model.save(path)
    loaded = load_model_file(path, classes=CLASSES)
    assert loaded.softmax_stripped and not loaded.from_probabilities
    assert not _has(loaded.model, LogProbabilities)
    ours = _logits(loaded.model, images)
    np.testing.assert_allclose(ours, _logits(logits_model, images), atol=1e-5)  # not log p
    probs = _logits(probs_model, images)
    np.testing.assert_allclose(_softmax(ours), probs, atol=1e-6)
    np.testing.assert_array_equal(ours.argmax(-1), probs.argmax(-1))


def _activation_model():
    base = _classifier(False)
    x = keras.layers.Activation("softmax")(base.output)
    return keras.Model(base.input, x)


def _nested_model():
    """As zoo.build_model wraps a Keras application: preprocessing, then the whole network."""
    inputs = keras.Input((32, 32, 3))
    return keras.Model(inputs, _classifier(True)(keras.layers.Rescaling(2.0, -1.0)(inputs)))


def _sequential_model():
    return keras.Sequential([keras.Input((32, 32, 3)), *_classifier(True).layers[1:]])


def _ops_softmax_model():
    base = _classifier(False)
    return keras.Model(base.input, keras.ops.softmax(base.output))


@pytest.mark.parametrize(
    "build", [_activation_model, _nested_model, _sequential_model, _ops_softmax_model]
)
def test_softmax_in_other_places_is_stripped(build, images, tmp_path):
    original = build()
    path = tmp_path / "m.keras"
    original.save(path)
    loaded = load_model_file(path, classes=CLASSES)
    assert loaded.softmax_stripped and not loaded.from_probabilities
    ours = _logits(loaded.model, images)
    assert not np.allclose(np.log(np.exp(ours).sum(-1)), 0.0, atol=1e-3)  # not log-probabilities
    np.testing.assert_allclose(_softmax(ours), _logits(original, images), atol=1e-6)


@pytest.mark.slow
def test_a_keras_application_with_its_softmax_gives_its_logits(tmp_path):
    """MobileNetV2 as Keras builds it (softmax classifier, "tf" preprocessing), ~4 s."""
    kwargs = dict(weights=None, input_shape=(96, 96, 3), alpha=0.35)
    app = keras.applications.MobileNetV2(**kwargs)
    app.save(tmp_path / "mobilenet_v2.keras")
    loaded = load_model_file(tmp_path / "mobilenet_v2.keras", inputs="tf")
    assert loaded.softmax_stripped and loaded.classes == tuple(range(1000))
    linear = keras.applications.MobileNetV2(**kwargs, classifier_activation=None)
    linear.set_weights(app.get_weights())
    x = np.random.default_rng(0).uniform(0, 1, (2, 96, 96, 3)).astype(np.float32)
    by_hand = _logits(linear, keras.applications.mobilenet_v2.preprocess_input(x * 255.0))
    np.testing.assert_allclose(_logits(loaded.model, x), by_hand, rtol=1e-5, atol=1e-9)


def test_strip_softmax_leaves_logit_models_alone():
    assert strip_softmax(_classifier(False)) is None
    stripped = strip_softmax(_classifier(True))
    assert stripped.get_layer("predictions").get_config()["activation"] == "linear"


def test_probabilities_that_cannot_be_stripped_are_log_wrapped_and_flagged(images, tmp_path):
    probs_model = _classifier(True)
    folder = tmp_path / "probs_export"
    probs_model.export(folder, verbose=False)  # a SavedModel: no layer graph to cut
    loaded = load_model_file(folder, classes=CLASSES)
    assert loaded.from_probabilities and not loaded.softmax_stripped
    assert _has(loaded.model, LogProbabilities)
    assert "possible gradient masking" in loaded.describe()
    ours = _logits(loaded.model, images)
    probs = _logits(probs_model, images)
    np.testing.assert_allclose(ours, np.log(probs), atol=1e-5)
    np.testing.assert_allclose(_softmax(ours), probs, atol=1e-6)
    np.testing.assert_array_equal(ours.argmax(-1), probs.argmax(-1))


def test_outputs_option_is_checked(images, tmp_path):
    probs, logits = tmp_path / "probs.keras", tmp_path / "logits.keras"
    _classifier(True).save(probs)
    _classifier(False).save(logits)
    with pytest.raises(ModelFileError) as err:
        load_model_file(probs, classes=CLASSES, outputs="logits")
    assert "softmax" in _error(err, "model.file.outputs")
    with pytest.raises(ModelFileError) as err:
        load_model_file(logits, classes=CLASSES, outputs="probabilities")
    assert "not probabilities" in _error(err, "model.file.outputs")
    assert load_model_file(probs, classes=CLASSES, outputs="probabilities").softmax_stripped
    as_logits = load_model_file(logits, classes=CLASSES, outputs="logits")
    assert not as_logits.softmax_stripped and not as_logits.from_probabilities


# --------------------------------------------------------------------------- preprocessing
REFERENCES = {
    "unit": lambda x: x,
    "0_255": lambda x: x * 255.0,
    "caffe": lambda x: keras.applications.imagenet_utils.preprocess_input(x * 255.0, mode="caffe"),
    "torch": lambda x: keras.applications.imagenet_utils.preprocess_input(x * 255.0, mode="torch"),
    "tf": lambda x: keras.applications.imagenet_utils.preprocess_input(x * 255.0, mode="tf"),
    "lite": lambda x: (x * 255.0 - 127.0) / 128.0,
}


@pytest.mark.parametrize("inputs", list(REFERENCES))
def test_inputs_option_matches_preprocessing_by_hand(inputs, images, tmp_path):
    raw = _classifier(False)  # reads whatever it is given: here the preprocessed images
    path = tmp_path / "raw.keras"
    raw.save(path)
    loaded = load_model_file(path, classes=CLASSES, inputs=inputs)
    by_hand = _logits(raw, REFERENCES[inputs](images.copy()).astype(np.float32))
    ours = _logits(loaded.model, images)
    np.testing.assert_allclose(ours, by_hand, rtol=1e-5, atol=1e-4)
    if inputs != "unit":  # the option changes what the model sees
        assert not np.allclose(ours, _logits(raw, images), atol=1e-3)


def test_a_fully_convolutional_model_takes_the_size_given(images, tmp_path):
    inputs = keras.Input((None, None, 3))
    base = _classifier(False)
    path = tmp_path / "any_size.keras"
    keras.Model(inputs, base(inputs)).save(path)
    loaded = load_model_file(path, image_size=32, classes=CLASSES)
    assert loaded.model.input_shape == (None, 32, 32, 3)
    np.testing.assert_allclose(_logits(loaded.model, images), _logits(base, images), atol=1e-5)
    with pytest.raises(ModelFileError) as err:
        load_model_file(path, classes=CLASSES)
    _error(err, "model.file.image_size")


# --------------------------------------------------------------------------- errors
def test_wrong_path(tmp_path):
    with pytest.raises(ModelFileError) as err:
        load_model_file(tmp_path / "missing.keras", image_size=32)
    assert "missing.keras" in _error(err, "model.file.path")
    (tmp_path / "model.onnx").write_bytes(b"\0")
    with pytest.raises(ModelFileError) as err:
        load_model_file(tmp_path / "model.onnx")
    _error(err, "model.file.path")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError) as err:
        load_model_file(tmp_path / "broken.keras")
    _error(err, "model.file.path")
    with pytest.raises(ModelFileError) as err:
        load_model_file(tmp_path)  # a folder that is no SavedModel
    _error(err, "model.file.path")


def test_mismatched_input_shape(defense):
    _, path = defense
    with pytest.raises(ModelFileError) as err:
        load_model_file(path, image_size=64)
    assert "32x32" in _error(err, "model.file.image_size")
    with pytest.raises(ModelFileError) as err:  # where the size comes from, when it is not ours
        load_model_file(path, image_size=64, image_size_key="data.image_size")
    assert "not 64x64" in _error(err, "data.image_size")


def test_mismatched_class_list(defense, tmp_path):
    model, path = defense
    with pytest.raises(ModelFileError) as err:
        load_model_file(path, image_size=32, classes=[1, 2])
    assert "3 outputs" in _error(err, "model.file.classes")
    with pytest.raises(ModelFileError) as err:  # disagrees with the sidecar
        load_model_file(path, image_size=32, classes=[1, 2, 3])
    assert "clean.json" in _error(err, "model.file.classes")
    no_sidecar = tmp_path / "alone.keras"
    model.save(no_sidecar)
    with pytest.raises(ModelFileError) as err:  # fewer than 1,000 outputs and no list
        load_model_file(no_sidecar)
    _error(err, "model.file.classes")
    with pytest.raises(ModelFileError) as err:
        load_model_file(no_sidecar, classes=[1, 2, 1000])
    _error(err, "model.file.classes")
    assert load_model_file(no_sidecar, classes=[5, 1, 3]).classes == (5, 1, 3)


def test_errors_name_the_key_given(tmp_path):
    with pytest.raises(ModelFileError) as err:
        load_model_file(tmp_path / "missing.keras", key="defense.model.file")
    _error(err, "defense.model.file.path")
    with pytest.raises(ModelFileError) as err:
        load_model_file(tmp_path / "missing.keras", inputs="bgr")
    _error(err, "model.file.inputs")
