"""Benchmark: our batched one-step eps sweep against Foolbox running the same sweep.

Same model, same images, same eps list, same batch size; both sides produce top-1
and top-5 accuracy for every eps (Foolbox's adversarials are re-evaluated with
one forward pass, as a user of Foolbox would have to). Prints images/s, the
speed-up over Foolbox, seconds per image against n, and the peak resident memory
above the level before the sweep started (the input array itself excluded).

    python bench/attack_sweep.py                      # EfficientNet-Lite0, n = 50 200 800
    python bench/attack_sweep.py --model resnet50 --random-weights --n 50 200

Not a test: it prints figures. Images are the 20 bundled ImageNet samples, tiled.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from advpipe.attacks import make_attack, sweep  # noqa: E402
from advpipe.inference import compiled_forward, iterate_batches  # noqa: E402
from advpipe.metrics import TopKCounter  # noqa: E402
from bench_setup import describe, model_and_samples, model_arguments  # noqa: E402

FOOLBOX = {"fgsm": "LinfFastGradientAttack", "fgm": "L2FastGradientAttack"}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size every 10 ms while active."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return False

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def ours(model, name, images, labels, eps, batch_size):
    attack = make_attack(name, model, norm="l2") if name == "fgm" else make_attack(name, model)
    sweep(
        attack, images[:batch_size], labels[:batch_size], eps, batch_size, progress=lambda m: None
    )  # warm-up: traces everything once
    with PeakRSS() as mem:
        start = time.perf_counter()
        result = sweep(attack, images, labels, eps, batch_size, progress=lambda m: None)
        seconds = time.perf_counter() - start
    return seconds, mem.growth_mb, result.by_epsilon[max(eps)]["top1"]


def foolbox_sweep(model, name, images, labels, eps, batch_size):
    import foolbox as fb

    fmodel = fb.TensorFlowModel(model, bounds=(0.0, 1.0))
    attack = getattr(fb.attacks, FOOLBOX[name])()
    forward = compiled_forward(model)

    def run(imgs, labs):
        counters = {e: TopKCounter() for e in eps}
        for _, x, y in iterate_batches(imgs, labs, batch_size):
            _, clipped, _ = attack(fmodel, tf.constant(x), tf.constant(y), epsilons=list(eps))
            for e, adv in zip(eps, clipped):
                counters[e].update(forward(adv).numpy(), y)
        return counters

    run(images[:batch_size], labels[:batch_size])  # warm-up
    with PeakRSS() as mem:
        start = time.perf_counter()
        counters = run(images, labels)
        seconds = time.perf_counter() - start
    return seconds, mem.growth_mb, counters[max(eps)].as_dict()["top1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    model_arguments(ap)
    ap.add_argument("--attacks", default="fgsm", help="comma list of fgsm, fgm")
    ap.add_argument("--n", type=int, nargs="+", default=[50, 200, 800])
    ap.add_argument("--eps", type=float, nargs="+", default=[0.001, 0.005, 0.01, 0.05, 0.1])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--skip-foolbox", action="store_true")
    args = ap.parse_args()

    model, base, base_labels = model_and_samples(args)
    print(describe(args, f"{len(args.eps)} eps, batch {args.batch_size}"))
    header = (
        f"{'attack':7} {'n':>5} | {'ours img/s':>10} {'s/img':>7} {'+MB':>6} | "
        f"{'foolbox img/s':>13} {'s/img':>7} {'+MB':>6} | {'speed-up':>8} | top1@max eps"
    )
    print(header)
    print("-" * len(header))
    for name in args.attacks.split(","):
        for n in args.n:
            reps = -(-n // len(base))
            images = np.concatenate([base] * reps)[:n]
            labels = np.concatenate([base_labels] * reps)[:n]
            s_ours, mb_ours, acc_ours = ours(model, name, images, labels, args.eps, args.batch_size)
            line = f"{name:7} {n:5d} | {n / s_ours:10.2f} {s_ours / n:7.4f} {mb_ours:6.0f} | "
            if args.skip_foolbox:
                print(line + f"{'-':>13} {'-':>7} {'-':>6} | {'-':>8} | ours {acc_ours:.3f}")
                continue
            s_fb, mb_fb, acc_fb = foolbox_sweep(
                model, name, images, labels, args.eps, args.batch_size
            )
            print(
                line + f"{n / s_fb:13.2f} {s_fb / n:7.4f} {mb_fb:6.0f} | "
                f"{s_fb / s_ours:7.2f}x | ours {acc_ours:.3f} foolbox {acc_fb:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
