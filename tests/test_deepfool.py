import numpy as np

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
    r = np.linalg.norm((result.adversarial - x).reshape(len(x), -1), axis=1)
    ratio = r / np.linalg.norm(x.reshape(len(x), -1), axis=1)
    assert m["rho2"] == np.mean(ratio[result.success])
    assert 0 < m["rho2"] < 1
    assert m["adversarial"]["top1"] <= m["clean"]["top1"] or m["clean"]["top1"] == 0
