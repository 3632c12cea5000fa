import numpy as np
import pytest

from advpipe.attacks import deepfool


def test_deepfool_flips_prediction_and_reports_rho2(tiny, batch):
    x, y = batch
    result = deepfool(tiny, x, y, steps=50, candidates=5, overshoot=0.02, batch_size=6,
                      keep_adversarial=True, progress=lambda m: None)
    pred_before = tiny(x).numpy().argmax(1)
    pred_after = tiny(result.adversarial).numpy().argmax(1)
    assert result.success.mean() >= 0.9
    assert (pred_after[result.success] != pred_before[result.success]).all()
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    m = result.to_metrics()
    # rho_2 (eq. 14) from scratch: float64 sums of squares, image by image, fooled ones only
    ratios = [np.sqrt(((result.adversarial[i].astype(np.float64) - x[i]) ** 2).sum())
              / np.sqrt((x[i].astype(np.float64) ** 2).sum())
              for i in range(len(x)) if result.success[i]]
    assert ratios and m["rho2"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-4)
    assert 0 < m["rho2"] < 1
    assert m["adversarial"]["top1"] <= m["clean"]["top1"] or m["clean"]["top1"] == 0
