"""End to end: the default pipeline, offline, in a fresh copy of the repository.

Runs `dvc repro` from scratch (no dvc.lock, no metrics), checks the acceptance
numbers, that a second `dvc repro` has nothing to do, and that changing one
attack's eps list re-runs only that attack (and the plots that read it).
Takes a few minutes: it is the real pipeline on the real bundled images.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import copy_repository

from advpipe.attacks.registry import ATTACKS as REGISTERED_ATTACKS

pytestmark = pytest.mark.slow  # one dvc repro of the whole default pipeline: minutes

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dest = tmp_path_factory.mktemp("repo")
    copy_repository(dest)  # tracked + untracked files, no generated outputs, a git repository
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        DVC_NO_ANALYTICS="1",
    )
    _run(["dvc", "repro"], dest, env)
    _run(["git", "add", "-A"], dest, env)
    _run(
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "run"],
        dest,
        env,
    )
    return dest, env


def _metrics(repo_dir, rel):
    return json.loads((repo_dir / rel).read_text())


def test_baseline_accuracy(repo):
    d, _ = repo
    base = _metrics(d, "metrics/baseline.json")
    assert base["n_images"] == 20
    assert base["top1"] >= 0.85 and base["top5"] >= 0.95


ATTACKS = list(REGISTERED_ATTACKS)  # every eps-attack stage, PGD included


def _timing_free(node):
    """No wall-clock figure anywhere in a metrics file (they live in timings/)."""
    if isinstance(node, dict):
        return all("second" not in k and k != "timing" and _timing_free(v) for k, v in node.items())
    return True


@pytest.mark.parametrize("attack", ATTACKS)
def test_accuracy_falls_with_eps(repo, attack):
    d, _ = repo
    m = _metrics(d, f"metrics/attacks/{attack}.json")
    grid = sorted(yaml.safe_load((d / "params.yaml").read_text())["attacks"][attack]["epsilons"])
    assert list(m["eps"]) == [f"{e:g}" for e in grid]  # every eps of the grid, in order
    top1 = [m["eps"][f"{e:g}"]["top1"] for e in grid]
    clean = m["clean"]["top1"]
    # already the smallest eps (0.001, a quarter of an 8-bit step) costs accuracy ...
    assert top1[0] < clean
    # ... and the strong end of the grid keeps less than half of the clean accuracy
    assert np.mean(top1[-3:]) < 0.5 * clean
    assert _timing_free(m)
    t = _metrics(d, f"timings/attack_{attack}.json")
    assert t["n_images"] == m["n_images"] and t["n_epsilons"] == len(grid)
    assert t["images_per_second"] == pytest.approx(t["n_images"] / t["seconds"], rel=0.01)


def test_deepfool(repo):
    d, _ = repo
    m = _metrics(d, "metrics/attacks/deepfool.json")
    assert m["success_rate_on_correct"] >= 0.95
    assert 0 < m["rho2"] < 0.1 and m["l2_median"] > 0


def _png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_plots_and_figure(repo):
    d, env = repo
    params = yaml.safe_load((d / "params.yaml").read_text())
    for name in ["top1_vs_eps.png", "top5_vs_eps.png"]:
        img = _png(d / "plots/attacks" / name)
        assert img.shape == (504, 768, 3)
        # one colour per attack (matplotlib's C0..C3) and the grey clean line are drawn
        for rgb in [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (128, 128, 128)]:
            assert (np.abs(img.astype(int) - rgb).max(-1) <= 10).sum() > 30, (name, rgb)
    figure = params["report"]["figure"]
    n = figure["n_images"] if figure["images"] is None else len(figure["images"])
    rows = 1 + len(figure["epsilons"])
    img = _png(d / "plots/attacks/examples.png")
    assert img.shape == (round((2.0 * rows + 0.4) * 80), round(3.6 * n * 80), 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10_000  # photographs, not blank
    assert (d / "plots/attacks/examples.png").stat().st_size < 1_000_000
    out = _run(["dvc", "plots", "show", "--json"], d, env)
    shown = json.loads(out)["data"]
    for plot in ("top1_vs_eps", "top5_vs_eps"):
        values = shown[plot][0]["content"]["data"]["values"]
        lines = ATTACKS + (["autoattack"] if plot == "top1_vs_eps" else [])  # AA: no top-5
        assert {v["filename"] for v in values} == {f"{a}.csv" for a in lines}
        for a in lines:  # one line per attack: the clean point and every eps of its grid
            assert len([v for v in values if v["attack"] == a]) == 1 + len(
                params["attacks"][a]["epsilons"]
            )


def test_autoattack_on_the_attack_set(repo):
    """attack@autoattack: the standard cascade on the bundled images, never above PGD."""
    d, _ = repo
    m = _metrics(d, "metrics/attacks/autoattack.json")
    params = yaml.safe_load((d / "params.yaml").read_text())["attacks"]
    grid = sorted(params["autoattack"]["epsilons"])
    assert list(m["eps"]) == [f"{e:g}" for e in grid]
    assert m["standard"] and m["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert m["sanity"]["warnings"] == []
    pgd = _metrics(d, "metrics/attacks/pgd.json")
    for e in grid:
        cell = m["eps"][f"{e:g}"]
        n_correct = round(m["clean"]["top1"] * m["n_images"])
        rows = cell["per_attack"]
        assert rows[0]["attacked"] == n_correct
        robust = n_correct - sum(r["broken"] for r in rows)
        assert cell["top1"] == pytest.approx(robust / m["n_images"])
        assert cell["max_norm"] <= e * (1 + 1e-5) + 1e-6
        if f"{e:g}" in pgd["eps"]:
            assert cell["top1"] <= pgd["eps"][f"{e:g}"]["top1"]
    assert _timing_free(m) and all(
        "seconds" not in r for c in m["eps"].values() for r in c["per_attack"]
    )
    # finished: nothing left to resume, not even the emptied resume/ folder
    assert not (d / "resume").exists(), list((d / "resume").rglob("*"))


def test_forced_rerun_leaves_metrics_diff_empty(repo):
    """Timings moved to timings/: recomputing identical results changes no metric."""
    d, env = repo
    for m in ["metrics/baseline.json", "metrics/attacks/deepfool.json"]:
        assert _timing_free(_metrics(d, m))
    _run(["dvc", "repro", "-f", "-s", "attack@fgsm"], d, env)
    assert json.loads(_run(["dvc", "metrics", "diff", "--json"], d, env)) == {}
    assert (d / "timings/attack_fgsm.json").is_file()


def test_forced_retrain_writes_the_same_model_file(repo):
    """A rerun of a training stage gives a byte-identical .keras: nothing downstream is stale."""
    d, env = repo
    before = (d / "models/defense/clean.keras").read_bytes()
    _run(["dvc", "repro", "-f", "-s", "train_clean"], d, env)
    assert (d / "models/defense/clean.keras").read_bytes() == before
    assert "up to date" in _run(["dvc", "status"], d, env)


def test_runtime_distribute_and_devices_are_no_dependency(repo):
    """Where the functions run changes no result: editing those keys re-runs nothing,
    and a stage run on an explicit device writes the same metrics."""
    d, env = repo
    original = (d / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["runtime"]["distribute"] = "one_device"
    params["runtime"]["devices"] = ["/cpu:0"]
    try:
        (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert "up to date" in _run(["dvc", "status"], d, env)
        _run(["dvc", "repro", "-f", "-s", "attack@fgsm"], d, env)
        assert json.loads(_run(["dvc", "metrics", "diff", "--json"], d, env)) == {}
    finally:
        (d / "params.yaml").write_text(original)
    assert "up to date" in _run(["dvc", "status"], d, env)


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
    # check_params re-runs on any edit of params.yaml (but runtime.distribute, .devices); its
    # output is unchanged, so only the stages that declare the changed key follow
    assert ran == {"check_params", "attack@fgsm", "attack_plots"}
    diff = _run(["dvc", "metrics", "diff", "--json"], d, env)
    changed = json.loads(diff)
    assert set(changed) == {"metrics/attacks/fgsm.json"}
