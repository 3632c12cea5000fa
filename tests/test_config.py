import copy

import pytest
import yaml

from advpipe.config import ParamsError, load_params, resolve_classes, set_classes, validate


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
    assert params["data"]["attack_set"]["source"] == "samples"
    assert params["data"]["defense_set"]["source"] == "samples"
    assert params["data"]["crop_ratio"] == 0.875


@pytest.mark.parametrize(
    "key,value,message",
    [
        (
            "data.attack_set.source",
            "url",
            "'data.attack_set.source' must be one of ['samples', 'urls', 'folder', 'imagenette']",
        ),
        ("data.defense_set.source", None, "'data.defense_set.source' must be one of"),
        ("data.crop_ratio", 0.0, "'data.crop_ratio' must be > 0"),
        ("data.crop_ratio", 1.5, "'data.crop_ratio' must be <= 1"),
        (
            "data.folder.skip_unreadable_classes",
            "yes",
            "'data.folder.skip_unreadable_classes' must be true or false",
        ),
        ("data.imagenette.archive", "imagenette-160", "'data.imagenette.archive' must be one of"),
        ("data.imagenette.url", "ftp://x/y.tgz", "'data.imagenette.url' must be an http(s) URL"),
        ("data.imagenette.sha256", "abc", "'data.imagenette.sha256' must be a sha256 digest"),
        ("data.imagenette.cache_dir", "", "'data.imagenette.cache_dir' must be a non-empty string"),
        ("model.name", "resnet", "'model.name' must be one of"),
        (
            "attacks.fgsm.epsilons",
            [0.1, 2.0],
            "'attacks.fgsm.epsilons' must hold numbers in [0, 1]",
        ),
        ("attacks.fgsm.epsilons", [], "'attacks.fgsm.epsilons' must be a non-empty list"),
        ("attacks.fgm.norm", "l1", "'attacks.fgm.norm' must be one of ['l2', 'linf_equivalent']"),
        ("attacks.rfgsm.alpha_fraction", 0.0, "'attacks.rfgsm.alpha_fraction' must be > 0"),
        ("attacks.rfgsm.alpha_fraction", 1.0, "'attacks.rfgsm.alpha_fraction' must be < 1"),
        (
            "report.figure.images",
            [0, "3"],
            "'report.figure.images' must be a list of integers or null",
        ),
        ("report.figure.n_images", 0, "'report.figure.n_images' must be >= 1"),
        ("attacks.labels", True, "'attacks.labels' must be one of ['ground_truth', 'predicted']"),
        (
            "data.attack_set.indices",
            [1, 1000],
            "'data.attack_set.indices' must hold integers in [0, 999]",
        ),
        ("data.attack_set.indices", [], "'data.attack_set.indices' must be a non-empty list"),
        (
            "data.attack_set.indices",
            {"first": 3},
            "'data.attack_set.indices' must be a list of integers",
        ),
        ("data.attack_set.first", 0, "'data.attack_set.first' must be >= 1"),
        ("data.defense_set.first", [1], "'data.defense_set.first' must be an integer"),
        (
            "data.defense_set.split",
            {"train": 1, "val": 1},
            "'data.defense_set.split' must be a mapping",
        ),
        ("data.urls.workers", 0, "'data.urls.workers' must be >= 1"),
        ("model.batch_size", "32", "'model.batch_size' must be an integer"),
    ],
)
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
    bad = _set(_set(copy.deepcopy(params), "seed", -1), "data.attack_set.source", "x")
    with pytest.raises(ParamsError) as err:
        validate(bad)
    assert "'seed'" in str(err.value) and "'data.attack_set.source'" in str(err.value)


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


def test_problems_are_reported_on_one_line(params):
    bad = _set(_set(copy.deepcopy(params), "seed", -1), "data.source", "x")
    bad["sed"] = 0
    with pytest.raises(ParamsError, match="'seed' must be >= 0") as err:
        validate(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "path,value,message",
    [
        (
            ("attacks", "cw"),
            {"epsilons": [0.1]},
            "unknown key 'attacks.cw' ('attacks' takes: autoattack, deepfool, fgm, fgsm, labels, pgd, rfgsm, step_ll)",
        ),
        (
            ("attacks", "fgsm", "norm"),
            "l2",
            "unknown key 'attacks.fgsm.norm' (did you mean 'attacks.fgm.norm'?)",
        ),
        (("sed",), 1, "unknown key 'sed' (did you mean 'seed'?)"),
        (
            ("model", "weight_path"),
            "w.h5",
            "unknown key 'model.weight_path' (did you mean 'model.weights_path'?)",
        ),
        (
            ("report", "figure", "epsilon"),
            [0.1],
            "unknown key 'report.figure.epsilon' (did you mean 'report.figure.epsilons'?)",
        ),
    ],
)
def test_unknown_keys_are_rejected_with_a_hint(params, path, value, message):
    bad = copy.deepcopy(params)
    node = bad
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(ParamsError) as err:
        validate(bad)
    assert message in str(err.value)


def test_a_group_must_be_a_mapping(params):
    bad = _set(copy.deepcopy(params), "attacks.fgsm", [0.1])
    with pytest.raises(ParamsError, match=r"'attacks\.fgsm' must be a mapping \(got \[0\.1\]\)"):
        validate(bad)


def test_a_leaf_rule_checks_its_whole_mapping(params):
    """split's children are the rule's business: the unknown-key walk does not enter it."""
    bad = _set(
        copy.deepcopy(params),
        "data.defense_set.split",
        {"train": 3, "val": 1, "test": 1, "extra": 1},
    )
    with pytest.raises(ParamsError) as err:
        validate(bad)
    assert "'data.defense_set.split' must be a mapping with exactly" in str(err.value)
    assert "unknown key" not in str(err.value)


@pytest.mark.parametrize("model", ["efficientnet_lite0", "efficientnet_lite2", "tiny"])
def test_weights_path_for_a_model_that_does_not_use_it(params, model):
    bad = _set(_set(copy.deepcopy(params), "model.name", model), "model.weights_path", "w.h5")
    with pytest.raises(
        ParamsError,
        match=rf"'model.weights_path' applies only to resnet50 and "
        rf"vgg16 .*model '{model}' does not use it",
    ):
        validate(bad)
    ok = _set(_set(copy.deepcopy(params), "model.name", "resnet50"), "model.weights_path", "w.h5")
    validate(ok)


def test_keras_models_need_image_size_224(params):
    bad = _set(_set(copy.deepcopy(params), "model.name", "vgg16"), "data.image_size", 256)
    with pytest.raises(ParamsError, match="'data.image_size' must be 224 for model 'vgg16'"):
        validate(bad)


def test_figure_images_may_be_null(params):
    validate(_set(copy.deepcopy(params), "report.figure.images", None))
    validate(_set(copy.deepcopy(params), "report.figure.images", [0, 3]))


def test_resolve_classes():
    assert resolve_classes(3, None) == [0, 1, 2]
    assert resolve_classes(None, [96, 530, 950]) == [96, 530, 950]
    assert resolve_classes(50, [1, 2]) == [1, 2]  # indices win (a -S override of indices alone)
    with pytest.raises(ParamsError):
        resolve_classes(None, None)


def test_class_selection_is_first_or_indices(params):
    assert set_classes(params, "attack_set") == list(range(50))
    assert set_classes(params, "defense_set") == [96, 530, 950]
    # `dvc exp run -S data.attack_set.indices=[1,2]`: only indices changes, and it is used
    p = _set(copy.deepcopy(params), "data.attack_set.indices", [1, 2])
    validate(p)
    assert set_classes(p, "attack_set") == [1, 2]
    p = _set(copy.deepcopy(params), "data.defense_set.first", 3)
    assert set_classes(_set(p, "data.defense_set.indices", None), "defense_set") == [0, 1, 2]
    bad = _set(copy.deepcopy(params), "data.defense_set.indices", None)
    with pytest.raises(ParamsError) as err:
        validate(bad)
    assert "'data.defense_set.first' and 'data.defense_set.indices' are both null" in str(err.value)


def test_old_data_layout_is_reported(params):
    old = copy.deepcopy(params)
    del old["data"]["attack_set"]["source"]
    with pytest.raises(ParamsError, match="missing key 'data.attack_set.source'"):
        validate(old)


def test_dvc_set_param_override_of_indices(tmp_path):
    """`dvc exp run -S data.attack_set.indices=[1,2]` rewrites params.yaml to a valid file."""
    hydra = pytest.importorskip("dvc.utils.hydra")
    target = tmp_path / "params.yaml"
    target.write_text(open("params.yaml").read())
    hydra.apply_overrides(
        str(target),
        [
            "data.attack_set.indices=[1,2]",
            "data.defense_set.indices=[0,482,574]",
            "data.defense_set.source=imagenette",
        ],
    )
    p = load_params(target)
    assert set_classes(p, "attack_set") == [1, 2]
    assert set_classes(p, "defense_set") == [0, 482, 574]
    assert p["data"]["defense_set"]["source"] == "imagenette"
