"""A reduced end-to-end defense run on real ImageNet photos (the shared Imagenette copy).

Through the real `folder` source and the real DVC stages: 3 classes [0, 482, 574], 30
images each (10/10/10), the clean head, both Kurakin models and Deep Defense for a
few steps, every evaluation and the report. Skipped when the shared data is absent.
The full 3 x 500 run is measured outside the tests (README).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SHARED_IMAGENETTE, copy_repository

pytestmark = [
    pytest.mark.slow,  # a dvc repro with real-data training: minutes
    pytest.mark.skipif(not SHARED_IMAGENETTE.is_dir(), reason="shared Imagenette data not present"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    dest = tmp_path_factory.mktemp("defense_repo")
    copy_repository(dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    d = params["data"]
    d["defense_set"].update(
        source="folder",
        first=None,
        indices=[0, 482, 574],
        per_class=30,
        split={"train": 10, "val": 10, "test": 10},
    )
    d["folder"]["path"] = str(SHARED_IMAGENETTE)
    defense = params["defense"]
    defense["clean"]["epochs"] = 5
    defense["kurakin"]["epochs"] = 1
    if "deep_defense" in defense:
        defense["deep_defense"].update(epochs=1, max_steps=2)
    defense["evaluation"]["epsilons"] = [0.01568627, 0.03137255]
    params["attacks"]["pgd"]["steps"] = 5
    params["attacks"]["deepfool"]["steps"] = 10
    # a reduced AutoAttack (the 3-class cascade, fewer steps and queries)
    params["attacks"]["autoattack"].update(
        version="custom",
        attacks=["apgd-ce", "apgd-dlr", "apgd-ce-t", "fab-t", "square"],
        apgd_steps=10,
        fab_steps=10,
        square_queries=100,
    )
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        DVC_NO_ANALYTICS="1",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    proc = subprocess.run(
        ["dvc", "repro", "defense_report"], cwd=dest, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return dest, proc


def _json(dest, rel):
    return json.loads((dest / rel).read_text())


def test_every_defense_model_is_trained_evaluated_and_tabled(run):
    from advpipe.defenses.registry import DEFENSES

    dest, proc = run
    table = (dest / "tables/defense.md").read_text()
    for name in DEFENSES:
        ev = _json(dest, f"metrics/defense/eval/{name}.json")
        assert ev["n_images"] == 30 and ev["classes"] == [0, 482, 574]
        assert set(ev["whitebox"]) >= {"fgsm", "fgm", "rfgsm", "step_ll", "pgd"}
        assert (ev["transfer"] is None) == (name == "clean")
        assert 0 < ev["deepfool"]["rho2"] < 0.1
        assert {
            "iterative_beats_one_step",
            "whitebox_beats_transfer",
            "falls_towards_chance",
            "flags",
        } <= set(ev["masking"])
        assert f"| {name} | 30/30/30 |" in table  # n per split (3 classes x 10) in the table
        aa = ev["autoattack"]["0.0156863"]  # the report eps (4/255) by default
        assert not aa["standard"] and aa["max_norm"] <= 0.01568627 * (1 + 1e-5) + 1e-6
        assert [r["attack"] for r in aa["per_attack"]] == [
            "apgd-ce",
            "apgd-dlr",
            "apgd-ce-t",
            "fab-t",
            "square",
        ]
        # robust only if every attack failed; the worst case over AutoAttack and PGD is lower
        assert aa["robust_top1"] <= ev["clean_top1"]
        assert aa["worst_case_top1"] <= min(aa["robust_top1"], ev["whitebox"]["pgd"]["0.0156863"])
        # APGD-CE must not be significantly weaker than PGD on the pipeline's own models
        assert aa["apgd_ce_vs_pgd"]["apgd_weaker"] is False, aa["apgd_ce_vs_pgd"]
        # ... at every evaluation eps (AutoAttack's own APGD-CE at the report eps)
        checks = ev["apgd_ce_vs_pgd"]
        assert set(checks) == set(ev["epsilons"]), checks
        assert not any(c["apgd_weaker"] for c in checks.values()), checks
        assert checks["0.0156863"]["p_value"] == aa["apgd_ce_vs_pgd"]["p_value"]
        assert ev["autoattack_sanity"]["warnings"] == []
        summary = _json(dest, "metrics/defense/summary.json")["models"][name]
        assert summary["autoattack"] == aa["robust_top1"]
        assert summary["worst_case"] == aa["worst_case_top1"]
    assert "AutoAttack" in table and "worst case (AA ∧ PGD)" in table
    # finished: nothing left to resume, not even the emptied resume/ folder
    assert not (dest / "resume").exists(), list((dest / "resume").rglob("*"))
    assert "Smoke run" in table  # 10 training images per class is not a result


def test_the_clean_head_learns_the_real_classes(run):
    dest, _ = run
    ev = _json(dest, "metrics/defense/eval/clean.json")
    assert ev["clean_top1"] >= 0.8  # real photos, ImageNet features: far above chance (1/3)
    # white-box PGD at the largest eps drives it down (a working attack, not a no-op)
    assert ev["whitebox"]["pgd"]["0.0313725"] < ev["clean_top1"]


def test_training_metrics_report_label_leaking_and_curves(run):
    dest, _ = run
    for name in ("kurakin_step_ll", "kurakin_fgsm"):
        tr = _json(dest, f"metrics/defense/train/{name}.json")
        leak = tr["label_leaking"]
        assert {"clean_top1", "adv_top1_ground_truth_labels", "adv_top1_predicted_labels"} <= set(
            leak
        )
        curve = (dest / f"plots/defense/curves/{name}.csv").read_text().splitlines()
        assert curve[0].split(",")[:6] == [
            "model",
            "epoch",
            "train_loss",
            "clean_acc",
            "adv_acc",
            "val_acc",
        ]
        assert len(curve) == 2  # one epoch


def test_saved_models_load_with_keras(run):
    dest, _ = run
    code = (
        "import keras, advpipe, numpy as np; "
        f"m = keras.models.load_model({str(dest / 'models/defense/kurakin_step_ll.keras')!r}); "
        "print(m(np.zeros((1, 224, 224, 3), 'float32')).shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(1, 3)" in out.stdout


def test_robust_methods_pick_their_best_epoch_by_val_robust_accuracy(run):
    """PGD-AT, TRADES and fast AT: trained at their ε (2/255), the best epoch chosen by val
    accuracy under PGD, the overfitting guard's checks recorded (it fired: a dict)."""
    dest, _ = run
    for name in ("pgd_at", "trades", "fast_at"):
        m = _json(dest, f"metrics/defense/train/{name}.json")
        assert m["monitor"] == "val_robust_acc", name
        assert m["epsilon"] == pytest.approx(2 / 255, rel=1e-3)
        assert m["guard_checks"], name
        assert all(0 <= c["robust_acc"] <= 1 for c in m["guard_checks"])
        assert (
            m["catastrophic_overfitting"] is None
            or "restored_step" in m["catastrophic_overfitting"]
        )
        curves = (dest / f"plots/defense/curves/{name}.csv").read_text().splitlines()
        assert "val_robust_acc" in curves[0] and len(curves) >= 2
