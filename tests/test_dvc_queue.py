"""DVC's experiment queue and a DVC remote, on a tiny project that runs FGSM with advpipe.

What docs/scaling.md describes, checked end to end with dvc 3.67 in a scratch project
(git + DVC, one stage: FGSM on the tiny model at each ε of ``params.yaml``):

* two experiments with different ε lists, queued with ``dvc exp run --queue -S`` and run
  by ``dvc queue start --jobs 2``, each end with the metrics of its own ε list;
  ``dvc exp apply`` puts one in the workspace; after ``dvc queue stop`` no queue worker
  (nor anything else running in the project) is left;
* ``dvc push`` to a local-directory remote, ``git clone`` + ``dvc pull`` elsewhere: the
  clone is up to date and ``dvc repro`` runs nothing.

Every subprocess has a timeout; processes left in the project are killed (and the test
fails) rather than left behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow  # two queued TensorFlow runs, a dvc repro: about a minute

# The stage script. y is the model's own clean prediction, so the clean accuracy is 1 and
# the accuracy under FGSM falls with ε. Plain file names only: queued experiments run in a
# temporary copy of the repository.
SCRIPT = '''"""FGSM accuracy of the tiny model on seeded random images, one value per eps."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import yaml

from advpipe.attacks import FGSM
from advpipe.models.zoo import tiny_model


def fgsm_accuracy(epsilons):
    """({eps: accuracy}, adversarial images [len(epsilons), n, 32, 32, 3])."""
    model = tiny_model(image_size=32, num_classes=10, seed=1)
    x = np.random.default_rng(0).uniform(0, 1, (16, 32, 32, 3)).astype(np.float32)
    y = np.argmax(model.predict(x, verbose=0), axis=1).astype(np.int64)
    advs = FGSM(model)(x, y, list(epsilons))
    accuracy = {}
    for eps, adv in zip(epsilons, advs):
        accuracy[f"{eps:g}"] = float(np.mean(np.argmax(model.predict(adv, verbose=0), 1) == y))
    return accuracy, np.stack(advs)


def main():
    with open("params.yaml") as f:
        epsilons = [float(e) for e in yaml.safe_load(f)["fgsm"]["epsilons"]]
    accuracy, advs = fgsm_accuracy(epsilons)
    np.save("adv.npy", advs)
    with open("metrics.json", "w") as f:
        json.dump({"accuracy": accuracy}, f, indent=2)


if __name__ == "__main__":
    main()
'''

DVC_YAML = """stages:
  attack:
    cmd: python attack.py
    deps: [attack.py]
    params: [fgsm.epsilons]
    outs: [adv.npy]
    metrics:
      - metrics.json: {cache: false}
"""

BASE_EPSILONS = [0.02]
EXPERIMENTS = {"eps-small": [0.01, 0.05], "eps-large": [0.03, 0.1]}
QUEUE_DEADLINE = 240.0  # seconds for both queued experiments (about 30 s on 2 loaded cores)
EXIT_DEADLINE = 60.0  # seconds for the workers to exit after `dvc queue stop`


def _env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DVC_") and k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site-cache"),
        GIT_AUTHOR_NAME="advpipe tests",
        GIT_AUTHOR_EMAIL="tests@advpipe.invalid",
        GIT_COMMITTER_NAME="advpipe tests",
        GIT_COMMITTER_EMAIL="tests@advpipe.invalid",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    return env


def _run(args, cwd: Path, env, timeout: float = 120) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _make_project(root: Path, env) -> None:
    """A git + DVC project with the FGSM stage, committed (no outputs yet)."""
    root.mkdir()
    (root / "attack.py").write_text(SCRIPT)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(yaml.safe_dump({"fgsm": {"epsilons": BASE_EPSILONS}}))
    _run(["git", "-c", "init.defaultBranch=main", "init", "-q"], root, env)
    for key, value in [("user.name", "advpipe tests"), ("user.email", "tests@advpipe.invalid")]:
        _run(["git", "config", key, value], root, env)  # for DVC's own commits too
    _run(["dvc", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-q", "-m", "FGSM on the tiny model"], root, env)


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location("dvc_queue_attack", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _queue_states(project: Path, env) -> dict[str, str]:
    """``{experiment name: Queued | Running | Success | Failed ...}`` from dvc queue status."""
    states = {}
    for line in _run(["dvc", "queue", "status"], project, env, timeout=60).splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] in EXPERIMENTS:
            states[words[1]] = words[-1]
    return states


def _experiments(project: Path, env) -> dict[str, dict]:
    """``{name: {"params": ..., "metrics": ..., "state": ...}}`` from dvc exp show --json."""
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], project, env, timeout=60))
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                found[rev["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": data["metrics"]["metrics.json"]["data"],
                    "state": exp["executor"]["state"] if exp.get("executor") else None,
                }
    return found


def _project_processes(project: Path) -> list[psutil.Process]:
    """Live processes working in ``project``: the queue's workers (named after a hash of
    the project's broker folder, started there), their ``dvc exp exec-run`` children and
    the stage commands (which run in temporary copies under .dvc/tmp)."""
    root = str(project.resolve())
    node = (
        "dvc-exp-"
        + hashlib.sha256(os.path.join(root, ".dvc", "tmp", "exps", "celery").encode()).hexdigest()[
            :6
        ]
    )
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.cmdline())
            cwd = proc.cwd()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if root in cmdline or node in cmdline or cwd == root or cwd.startswith(root + os.sep):
            found.append(proc)
    return found


def _describe(procs) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        except psutil.Error:
            out.append(f"{proc.pid}: (gone)")
    return out


def test_queue_runs_two_experiments_at_once_and_leaves_no_worker(tmp_path):
    env = _env(tmp_path)
    project = tmp_path / "project"
    _make_project(project, env)
    try:
        for name, epsilons in EXPERIMENTS.items():
            override = f"fgsm.epsilons=[{','.join(map(str, epsilons))}]"
            _run(["dvc", "exp", "run", "--queue", "-n", name, "-S", override], project, env)
        assert _queue_states(project, env) == {name: "Queued" for name in EXPERIMENTS}
        # The spawned workers inherit the command's stdout/stderr: not a pipe we would wait on.
        with open(tmp_path / "queue-start.log", "w") as log:
            subprocess.run(
                ["dvc", "queue", "start", "--jobs", "2"],
                cwd=project,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=True,
            )
        # the process search below sees the two workers (so its empty answer later means
        # something)
        deadline = time.monotonic() + 30
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [p for p in _describe(_project_processes(project)) if "queue-worker" in p]
            time.sleep(0.5)
        assert len(workers) == 2, _describe(_project_processes(project))

        # What the stage must write for each list, computed here while the workers run.
        script = _load_script(project / "attack.py")
        expected = {name: script.fgsm_accuracy(eps)[0] for name, eps in EXPERIMENTS.items()}
        for name, epsilons in EXPERIMENTS.items():
            assert list(expected[name]) == [f"{e:g}" for e in epsilons]
        # the attack does something, and the two lists give different results
        assert expected["eps-large"]["0.1"] < 1.0
        assert expected["eps-small"] != expected["eps-large"]

        deadline = time.monotonic() + QUEUE_DEADLINE
        states = _queue_states(project, env)
        while time.monotonic() < deadline and not all(s == "Success" for s in states.values()):
            failed = [
                name for name, s in states.items() if s not in ("Queued", "Running", "Success")
            ]
            if failed:
                logs = _run(["dvc", "queue", "logs", failed[0]], project, env, timeout=60)
                pytest.fail(f"queued experiment {failed[0]}: {states[failed[0]]}\n{logs}")
            time.sleep(3)
            states = _queue_states(project, env)
        assert states == {name: "Success" for name in EXPERIMENTS}

        shown = _experiments(project, env)
        assert set(shown) == set(EXPERIMENTS)
        for name, epsilons in EXPERIMENTS.items():
            assert shown[name]["state"] == "success"
            assert shown[name]["params"] == {"fgsm": {"epsilons": epsilons}}
            assert shown[name]["metrics"] == {"accuracy": expected[name]}
        # the experiments ran off the commit: the workspace is untouched until applied
        assert yaml.safe_load((project / "params.yaml").read_text())["fgsm"]["epsilons"] == (
            BASE_EPSILONS
        )
        assert not (project / "metrics.json").exists()

        _run(["dvc", "exp", "apply", "eps-large"], project, env)
        params = yaml.safe_load((project / "params.yaml").read_text())
        assert params == {"fgsm": {"epsilons": EXPERIMENTS["eps-large"]}}
        metrics = json.loads((project / "metrics.json").read_text())
        assert metrics == {"accuracy": expected["eps-large"]}
        assert np.load(project / "adv.npy").shape == (2, 16, 32, 32, 3)
        assert "Data and pipelines are up to date." in _run(["dvc", "status"], project, env)

        _run(["dvc", "queue", "stop"], project, env, timeout=60)
        deadline = time.monotonic() + EXIT_DEADLINE
        while _project_processes(project) and time.monotonic() < deadline:
            time.sleep(1)
        left = _describe(_project_processes(project))
        assert left == [], "processes still running in the project after `dvc queue stop`"
        assert "Worker status: 0 active, 0 idle" in _run(
            ["dvc", "queue", "status"], project, env, timeout=60
        )
    finally:
        leftovers = _project_processes(project)
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=10)


def test_remote_round_trip_leaves_nothing_to_reproduce(tmp_path):
    env = _env(tmp_path)
    project, clone, store = tmp_path / "project", tmp_path / "clone", tmp_path / "store"
    _make_project(project, env)
    _run(["dvc", "repro"], project, env, timeout=180)
    _run(["dvc", "remote", "add", "-d", "store", str(store)], project, env)
    _run(["git", "add", "-A"], project, env)
    _run(["git", "commit", "-q", "-m", "results and remote"], project, env)
    _run(["dvc", "push"], project, env)
    assert [p for p in store.rglob("*") if p.is_file()], "dvc push wrote nothing to the remote"

    _run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    assert not (clone / "adv.npy").exists()  # in the DVC cache, not in git
    assert (clone / "metrics.json").exists()  # cache: false, committed to git
    assert "not in cache" in _run(["dvc", "status"], clone, env)
    _run(["dvc", "pull"], clone, env)
    assert (clone / "adv.npy").read_bytes() == (project / "adv.npy").read_bytes()
    assert "Data and pipelines are up to date." in _run(["dvc", "status"], clone, env)
    out = _run(["dvc", "repro"], clone, env, timeout=180)
    assert "Stage 'attack' didn't change, skipping" in out
    assert "Data and pipelines are up to date." in out
    assert "Running stage" not in out
