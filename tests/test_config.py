import copy

import pytest
import yaml

from advpipe.config import ParamsError, load_params, resolve_classes, validate


@pytest.fixture()
def params():
    return load_params("params.yaml")


def _set(p, dotted, value):
    node = p
    *parents, last = dotted.split(".")
    for k in parents:
        node = node[k]
    node[last] = value
    return p


def test_repository_params_are_valid(params):
    validate(params)
    assert params["model"]["name"] == "efficientnet_lite0"
    assert params["data"]["source"] == "samples"


@pytest.mark.parametrize("key,value,message", [
    ("data.source", "url", "'data.source' must be one of ['samples', 'urls', 'folder']"),
    ("model.name", "resnet", "'model.name' must be one of"),
    ("attacks.fgsm.epsilons", [0.1, 2.0], "'attacks.fgsm.epsilons' must hold numbers in [0, 1]"),
    ("attacks.fgsm.epsilons", [], "'attacks.fgsm.epsilons' must be a non-empty list"),
    ("attacks.fgm.norm", "l1", "'attacks.fgm.norm' must be one of ['l2', 'linf_equivalent']"),
    ("attacks.rfgsm.alpha_fraction", 0.0, "'attacks.rfgsm.alpha_fraction' must be > 0"),
    ("attacks.labels", True, "'attacks.labels' must be one of ['ground_truth', 'predicted']"),
    ("data.attack_set.classes", [1, 1000], "'data.attack_set.classes' must hold integers in [0, 999]"),
    ("data.attack_set.classes", {"first": 0}, "'data.attack_set.classes' must be >= 1"),
    ("data.defense_set.split", {"train": 1, "val": 1}, "'data.defense_set.split' must be a mapping"),
    ("data.urls.workers", 0, "'data.urls.workers' must be >= 1"),
    ("model.batch_size", "32", "'model.batch_size' must be an integer"),
])
def test_bad_values_name_the_key(params, key, value, message):
    bad = _set(copy.deepcopy(params), key, value)
    with pytest.raises(ParamsError) as err:
        validate(bad)
    assert message in str(err.value)


def test_missing_key_is_named(params):
    bad = copy.deepcopy(params)
    del bad["attacks"]["deepfool"]["overshoot"]
    with pytest.raises(ParamsError, match="missing key 'attacks.deepfool.overshoot'"):
        validate(bad)


def test_every_problem_is_listed(params):
    bad = _set(_set(copy.deepcopy(params), "seed", -1), "data.source", "x")
    with pytest.raises(ParamsError) as err:
        validate(bad)
    assert "'seed'" in str(err.value) and "'data.source'" in str(err.value)


def test_load_params_errors(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(bad)


def test_resolve_classes():
    assert resolve_classes({"first": 3}) == [0, 1, 2]
    assert resolve_classes([96, 530, 950]) == [96, 530, 950]
