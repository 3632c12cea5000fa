"""What every stage script shares: quiet TensorFlow, params, the model, the attack set, errors.

Conventions for stage scripts:

* end with ``common.run(main)`` (``common.run(main, arg)``): a user mistake -- a
  :class:`~advpipe.config.ParamsError`, a missing or unreadable file
  (``FileNotFoundError``), a bad value (``ValueError``), unavailable model weights --
  ends the stage with ONE line ``error: ...`` on stderr and exit status 1, no
  traceback. So raise those (naming the params key or the file) instead of printing;
  ``ADVPIPE_DEBUG=1`` shows the traceback.
* wall-clock timings go to ``timings/<stage>.json`` (:func:`write_timing`; for a
  ``foreach`` stage ``timings/<stage>_<item>.json``), declared in dvc.yaml as a plain
  ``outs`` with ``cache: false``, never in ``metrics/``: ``dvc metrics diff`` then shows
  only what moved scientifically.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# TensorFlow's C++ start-up messages (INFO level, and the cuInit error of a machine
# without GPU) are written before TF_CPP_MIN_LOG_LEVEL is read; they are filtered out
# of stderr while TensorFlow loads. Any other line, real warnings included, goes through.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
_START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on"
    r"|Could not find cuda drivers|cpu_feature_guard|To enable the following instructions"
    r"|failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered|TF-TRT Warning: Could not find TensorRT"
)


@contextlib.contextmanager
def _filtered_native_stderr(noise: re.Pattern = _START_UP_NOISE):
    """Capture file descriptor 2 (C++ logging too); re-emit the lines ``noise`` misses."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not noise.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def _import_tensorflow_quietly() -> None:
    with _filtered_native_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe logs here, once
    import absl.logging

    absl.logging.set_verbosity(absl.logging.WARNING)


_import_tensorflow_quietly()

from advpipe.config import ParamsError, get, load_params  # noqa: E402
from advpipe.models.availability import WeightsUnavailableError, check_weights  # noqa: E402

ATTACK_SET = "data/attack"
DEFENSE_SET = "data/defense"
USER_ERRORS = (ParamsError, WeightsUnavailableError, FileNotFoundError, ValueError)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (a missing file: its name included)."""
    text = str(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return " ".join(text.split()) or type(exc).__name__


def run(main, *args, training: bool = False, runtime: bool = True) -> None:
    """Run a stage's ``main``; a user mistake ends in one ``error: ...`` line, exit status 1.

    With ``runtime`` (every stage but the params check), ``main`` runs inside the scope of
    the strategy ``params.yaml``'s ``runtime`` group (and the environment) names, with its
    XLA setting: models built and attacks compiled there run on its devices.
    ``training``: the stage trains (``multi_worker`` applies).
    """
    try:
        if runtime:
            with runtime_scope(params(), training=training):
                main(*args)
        else:
            main(*args)
    except USER_ERRORS as exc:
        if os.environ.get("ADVPIPE_DEBUG"):
            raise
        sys.exit(f"error: {one_line(exc)}")
    except KeyboardInterrupt:
        sys.exit("error: interrupted")


@contextlib.contextmanager
def runtime_scope(p: dict, *, training: bool = False):
    """The ``runtime`` group applied: XLA on or off, then the strategy's scope."""
    from advpipe import runtime

    distribute, devices = runtime.from_environment(
        get(p, "runtime.distribute"), get(p, "runtime.devices")
    )
    runtime.set_jit_compile(get(p, "runtime.jit_compile"))
    if training:  # attacks and evaluation always compute in float32
        import keras

        keras.mixed_precision.set_global_policy(
            runtime.training_policy(get(p, "runtime.mixed_precision"))
        )
    strategy = runtime.make_strategy(distribute, devices, training=training)
    if strategy.num_replicas_in_sync > 1 or distribute != "auto":
        log(f"runtime: {distribute}, {strategy.num_replicas_in_sync} replica(s)")
    with strategy.scope():
        yield strategy


def params() -> dict:
    """``params.yaml``, validated (a problem raises :class:`ParamsError`)."""
    return load_params("params.yaml")


def check_model(p: dict, *, probe: bool = True) -> str:
    """Fail early (before any data work) if the model's weights cannot be had."""
    if get(p, "model.name") == "file":
        return file_model(p).describe()
    return check_weights(get(p, "model.name"), get(p, "model.weights_path"), probe=probe)


_FILE_MODEL: dict = {}


def file_model(p: dict):
    """The user's model of ``model.file`` (:class:`advpipe.models.from_file.LoadedModel`),
    loaded once per process."""
    from advpipe.models.from_file import load_model_file

    f = p["model"]["file"]
    key = (f["path"], f["inputs"], f["outputs"], str(f["classes"]), f["endpoint"])
    if key not in _FILE_MODEL:
        _FILE_MODEL[key] = load_model_file(
            f["path"],
            image_size=get(p, "data.image_size"),
            image_size_key="data.image_size",
            inputs=f["inputs"],
            outputs=f["outputs"],
            classes=f["classes"],
            endpoint=f["endpoint"],
            safe_mode=f["safe_mode"],
        )
        if _FILE_MODEL[key].from_probabilities:
            log(
                "warning: model.file outputs probabilities that could not be stripped: "
                "logits = log(clip(p)), a possible source of gradient masking"
            )
    return _FILE_MODEL[key]


def model(p: dict):
    """The attacked model named by ``model.name`` (with ``model.weights_path``, or
    ``model.file`` for the user's own model)."""
    from advpipe.models.zoo import build_model

    name = get(p, "model.name")
    log(f"loading model {name} ({check_model(p, probe=False)})")
    if name == "file":
        return file_model(p).model
    return build_model(
        name,
        weights_path=get(p, "model.weights_path"),
        image_size=get(p, "data.image_size"),
        seed=get(p, "seed"),
    )


def imagenet_model(p: dict, name: str, *, weights_path: str | None = None):
    """A model of the transfer matrix or the decision attack, reading the attack set's
    images: a zoo model (``blackbox.native_size``) or ``file`` (which must predict all
    1,000 ImageNet classes, as every other model of the comparison does)."""
    from advpipe.models.native_size import build_at_input_size

    if name == "file":
        loaded = file_model(p)
        if list(loaded.classes) != list(range(1000)):
            raise ValueError(
                f"model.file.classes: the black-box comparisons need the 1,000 ImageNet "
                f"classes; this model has {len(loaded.classes)} outputs"
            )
        return loaded.model
    return build_at_input_size(
        name,
        get(p, "data.image_size"),
        native=get(p, "blackbox.native_size"),
        weights_path=weights_path,
        seed=get(p, "seed"),
    )


def attack_set(p: dict | None = None):
    """uint8 images, int64 labels and the manifest of the attack set.

    With ``p`` and ``model.name: file`` whose model predicts a subset of the ImageNet
    classes, only the images of those classes are kept, labelled by output position.
    """
    from advpipe.data.images import read_image_set

    images, manifest = read_image_set(ATTACK_SET)
    labels = manifest["label"].to_numpy(dtype="int64")
    if p is not None and get(p, "model.name") == "file":
        classes = list(file_model(p).classes)
        if classes != list(range(1000)):
            import numpy as np

            position = {c: i for i, c in enumerate(classes)}
            keep = np.array([int(c) in position for c in labels], dtype=bool)
            if not keep.any():
                raise ValueError(
                    f"model.file.classes: no attack-set image is of the model's classes {classes}"
                )
            log(f"model.file: {int(keep.sum())} attack-set images of its {len(classes)} classes")
            images, manifest = images[keep], manifest[keep].reset_index(drop=True)
            labels = np.array([position[int(c)] for c in labels[keep]], dtype="int64")
    return images, labels, manifest


def defense_split(split: str, classes: list[int] | None = None):
    """uint8 images, class positions (int64), manifest and class list of one defense split."""
    from advpipe.defenses.dataset import defense_classes, load_split

    classes = classes or defense_classes(DEFENSE_SET)
    images, labels, manifest = load_split(DEFENSE_SET, split, classes)
    return images, labels, manifest, classes


def timing_path(stage: str) -> str:
    """``timings/<stage>.json``; ``attack@fgsm`` -> ``timings/attack_fgsm.json``."""
    return f"timings/{stage.replace('@', '_')}.json"


def write_timing(stage: str, timing: dict) -> str:
    """Write a stage's wall-clock figures where ``dvc metrics`` does not look."""
    from advpipe.reporting import write_json

    return str(write_json(timing_path(stage), timing))


def transfer(stage: str, p: dict, models: dict, images, labels, batch_size: int):
    """Run a transfer matrix as params.yaml configures it and write the stage's CSV
    (``plots/blackbox/<stage>.csv``), heatmaps (``plots/blackbox/<stage>/``) and timing;
    log the white-box <= transfer check. Returns the :class:`TransferResult`."""
    from advpipe.attacks.transfer import whitebox_flags
    from advpipe.blackbox_plots import transfer_heatmaps
    from advpipe.metrics import Timer
    from advpipe.reporting import write_rows_csv
    from wiring import transfer_from_params

    with Timer() as total:
        result = transfer_from_params(
            models, images, labels, p, batch_size=batch_size, progress=log
        )
    write_rows_csv(f"plots/blackbox/{stage}.csv", result.rows())
    transfer_heatmaps(
        result,
        f"plots/blackbox/{stage}",
        get(p, "blackbox.transfer.heatmap_epsilon"),
        get(p, "attacks.deepfool.overshoot"),
    )
    write_timing(
        stage,
        {"seconds": round(total.seconds, 2), "per_source": result.seconds, "n_images": len(images)},
    )
    flags = whitebox_flags(result)
    log("white-box <= transfer: " + ("passed" if not flags else "FLAGGED: " + "; ".join(flags)))
    return result
