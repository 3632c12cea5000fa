"""DeepFool (Moosavi-Dezfooli et al. 2016) through Foolbox's ``L2DeepFoolAttack``.

The reference class is the model's own prediction (as for the robustness rho_2 of
eq. 14 in Deep Defense); the search stops when the prediction changes. Distances
are L2 in [0, 1] pixel space; adversarials are within [0, 1] (Foolbox bounds).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf

from ..evaluation import Timer, compiled_forward, iterate_batches, topk_hits


@dataclass
class DeepFoolResult:
    adversarial: np.ndarray      # float32 [0, 1], only kept when asked for
    success: np.ndarray          # bool: prediction changed
    perturbation_l2: np.ndarray  # ||x' - x||_2
    image_l2: np.ndarray         # ||x||_2
    clean_pred: np.ndarray
    adv_top1: np.ndarray         # bool: true label still top-1 after the attack
    adv_top5: np.ndarray
    clean_top1: np.ndarray
    clean_top5: np.ndarray
    seconds: float

    def to_metrics(self) -> dict:
        n = len(self.success)
        ok = self.success
        correct = self.clean_top1
        ratio = self.perturbation_l2 / np.maximum(self.image_l2, 1e-12)
        f = lambda a: float(np.mean(a)) if len(a) else float("nan")  # noqa: E731
        return {
            "attack": "deepfool",
            "n_images": int(n),
            "clean": {"top1": f(self.clean_top1), "top5": f(self.clean_top5)},
            "adversarial": {"top1": f(self.adv_top1), "top5": f(self.adv_top5)},
            "success_rate": f(ok),
            "success_rate_on_correct": f(ok[correct]),
            "n_correct": int(correct.sum()),
            "rho2": f(ratio[ok]),
            "l2_median": float(np.median(self.perturbation_l2[ok])) if ok.any() else float("nan"),
            "l2_mean": f(self.perturbation_l2[ok]),
            "timing": {
                "seconds": round(self.seconds, 3),
                "seconds_per_image": round(self.seconds / n, 5) if n else None,
                "images_per_second": round(n / self.seconds, 3) if self.seconds else None,
            },
        }


def deepfool(model, images: np.ndarray, labels: np.ndarray, *, steps: int = 50,
             candidates: int = 10, overshoot: float = 0.02, batch_size: int = 16,
             keep_adversarial: bool = False,
             progress: Callable[[str], None] | None = None) -> DeepFoolResult:
    """Run DeepFool on a uint8 or [0, 1] image set; rho_2 counts successful examples only."""
    import foolbox as fb

    fmodel = fb.TensorFlowModel(model, bounds=(0.0, 1.0))
    attack = fb.attacks.L2DeepFoolAttack(steps=steps, candidates=candidates,
                                         overshoot=overshoot, loss="logits")
    forward = compiled_forward(model)
    report = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    parts: dict[str, list] = {k: [] for k in (
        "adv", "success", "r", "x", "pred", "a1", "a5", "c1", "c5")}
    timer = Timer()
    for start, x, y in iterate_batches(images, labels, batch_size):
        with timer:
            xt = tf.constant(x)
            logits = forward(xt).numpy()
            pred = logits.argmax(1).astype(np.int64)
            criterion = fb.criteria.Misclassification(tf.constant(pred, dtype=tf.int64))
            _, clipped, success = attack(fmodel, xt, criterion, epsilons=None)
            adv = clipped.numpy()
            adv_logits = forward(tf.constant(adv)).numpy()
        parts["adv"].append(adv if keep_adversarial else None)
        parts["success"].append(success.numpy().astype(bool))
        parts["r"].append(np.linalg.norm((adv - x).reshape(len(x), -1), axis=1))
        parts["x"].append(np.linalg.norm(x.reshape(len(x), -1), axis=1))
        parts["pred"].append(pred)
        parts["a1"].append(topk_hits(adv_logits, y, 1))
        parts["a5"].append(topk_hits(adv_logits, y, 5))
        parts["c1"].append(topk_hits(logits, y, 1))
        parts["c5"].append(topk_hits(logits, y, 5))
        done = start + len(x)
        report(f"[deepfool] {done}/{len(images)} images, {done / timer.seconds:.2f} img/s")
    cat = lambda k: np.concatenate(parts[k]) if parts[k] else np.zeros(0)  # noqa: E731
    adv_all = np.concatenate(parts["adv"]) if keep_adversarial and parts["adv"] else np.zeros(0)
    return DeepFoolResult(adv_all, cat("success").astype(bool), cat("r"), cat("x"), cat("pred"),
                          cat("a1").astype(bool), cat("a5").astype(bool),
                          cat("c1").astype(bool), cat("c5").astype(bool), timer.seconds)
