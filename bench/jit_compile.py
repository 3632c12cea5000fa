"""Benchmark: XLA (``runtime.jit_compile: true``) against TensorFlow's graphs, on CPU.

The same attacks on the same images, once with every library function compiled by
TensorFlow's graph runtime and once with XLA (:func:`advpipe.runtime.compiled`):
EfficientNet-Lite0 on the 20 bundled ImageNet samples, FGSM (one gradient) and PGD-10
(ten), at ε = 1/255. Per attack it prints the images/s of both, the ratio, and whether
the accuracies agree. Calls are interleaved (graphs, XLA, graphs, XLA, ...) so that a
shared machine's load hits both alike; the first call of each (tracing, XLA compilation)
is timed apart.

    python bench/jit_compile.py [--repeats 3]

Not a test: it prints figures (docs/scaling.md quotes them).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from advpipe import runtime
    from advpipe.attacks import FGSM, PGD
    from advpipe.data.samples import load_samples
    from advpipe.models.zoo import build_model

    images, manifest = load_samples(224, crop_ratio=0.875)
    x = images.astype(np.float32) / 255.0
    y = manifest["label"].to_numpy(np.int64)
    model = build_model("efficientnet_lite0", image_size=224)
    eps = 1 / 255
    print(f"{len(x)} images, EfficientNet-Lite0 224x224, eps 1/255, {args.repeats} repeats")
    print(
        f"{'attack':8s} {'first call s (graph / XLA)':>28s} {'img/s graph':>12s} "
        f"{'img/s XLA':>10s} {'XLA/graph':>10s} {'same top-1':>10s}"
    )
    for make in (lambda: FGSM(model), lambda: PGD(model, steps=10)):
        built, first, times, acc = {}, {}, {False: [], True: []}, {}
        for on in (False, True):
            runtime.set_jit_compile(on)
            built[on] = make()
            runtime.set_jit_compile(False)
            t = time.perf_counter()
            adv = built[on](x, y, eps, index=np.arange(len(x)))
            first[on] = time.perf_counter() - t
            acc[on] = float(np.mean(built[on].forward(adv).numpy().argmax(1) == y))
        for _ in range(args.repeats):
            for on in (False, True):
                t = time.perf_counter()
                built[on](x, y, eps, index=np.arange(len(x)))
                times[on].append(time.perf_counter() - t)
        rate = {on: len(x) / float(np.median(times[on])) for on in (False, True)}
        print(
            f"{built[False].name:8s} {first[False]:13.1f} / {first[True]:<12.1f} "
            f"{rate[False]:12.2f} {rate[True]:10.2f} {rate[True] / rate[False]:10.2f} "
            f"{str(acc[False] == acc[True]):>10s}"
        )


if __name__ == "__main__":
    main()
