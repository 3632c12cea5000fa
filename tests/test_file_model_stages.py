"""`model.name: file` in the stages: the attack set restricted to the model's classes, the
model loaded once, black-box comparisons refusing a model without the 1,000 classes, and
the params cross-check."""

import copy

import numpy as np
import pandas as pd
import pytest
import yaml

from advpipe.config import ParamsError, validate
from advpipe.data.images import write_image_set
from advpipe.defenses.model import build_defense_model, save_model

CLASSES = [96, 530, 950]


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    """A saved 3-class defense model (tiny trunk, 32x32) and a 6-image attack set whose
    labels are partly among its classes, in a temporary working directory."""
    import common

    model = build_defense_model("tiny", len(CLASSES), hidden_units=(8,), image_size=32, seed=3)
    path = save_model(model, tmp_path / "mine.keras", {"classes": CLASSES})
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = [96, 1, 950, 2, 530, 96]
    manifest = pd.DataFrame({"wnid": [f"n{c:08d}" for c in labels], "label": labels})
    write_image_set(tmp_path / "data/attack", images, manifest)
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(open(common.__file__.replace("stages/common.py", "params.yaml")))
    params["model"]["name"] = "file"
    params["model"]["file"]["path"] = str(path)
    params["data"]["image_size"] = 32
    common._FILE_MODEL.clear()
    return params, model, images, labels


def test_the_attack_set_keeps_the_models_classes_by_output_position(workspace):
    import common

    params, model, images, labels = workspace
    x, y, manifest = common.attack_set(params)
    keep = [i for i, c in enumerate(labels) if c in CLASSES]
    np.testing.assert_array_equal(x, images[keep])
    assert y.tolist() == [CLASSES.index(labels[i]) for i in keep] == [0, 2, 1, 0]
    assert manifest["label"].tolist() == [labels[i] for i in keep]
    # the stage's model is the file's, with the pipeline object's logits
    loaded = common.model(params)
    np.testing.assert_allclose(
        loaded(x[:2] / 255.0).numpy(), model(x[:2] / 255.0).numpy(), atol=1e-5
    )
    assert common.model(params) is loaded  # loaded once per process
    # without params (the black-box stages) every image and its ImageNet label
    assert common.attack_set()[1].tolist() == labels


def test_black_box_comparisons_need_the_1000_classes(workspace):
    import common

    params, *_ = workspace
    with pytest.raises(ValueError, match=r"^model.file.classes: the black-box comparisons"):
        common.imagenet_model(params, "file")


def test_a_file_model_needs_its_path(workspace):
    params, *_ = workspace
    bad = copy.deepcopy(params)
    bad["model"]["file"]["path"] = None
    with pytest.raises(ParamsError, match="'model.file.path' is null but a model is 'file'"):
        validate(bad)
    bad = copy.deepcopy(params)
    bad["model"]["name"] = "efficientnet_lite0"
    bad["model"]["file"]["path"] = None
    bad["blackbox"]["transfer"]["models"] = ["efficientnet_lite0", "file"]
    with pytest.raises(ParamsError, match="model.file.path"):
        validate(bad)
    bad["model"]["file"]["path"] = "x.keras"
    validate(bad)  # a path: valid (the file itself is checked when it is loaded)
