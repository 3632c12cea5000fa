"""Benchmark: our compiled DeepFool against Foolbox's eager L2DeepFoolAttack.

Same model, same images, same steps / candidates / overshoot / batch size; both sides
end in the same DeepFoolResult (adversarials re-evaluated with one forward pass). Prints
images/s for each side, the speed-up, success rate, rho_2 and median ||r||_2 on both
sides, and the share of images whose ||r||_2 agrees within 10 %.

    python bench/deepfool.py                 # EfficientNet-Lite0, n = 20 100, batch 10
    python bench/deepfool.py --n 20 --jacobian batch --skip-foolbox

Not a test: it prints figures. Images are the 20 bundled ImageNet samples, tiled.
Our side is timed after one warm-up call (the trace); Foolbox after a short one.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from advpipe.attacks.deepfool import (
    JACOBIAN_MODES,
    deepfool,
    deepfool_foolbox,  # noqa: E402
    make_deepfool,
)
from bench_setup import describe, model_and_samples, model_arguments  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    model_arguments(ap)
    ap.add_argument("--n", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--overshoot", type=float, default=0.02)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--jacobian", choices=JACOBIAN_MODES, default="loop")
    ap.add_argument("--skip-foolbox", action="store_true")
    args = ap.parse_args()

    model, base, base_labels = model_and_samples(args)
    opts = dict(steps=args.steps, candidates=args.candidates, overshoot=args.overshoot)
    quiet = lambda m: None  # noqa: E731
    print(
        describe(
            args,
            f"steps {args.steps}, candidates {args.candidates}, overshoot "
            f"{args.overshoot}, batch {args.batch_size}, jacobian {args.jacobian}",
        )
    )

    attack = make_deepfool(model, jacobian=args.jacobian, **opts)
    t0 = time.perf_counter()
    deepfool(
        model,
        base[: args.batch_size],
        base_labels[: args.batch_size],
        attack=attack,
        batch_size=args.batch_size,
        progress=quiet,
    )
    print(f"our warm-up (trace + one batch): {time.perf_counter() - t0:.1f} s")
    if not args.skip_foolbox:
        deepfool_foolbox(
            model,
            base[:2],
            base_labels[:2],
            steps=2,
            candidates=args.candidates,
            batch_size=2,
            progress=quiet,
        )

    header = (
        f"{'n':>4} | {'ours img/s':>10} {'Foolbox img/s':>13} {'speed-up':>8} | "
        f"{'success ours/fb':>15} | {'rho2 ours / Foolbox':>19} | "
        f"{'median L2 ours / Foolbox':>24} | L2 within 10%"
    )
    print(header)
    print("-" * len(header))
    for n in args.n:
        reps = -(-n // len(base))
        images = np.concatenate([base] * reps)[:n]
        labels = np.concatenate([base_labels] * reps)[:n]
        ours = deepfool(
            model, images, labels, attack=attack, batch_size=args.batch_size, progress=quiet
        )
        mo = ours.to_metrics()
        if args.skip_foolbox:
            print(
                f"{n:4d} | {n / ours.seconds:10.2f} {'-':>13} {'-':>8} | "
                f"{mo['success_rate']:7.3f} {'-':>7} | {mo['rho2']:9.6f} {'-':>9} | "
                f"{mo['l2_median']:11.4f} {'-':>12} | -",
                flush=True,
            )
            continue
        ref = deepfool_foolbox(
            model, images, labels, batch_size=args.batch_size, progress=quiet, **opts
        )
        mr = ref.to_metrics()
        agree = np.mean(np.abs(ours.perturbation_l2 / ref.perturbation_l2 - 1) <= 0.10)
        print(
            f"{n:4d} | {n / ours.seconds:10.2f} {n / ref.seconds:13.2f} "
            f"{ref.seconds / ours.seconds:7.1f}x | "
            f"{mo['success_rate']:7.3f} {mr['success_rate']:7.3f} | "
            f"{mo['rho2']:9.6f} {mr['rho2']:9.6f} | "
            f"{mo['l2_median']:11.4f} {mr['l2_median']:12.4f} | {agree:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
