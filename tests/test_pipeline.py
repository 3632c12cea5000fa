"""End to end: the default pipeline, offline, in a fresh copy of the repository.

Runs `dvc repro` from scratch (no dvc.lock, no metrics), checks the acceptance
numbers, that a second `dvc repro` has nothing to do, and that changing one
attack's eps list re-runs only that attack (and the plots that read it).
Takes a few minutes: it is the real pipeline on the real bundled images.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dest = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for generated in ["dvc.lock", "metrics", "plots", "data/attack", "data/defense"]:
        path = dest / generated
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1")
    _run(["git", "init", "-q"], dest, env)
    _run(["dvc", "repro"], dest, env)
    _run(["git", "add", "-A"], dest, env)
    _run(["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "run"],
         dest, env)
    return dest, env


def _metrics(repo_dir, rel):
    return json.loads((repo_dir / rel).read_text())


def test_baseline_accuracy(repo):
    d, _ = repo
    base = _metrics(d, "metrics/baseline.json")
    assert base["n_images"] == 20
    assert base["top1"] >= 0.85 and base["top5"] >= 0.95


@pytest.mark.parametrize("attack", ["fgsm", "fgm", "rfgsm", "step_ll"])
def test_accuracy_falls_with_eps(repo, attack):
    d, _ = repo
    m = _metrics(d, f"metrics/attacks/{attack}.json")
    eps = sorted(m["eps"], key=float)
    top1 = [m["eps"][e]["top1"] for e in eps]
    assert top1[-1] < top1[0] <= m["clean"]["top1"]
    assert m["timing"]["images_per_second"] > 0
    assert (d / f"plots/attacks/{attack}.csv").is_file()


def test_deepfool(repo):
    d, _ = repo
    m = _metrics(d, "metrics/attacks/deepfool.json")
    assert m["success_rate_on_correct"] >= 0.95
    assert 0 < m["rho2"] < 0.1 and m["l2_median"] > 0


def test_plots_and_figure(repo):
    d, env = repo
    for name in ["top1_vs_eps.png", "top5_vs_eps.png", "examples.png"]:
        assert (d / "plots/attacks" / name).stat().st_size > 10_000
    out = _run(["dvc", "plots", "show", "--json"], d, env)
    shown = json.loads(out)["data"]
    for plot in ("top1_vs_eps", "top5_vs_eps"):
        values = shown[plot][0]["content"]["data"]["values"]
        assert {v["filename"] for v in values} == {  # one line per attack, 11 points each
            "fgsm.csv", "fgm.csv", "rfgsm.csv", "step_ll.csv"}
        assert len(values) == 4 * 11


def test_second_repro_is_a_no_op_and_one_eps_change_reruns_one_attack(repo):
    d, env = repo
    assert "up to date" in _run(["dvc", "status"], d, env)
    out = _run(["dvc", "repro"], d, env)
    assert "Running stage" not in out

    params = yaml.safe_load((d / "params.yaml").read_text())
    params["attacks"]["fgsm"]["epsilons"] = [0.002, 0.02, 0.2]
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], d, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"attack@fgsm", "attack_plots"}
    diff = _run(["dvc", "metrics", "diff", "--json"], d, env)
    changed = json.loads(diff)
    assert set(changed) == {"metrics/attacks/fgsm.json"}
