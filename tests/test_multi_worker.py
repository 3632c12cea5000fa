"""``runtime.distribute: multi_worker`` (issue #15): MultiWorkerMirroredStrategy.

The two-process test starts a cluster of two workers on this machine (one CPU replica
each, ``TF_CONFIG`` per process), trains a few steps of Kurakin's method with
``Trainer.train_step`` and checks the chief's saved weights against the same steps run
in one process, ``MirroredStrategy`` over two logical CPU devices (the same global
batch, the same per-replica split, so the adversarial examples fall on the same images).
The worker script is ``tests/multi_worker_train.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from advpipe import runtime

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "multi_worker_train.py"
DEADLINE_S = 110  # for the three processes together: the test ends within 2 minutes
TOLERANCE = 1e-5


# ------------------------------------------------------------------ TF_CONFIG checks
def test_multi_worker_without_tf_config_names_it(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError) as info:
        runtime.make_strategy("multi_worker", training=True)
    assert "TF_CONFIG" in str(info.value)
    assert "runtime.distribute" in str(info.value)


@pytest.mark.parametrize(
    "tf_config",
    [
        "not json",
        "[]",
        '{"cluster": {"worker": ["127.0.0.1:1"]}}',  # no task
        '{"task": {"type": "worker", "index": 0}}',  # no cluster
        '{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}',
        '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}',
        '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": "x"}}',
    ],
)
def test_multi_worker_with_a_malformed_tf_config_names_it(monkeypatch, tf_config):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError) as info:
        runtime.make_strategy("multi_worker", training=True)
    assert "TF_CONFIG" in str(info.value)
    assert "runtime.distribute" in str(info.value)


# ------------------------------------------------------------------ two workers
def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # gRPC on loopback
    for key in ("TF_CONFIG", *runtime.ENVIRONMENT.values()):
        env.pop(key, None)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return env


def tails(logs: Path, names) -> str:
    """The end of each process's stderr (without TensorFlow's start-up lines)."""
    parts = []
    for name in names:
        lines = (logs / f"{name}.err").read_text().splitlines()
        lines = [line for line in lines if not line.startswith(("I0000", "WARNING: All log"))]
        parts.append(f"--- {name} stderr:\n" + "\n".join(lines[-40:]))
    return "\n".join(parts)


def result_of(name: str, logs: Path) -> dict:
    lines = [
        line
        for line in (logs / f"{name}.out").read_text().splitlines()
        if line.startswith("RESULT ")
    ]
    assert len(lines) == 1, f"{name} printed no RESULT line\n{tails(logs, [name])}"
    return json.loads(lines[0][len("RESULT ") :])


def stop(procs) -> list[int]:
    """Kill whatever still runs; the pids of processes that are still alive after that."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    return [proc.pid for proc in procs if proc.poll() is None]


@pytest.mark.slow
def test_two_workers_train_like_one_process_mirrored_over_two_devices(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    outs = {"worker0": tmp_path / "out0", "worker1": tmp_path / "out1"}
    logs = tmp_path / "logs"
    logs.mkdir()
    commands = {
        "worker0": (["worker", outs["worker0"]], {"task": {"type": "worker", "index": 0}}),
        "worker1": (["worker", outs["worker1"]], {"task": {"type": "worker", "index": 1}}),
        "reference": (["reference", tmp_path / "reference"], None),
    }
    procs: dict[str, subprocess.Popen] = {}
    start = time.monotonic()
    try:
        for name, (args, task) in commands.items():
            env = base_env()
            if task is not None:
                env["TF_CONFIG"] = json.dumps({"cluster": cluster, **task})
            with (
                open(logs / f"{name}.out", "w") as stdout,
                open(logs / f"{name}.err", "w") as stderr,
            ):
                procs[name] = subprocess.Popen(
                    [sys.executable, str(SCRIPT), *map(str, args)],
                    cwd=ROOT,
                    env=env,
                    stdout=stdout,
                    stderr=stderr,
                    stdin=subprocess.DEVNULL,
                )
        # a worker whose peer died waits for it forever: stop at the first failure
        while True:
            codes = {name: proc.poll() for name, proc in procs.items()}
            if all(code == 0 for code in codes.values()):
                break
            failed = any(code not in (None, 0) for code in codes.values())
            if failed or time.monotonic() - start > DEADLINE_S:
                pytest.fail(
                    f"exit codes after {time.monotonic() - start:.0f} s (None: still running, "
                    f"killed): {codes}\n{tails(logs, procs)}"
                )
            time.sleep(0.5)
        results = {name: result_of(name, logs) for name in procs}
    finally:
        alive = stop(procs.values())
    assert not alive, f"processes left behind: {alive}"
    assert all(proc.poll() is not None for proc in procs.values())
    print(f"wall time of the three processes: {time.monotonic() - start:.1f} s")

    chief, other, ref = results["worker0"], results["worker1"], results["reference"]
    assert chief["chief"] is True and other["chief"] is False
    assert chief["replicas"] == other["replicas"] == ref["replicas"] == 2
    # only the chief's output folder got files; the other worker's scratch folder is gone
    assert Path(chief["folder"]) == outs["worker0"]
    saved_files = sorted(p.name for p in outs["worker0"].iterdir())
    assert saved_files == ["model.keras", "stats.json", "weights.npz"], saved_files
    assert not outs["worker1"].exists()
    assert Path(other["folder"]) != outs["worker1"]
    assert not Path(other["folder"]).exists(), other["folder"]

    # the same steps: the same statistics (Kurakin: 4 adversarial of 8 at every step)
    for got, want in [(chief, ref), (other, ref)]:
        assert len(got["stats"]) == len(want["stats"]) == 3
        for a, b in zip(got["stats"], want["stats"]):
            assert a["n"] == 8 and a["adv_n"] == 4 and a["clean_n"] == 4, a
            assert a == pytest.approx(b, rel=1e-5, abs=1e-5), (a, b)
    assert chief["weight_sums"] == pytest.approx(other["weight_sums"], rel=1e-6, abs=1e-6)

    # ... and the same weights: the chief's saved copy against the one-process reference
    saved = np.load(outs["worker0"] / "weights.npz")
    final = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    reference = np.load(tmp_path / "reference" / "reference.npz")
    n = len(final)
    assert n == 6  # two conv layers and the logits layer, kernels and biases
    initial = [reference[f"initial_{i}"] for i in range(n)]
    expected = [reference[f"final_{i}"] for i in range(n)]
    assert [w.shape for w in final] == [w.shape for w in expected]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(expected, initial))
    assert moved > 1e-3, moved  # the reference trained: equal weights mean something
    diff = max(float(np.abs(a - b).max()) for a, b in zip(final, expected))
    print(f"max |chief - reference| = {diff:.3g} (weights moved by up to {moved:.3g})")
    assert diff < TOLERANCE, diff

    # the chief's .keras file holds the trained weights
    from advpipe.defenses.model import load_model

    model = load_model(outs["worker0"] / "model.keras", trainable_blocks=1)
    loaded = [w.numpy() for w in model.trainable_weights]
    assert len(loaded) == n
    for a, b in zip(loaded, final):
        np.testing.assert_array_equal(a, b)
