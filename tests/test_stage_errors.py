"""Every user mistake ends a stage with ONE line `error: ...` naming the key or the file.

Each case runs a stage script as a subprocess in a scratch folder with its own
params.yaml and checks: exit status != 0, the key/file named on the last line of
stderr, no traceback, and none of TensorFlow's start-up noise.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # every test starts a stage script (TensorFlow) in a subprocess

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("oneDNN custom operations", "cuda drivers", "cuInit", "absl::InitializeLog")


def _params(**changes):
    p = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    for dotted, value in changes.items():
        node = p
        *parents, last = dotted.split("__")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return p


def _stage(tmp_path, args, params, env=None):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    full_env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    )
    full_env.pop("ADVPIPE_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / args[0]), *args[1:]],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc


def _assert_one_line_error(proc, *expected):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert [line for line in lines if line.startswith("error")] == [lines[-1]]
    for text in expected:
        assert text in lines[-1], lines[-1]
    for noise in NOISE:
        assert noise not in proc.stderr, proc.stderr


def test_non_hdf5_weights_path(tmp_path):
    (tmp_path / "weights.h5").write_text("this is not HDF5\n" * 100)
    proc = _stage(
        tmp_path, ["data.py"], _params(model__name="resnet50", model__weights_path="weights.h5")
    )
    _assert_one_line_error(proc, "model.weights_path", "'weights.h5' is not an HDF5 file")
    assert not (tmp_path / "data" / "attack").exists()  # stopped before the data work


def test_missing_weights_path(tmp_path):
    proc = _stage(
        tmp_path,
        ["baseline.py"],
        _params(model__name="vgg16", model__weights_path="nowhere/vgg.h5"),
    )
    _assert_one_line_error(proc, "model.weights_path", "'nowhere/vgg.h5' does not exist")


@pytest.mark.parametrize("model", ["efficientnet_lite0", "tiny"])
def test_weights_path_for_a_model_that_does_not_use_it(tmp_path, model):
    proc = _stage(tmp_path, ["data.py"], _params(model__name=model, model__weights_path="w.h5"))
    _assert_one_line_error(
        proc,
        "'model.weights_path' applies only to resnet50 and vgg16",
        f"model '{model}' does not use it",
    )


def test_keras_weights_neither_cached_nor_downloadable(tmp_path):
    """Offline, no file in $KERAS_HOME/models: the data stage stops before any data work."""
    refused = "http://127.0.0.1:9"  # nothing listens on the discard port: refused at once
    env = {
        "KERAS_HOME": str(tmp_path / "keras"),
        "https_proxy": refused,
        "HTTPS_PROXY": refused,
        "no_proxy": "",
        "NO_PROXY": "",
    }
    proc = _stage(tmp_path, ["data.py"], _params(model__name="resnet50"), env)
    _assert_one_line_error(
        proc,
        "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
        str(tmp_path / "keras" / "models"),
        "model.weights_path",
    )
    assert not (tmp_path / "data" / "attack").exists()


@pytest.mark.parametrize(
    "stage,changes,expected",
    [
        (["attack.py", "fgsm"], {"attacks__cw": {"epsilons": [0.1]}}, "unknown key 'attacks.cw'"),
        (["baseline.py"], {"sed": 0}, "unknown key 'sed' (did you mean 'seed'?)"),
        (
            ["attack.py", "rfgsm"],
            {"attacks__rfgsm__alpha_fraction": 1.0},
            "'attacks.rfgsm.alpha_fraction' must be < 1",
        ),
    ],
)
def test_bad_params(tmp_path, stage, changes, expected):
    _assert_one_line_error(_stage(tmp_path, stage, _params(**changes)), expected)


def test_invalid_yaml_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: [0\nmodel: {}\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "baseline.py")],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    _assert_one_line_error(proc, "params.yaml: not valid YAML")


def test_missing_attack_set_names_the_folder(tmp_path):
    proc = _stage(tmp_path, ["baseline.py"], _params(model__name="tiny"))
    _assert_one_line_error(proc, "data/attack")


def test_unknown_attack_argument(tmp_path):
    proc = _stage(tmp_path, ["attack.py", "cw"], _params())
    _assert_one_line_error(proc, "unknown attack 'cw'")
