"""The model zoo: [0, 1] RGB in, logits out, preprocessing inside."""

import numpy as np
import pytest

from advpipe.models.preprocessing import CaffePreprocess
from advpipe.models.zoo import WeightsUnavailableError, build_model


def test_tiny_model_shapes_and_logits():
    m = build_model("tiny", image_size=32, num_classes=10)
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    out = m(x).numpy()
    assert out.shape == (4, 10)
    np.testing.assert_allclose(build_model("tiny", image_size=32, num_classes=10)(x), out)


def test_caffe_preprocessing_matches_keras():
    import keras

    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    ours = CaffePreprocess()(x).numpy()
    theirs = keras.applications.resnet50.preprocess_input(x * 255.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_keras_applications_take_unit_images_and_return_logits(name):
    m = build_model(name, weights=False)
    assert m.input_shape == (None, 224, 224, 3)
    assert m.layers[1].name == "caffe_preprocess"
    out = m(np.full((1, 224, 224, 3), 0.5, np.float32)).numpy()
    assert out.shape == (1, 1000)
    # logits: no softmax at the end
    assert m.layers[-1].get_layer("predictions").get_config()["activation"] == "linear"


def test_missing_weights_give_a_clear_error(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.weights_path"):
        build_model("resnet50", weights_path=str(tmp_path / "none.h5"))

    import keras.src.applications.resnet as resnet_module

    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: network unreachable")

    monkeypatch.setattr(resnet_module.file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        build_model("resnet50")
    text = str(err.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels.h5" in text
    assert "model.weights_path" in text and "efficientnet_lite0" in text


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'alexnet'"):
        build_model("alexnet")
