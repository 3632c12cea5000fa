"""Where and how the compiled functions run: the ``tf.distribute`` strategy and XLA.

The pipeline's numbers do not depend on where they are computed, so the choice of
devices is a runtime matter (``params.yaml``'s ``runtime`` group, or the environment
for one machine-specific run; ``stages/common.py`` turns them into the values here):

* ``distribute``: ``auto`` (``MirroredStrategy`` over the visible GPUs when there is
  more than one, else TensorFlow's default strategy on one device), ``one_device``,
  ``mirrored`` (one machine, every listed or visible device; Keras' and TensorFlow's
  synchronous data parallelism) or ``multi_worker`` (``MultiWorkerMirroredStrategy``,
  the cluster taken from ``TF_CONFIG``; for training; attacks and evaluation then run
  mirrored over the worker's own devices, see :func:`make_strategy`);
* ``devices``: an optional list of device names (``/gpu:0``, ``GPU:1``, ``/cpu:0``);
* ``jit_compile``: compile the attack and training functions with XLA
  (:func:`compiled`); off by default;
* ``mixed_precision``: train in ``mixed_bfloat16`` on a CPU with AVX512_BF16, or
  ``mixed_float16`` on a GPU (:func:`training_policy`); the saved model is float32 and
  attacks and evaluation always run in float32 (:func:`require_float32`).

Attacks and evaluation run their per-image compiled functions on per-replica shards
of each batch (:mod:`advpipe.sharding`); training splits each global batch between the
replicas (:class:`advpipe.defenses.loop.Trainer`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
# a machine-specific run overrides params.yaml without editing it (and without
# re-running anything: neither setting is a stage dependency)
ENVIRONMENT = {"distribute": "ADVPIPE_DISTRIBUTE", "devices": "ADVPIPE_DEVICES"}

_JIT = {"on": False}


# ------------------------------------------------------------------ settings
def from_environment(distribute: str, devices: Sequence[str] | None, environ=None):
    """``(distribute, devices)`` with ``ADVPIPE_DISTRIBUTE`` / ``ADVPIPE_DEVICES``
    (comma-separated) taking precedence when set; a bad value raises ``ValueError``
    naming the variable."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENVIRONMENT["distribute"], "").strip()
    if value:
        if value not in STRATEGIES:
            raise ValueError(
                f"{ENVIRONMENT['distribute']}={value!r}: must be one of {list(STRATEGIES)}"
            )
        distribute = value
    listed = environ.get(ENVIRONMENT["devices"], "").strip()
    if listed:
        devices = [d.strip() for d in listed.split(",") if d.strip()]
    return distribute, (list(devices) if devices else None)


def set_jit_compile(on: bool) -> None:
    """Compile every function built by :func:`compiled` from now on with XLA."""
    _JIT["on"] = bool(on)


def jit_compile() -> bool:
    return _JIT["on"]


def compiled(fn=None, *, input_signature=None, reduce_retracing: bool = False, xla=True):
    """``tf.function`` with the runtime's XLA setting: the one way the library compiles.

    With ``jit_compile`` off it is exactly ``tf.function`` (TensorFlow's default
    graph compilation); on, ``jit_compile=True`` (XLA; it may change float results in
    the last bits, see docs/scaling.md for what it does to the metrics). ``xla=False``:
    a function XLA cannot compile (DeepFool's loop gathers a shrinking set of images).
    """
    options = {"input_signature": input_signature, "reduce_retracing": reduce_retracing}
    if _JIT["on"] and xla:
        options["jit_compile"] = True
    if fn is None:
        return lambda f: tf.function(f, **options)
    return tf.function(fn, **options)


# ------------------------------------------------------------------ devices
def _device_name(name: str, key: str) -> str:
    try:
        spec = tf.DeviceSpec.from_string(name if name.startswith("/") else f"/{name}")
    except ValueError as exc:
        raise ValueError(f"{key}: {name!r} is not a device name ({exc})") from None
    if spec.device_type is None:
        raise ValueError(f"{key}: {name!r} is not a device name (e.g. /gpu:0, /cpu:0)")
    return f"/{spec.device_type.lower()}:{spec.device_index or 0}"


def local_devices() -> list[str]:
    """The logical devices of this process, as ``/cpu:0``, ``/gpu:0``, ..."""
    return [
        _device_name(d.name.split("device:")[-1], "device")
        for d in tf.config.list_logical_devices()
    ]


def check_devices(devices: Sequence[str], key: str = "runtime.devices") -> list[str]:
    """``devices`` normalised; one that this machine does not have raises ``ValueError``."""
    have = local_devices()
    names = [_device_name(str(d), key) for d in devices]
    for name in names:
        if name not in have:
            raise ValueError(f"{key}: {name} does not exist on this machine (it has {have})")
    if len(set(names)) != len(names):
        raise ValueError(f"{key}: a device is listed twice ({names})")
    return names


def cluster_spec(environ=None) -> dict:
    """``TF_CONFIG`` parsed and checked (a cluster and this process's task)."""
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        raise ValueError(
            "runtime.distribute: multi_worker needs TF_CONFIG (the cluster and this "
            "worker's task; see docs/scaling.md)"
        )
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        workers = cluster.get("worker", []) + cluster.get("chief", [])
        int(task["index"])
        if task["type"] not in cluster or not workers:
            raise KeyError(task["type"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"runtime.distribute: TF_CONFIG is not a cluster with this worker's task ({exc!r})"
        ) from None
    return config


# ------------------------------------------------------------------ strategies
def make_strategy(
    distribute: str = "auto",
    devices: Sequence[str] | None = None,
    *,
    training: bool = False,
) -> tf.distribute.Strategy:
    """The strategy ``distribute`` names (values as in the module docstring).

    ``one_device`` without ``devices`` and ``auto`` on a machine with at most one GPU
    return TensorFlow's default strategy: exactly the single-device code path.
    ``multi_worker`` is for ``training``; elsewhere (attacks, evaluation: they need no
    cross-worker gradient) it gives ``MirroredStrategy`` over this worker's devices. In a
    multi-worker run nothing may create a tensor, list logical devices or build a model
    before this call (TensorFlow configures collective ops at start-up).
    """
    if distribute not in STRATEGIES:
        raise ValueError(
            f"runtime.distribute: must be one of {list(STRATEGIES)}, got {distribute!r}"
        )
    if distribute == "multi_worker" and training:
        cluster_spec()  # TF_CONFIG must describe the cluster
        if devices:
            raise ValueError(
                "runtime.devices: multi_worker training uses every GPU of each worker (or its "
                "CPU) and takes no device list; leave it null (choose GPUs with "
                "CUDA_VISIBLE_DEVICES)"
            )
        # before any tensor or logical-device query: collective ops are configured at start-up
        return tf.distribute.MultiWorkerMirroredStrategy()
    names = check_devices(devices) if devices else None
    if distribute == "auto":
        if names:
            return _mirrored(names) if len(names) > 1 else tf.distribute.OneDeviceStrategy(names[0])
        gpus = [d for d in local_devices() if d.startswith("/gpu:")]
        return _mirrored(gpus) if len(gpus) > 1 else tf.distribute.get_strategy()
    if distribute == "one_device":
        if names and len(names) > 1:
            raise ValueError(f"runtime.devices: one_device takes one device, got {names}")
        return tf.distribute.OneDeviceStrategy(names[0]) if names else tf.distribute.get_strategy()
    if distribute == "mirrored":
        return _mirrored(names)
    cluster_spec()  # multi_worker outside training: this worker's own devices
    return _mirrored(names)


def _mirrored(names):
    if names is None:
        gpus = [d for d in local_devices() if d.startswith("/gpu:")]
        names = gpus or [d for d in local_devices() if d.startswith("/cpu:")]
    return tf.distribute.MirroredStrategy(list(names))


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the outputs: always, except a non-chief worker of a
    multi-worker strategy (the chief is task ``chief``, or ``worker`` 0 without one)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    spec = resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in spec


@contextlib.contextmanager
def output_dir(path: str | Path, strategy=None) -> Iterator[Path]:
    """Where this process saves: ``path`` on the chief; elsewhere a temporary folder,
    removed afterwards (Keras needs every worker to save; only the chief's copy counts)."""
    if is_chief(strategy):
        yield Path(path)
        return
    scratch = Path(tempfile.mkdtemp(prefix="advpipe-worker-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ------------------------------------------------------------------ precision
def _cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        return "avx512_bf16" in Path(cpuinfo).read_text() or "amx_bf16" in Path(cpuinfo).read_text()
    except OSError:
        return False


def training_policy(mixed: bool) -> str:
    """The Keras dtype policy of a training stage: ``float32``, or with ``mixed`` the
    reduced precision this machine computes natively (float16 on a GPU, bfloat16 on a CPU
    with AVX512_BF16 or AMX); elsewhere ``ValueError`` (it would be emulated: slower)."""
    if not mixed:
        return "float32"
    if tf.config.list_physical_devices("GPU"):  # physical: starts no runtime
        return "mixed_float16"
    if _cpu_has_bf16():
        return "mixed_bfloat16"
    raise ValueError(
        "runtime.mixed_precision: this machine has no GPU and no CPU bfloat16 instructions "
        "(AVX512_BF16, AMX): reduced precision would be emulated; set it false"
    )


def require_float32(model=None, what: str = "attacks and evaluation") -> None:
    """``ValueError`` unless the global policy and every layer of ``model`` compute in
    float32: robustness figures are never measured in reduced precision."""
    policy = keras.mixed_precision.global_policy().name
    if policy != "float32":
        raise ValueError(
            f"runtime.mixed_precision: {what} run in float32, the Keras policy is {policy}"
        )
    if model is not None:
        reduced = [
            layer.name
            for layer in model._flatten_layers(include_self=True)
            if getattr(layer, "compute_dtype", "float32") not in ("float32", None)
        ]
        if reduced:
            raise ValueError(
                f"runtime.mixed_precision: {what} run in float32; layers {reduced[:3]} "
                "compute in reduced precision (save trained models with float32_copy)"
            )
