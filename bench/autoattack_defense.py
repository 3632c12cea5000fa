"""AutoAttack beside PGD-10 on trained defense models, on a sample of their test split.

For each model: clean top-1, PGD-10 (the pipeline's default: 10 steps of 0.25·ε, random
start), the AutoAttack cascade (``--version standard``: the authors' settings; with the
3-class defense heads the few-class variant APGD-CE → APGD-DLR → APGD-CE-T → FAB-T →
Square), the per-image worst case over both, which attack broke how many images, APGD-CE
vs PGD (one-sided exact McNemar p-value) and the time of each attack.

    # after a real-data run of the pipeline (docs/results.md), in that workspace:
    python bench/autoattack_defense.py --models clean kurakin_step_ll --eps 0.00392157 --n 100

Not a test: it prints figures. ``--n`` images are drawn from the split (seeded, the same
for every model); ``--workspace`` is the pipeline workspace holding models/defense/ and
data/defense/. An interrupted run goes on from its last finished batch when started again
with the same arguments (its state is kept in ``--resume``, a folder removed per model once
that model is done); "AA s" counts the attack time of both runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from advpipe.attacks.autoattack import (  # noqa: E402
    autoattack,
    resume_store,
    sanity_checks,
    square_warning,
)
from advpipe.attacks.pgd import PGD  # noqa: E402
from advpipe.data.images import to_unit_float  # noqa: E402
from advpipe.metrics import paired_test  # noqa: E402
from bench_setup import saved_defense  # noqa: E402


def pgd_correct(model, images, labels, eps, batch_size, seed):
    attack = PGD(model, steps=10, rel_stepsize=0.25, random_start=True, seed=seed)
    out = []
    for start in range(0, len(images), batch_size):
        x = to_unit_float(images[start : start + batch_size])
        y = labels[start : start + batch_size]
        adv = attack(x, y, eps, index=np.arange(start, start + len(x)))
        out.append(model(tf.constant(adv), training=False).numpy().argmax(1) == y)
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workspace", default=".")
    ap.add_argument("--models", nargs="+", default=["clean", "kurakin_step_ll"])
    ap.add_argument("--eps", type=float, default=1 / 255)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--split", default="test")
    ap.add_argument("--version", default="standard")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--resume",
        default="resume/bench_autoattack",
        help="folder for an interrupted run's state (relative to --workspace)",
    )
    args = ap.parse_args()
    root = Path(args.workspace)
    print(f"$ python {' '.join(sys.argv)}")
    print(
        f"TF {tf.__version__}, {os.cpu_count()} CPUs, eps {args.eps:.6g} "
        f"({args.eps * 255:.2f}/255), {args.version} AutoAttack, {args.n} images of "
        f"the {args.split} split",
        flush=True,
    )
    rows = []
    for name in args.models:
        path = root / "models" / "defense" / f"{name}.keras"
        model, images, labels = saved_defense(path, args.split, args.n, args.seed)
        t = time.perf_counter()
        pgd = pgd_correct(model, images, labels, args.eps, args.batch_size, args.seed)
        pgd_s = time.perf_counter() - t
        options = {"version": args.version, "batch_size": args.batch_size, "seed": args.seed}
        store = resume_store(root / args.resume, name, model, images, labels, options)
        res = autoattack(
            model,
            images,
            labels,
            args.eps,
            progress=lambda m: print(m, flush=True),
            checkpoint=store.partial(args.eps),
            **options,
        )
        store.clear()
        aa_s = sum(res.seconds.values())
        apgd = np.array([b not in ("clean", "apgd-ce") for b in res.broken_by])
        test = paired_test(apgd, pgd)
        rows.append(
            {
                "model": name,
                "n": len(images),
                "clean": res.clean_correct.mean(),
                "pgd": pgd.mean(),
                "aa": res.robust.mean(),
                "worst": (res.robust & pgd).mean(),
                "broken": "; ".join(
                    f"{r['attack']} {r['broken']} ({res.seconds.get(r['attack'], 0.0):.0f} s)"
                    for r in res.per_attack()
                ),
                "apgd_p": test["p_value"],
                "square": square_warning(res)["warning"],
                "sanity": "; ".join(sanity_checks(model, images, labels)["warnings"]) or "ok",
                "pgd_s": pgd_s,
                "aa_s": aa_s,
                "standard": res.standard,
            }
        )
        print(f"{name}: done in {aa_s:.0f} s (AutoAttack), {pgd_s:.0f} s (PGD-10)", flush=True)
    print()
    print(
        "| model | n | clean | PGD-10 | AutoAttack | worst case | broken by (time) | "
        "APGD-CE vs PGD p | Square warning | sanity | PGD s | AA s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['n']} | {100 * r['clean']:.1f} | {100 * r['pgd']:.1f} | "
            f"{100 * r['aa']:.1f} | {100 * r['worst']:.1f} | {r['broken']} | "
            f"{r['apgd_p']:.2g} | {'yes' if r['square'] else 'no'} | {r['sanity']} | "
            f"{r['pgd_s']:.0f} | {r['aa_s']:.0f} |"
        )
    if rows and not rows[0]["standard"]:
        print("\n(fewer than 4 classes: the few-class cascade, not the standard protocol)")


if __name__ == "__main__":
    main()
