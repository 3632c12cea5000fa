"""Benchmark: our APGD (advpipe.attacks.apgd) against ART 1.20.1's AutoProjectedGradientDescent.

APGD, Auto-PGD: F. Croce and M. Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690.
ART: the Adversarial Robustness Toolbox, https://github.com/Trusted-AI/adversarial-robustness-toolbox
(``pip install -r bench/requirements-bench.txt``: a benchmark-only dependency).

Both attack the same Keras model (ART's ``TensorFlowV2Classifier`` wraps it, clip values
(0, 1), logits out, so ART's APGD builds its cross-entropy ``from_logits``) on the same
real images, L∞, untargeted cross-entropy, with the same settings: initial step size 2ε
(ART's ``eps_step``: its default is a fixed 0.1, not the authors' 2ε, so it is set
here), ``max_iter`` = steps, ``nb_random_init`` = restarts = 1, the same batch size.

1. Agreement, per configuration: robust accuracy (correct after the attack, clean
   misclassifications counted as wrong; both sides' adversarials re-evaluated with one
   forward pass) under ours and under ART, the discordant pairs and the two-sided exact
   McNemar p-value (binomial test on the discordant pairs). Configurations:
   EfficientNet-Lite0 at ε = 0.5/255 and 1/255 on Imagenette's 10 classes, and a clean
   defense head (frozen EfficientNet-Lite0 trunk, classes [0, 482, 574], trained here with
   advpipe.defenses on Imagenette images disjoint from its test images) at ε = 1/255.
2. Speed, at equal work (ours with ``early_exit=False``: every image for all iterations)
   and ours with early exit; images/s over the same images, attack calls only, one
   warm-up call each. Calls are interleaved per batch so shared-machine load hits all
   three alike.

Known differences of ART's implementation (not bugs of ours; they can make ART weaker):
ART keeps only the *final* iterate (an image misclassified at an intermediate iterate
but not at the last counts as robust), ours keeps the first misclassified iterate; ART
evaluates the loss with a separate forward pass after each gradient (about 1.33x the
model work per iteration); ART skips images misclassified before the attack; ART's
random start uses NumPy's global generator (seeded here per configuration).

    python bench/apgd_art.py                 # 200 images, 100 steps (about 2 hours, 2 CPUs)
    python bench/apgd_art.py --quick         # tiny numbers: checks the script end to end
    # a defense model of a real-data workspace (docs/results.md) instead of the clean head:
    python bench/apgd_art.py --eps --defense-model <ws>/models/defense/pgd_at.keras

Not a test: it prints figures. Skips (exit 0) when the Imagenette folder is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from advpipe.attacks.apgd import APGD  # noqa: E402
from advpipe.attacks.bounded import perturbation_norms  # noqa: E402
from advpipe.data.class_index import imagenet_classes  # noqa: E402
from advpipe.data.folder import image_files, load_class_files  # noqa: E402
from advpipe.data.imagenette import IMAGENETTE_CLASSES  # noqa: E402
from advpipe.data.images import to_unit_float  # noqa: E402
from advpipe.inference import compiled_forward, predict_logits  # noqa: E402
from advpipe.models.zoo import build_model  # noqa: E402
from bench_setup import describe, model_arguments, saved_defense  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imagenette"
#: The pipeline's resize (params.yaml data.image_size, data.resample, data.crop_ratio).
SIZE, RESAMPLE, CROP_RATIO = 224, "bicubic", 0.875
DEFENSE_CLASSES = [0, 482, 574]
DEFENSE_TRUNK = "efficientnet_lite0"


# ------------------------------------------------------------------------------ data
def class_files(root: Path, classes, start: int, stop: int) -> dict[int, list[Path]]:
    """Files ``start:stop`` (sorted by name) of each class folder ``root/<wnid>``."""
    wnids = imagenet_classes().wnids
    return {c: image_files(root / wnids[c])[start:stop] for c in classes}


def load(root: Path, classes, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and ImageNet labels of files ``start:stop`` of each class, resized
    as the pipeline does (short side to 256, centre 224 crop, bicubic)."""
    files = class_files(root, classes, start, stop)
    images, manifest, _ = load_class_files(
        files, stop - start, size=SIZE, resample=RESAMPLE, crop_ratio=CROP_RATIO
    )
    return images, manifest["label"].to_numpy(np.int64)


@contextlib.contextmanager
def working_directory(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def train_defense_head(root: Path, per_class: dict[str, int], epochs: int, log):
    """A clean head on a frozen trunk, trained with advpipe.defenses on Imagenette files
    ``0:train`` and ``train:train+val`` of each defense class; returns the model and the
    test images (files ``train+val:train+val+test``, disjoint) as float32 and positions.

    ``train_defense`` writes ``models/defense/clean.keras`` relative to the working
    directory: it runs in a temporary one, so the repository's model is not touched.
    """
    from advpipe.defenses.loop import TrainConfig
    from advpipe.defenses.model import load_model
    from advpipe.defenses.registry import model_path
    from advpipe.defenses.train import DefenseSetup, ModelSpec, train_defense

    position = {c: i for i, c in enumerate(DEFENSE_CLASSES)}
    a, b = per_class["train"], per_class["train"] + per_class["val"]
    c = b + per_class["test"]
    sets = {}
    for name, (lo, hi) in {"train": (0, a), "val": (a, b), "test": (b, c)}.items():
        images, labels = load(root, DEFENSE_CLASSES, lo, hi)
        sets[name] = (images, np.array([position[int(y)] for y in labels], np.int64))
    setup = DefenseSetup(
        model=ModelSpec(trunk=DEFENSE_TRUNK, image_size=SIZE),
        train=TrainConfig(optimizer="adam", learning_rate=1e-3, epochs=epochs, patience=5),
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, working_directory(tmp):
        out = train_defense("clean", setup, sets["train"], sets["val"], DEFENSE_CLASSES, log=log)
        model = load_model(model_path("clean"))
    seconds = time.perf_counter() - start
    test_x, test_y = sets["test"]
    return model, to_unit_float(test_x), test_y, out["metrics"], seconds


# --------------------------------------------------------------------------- attacks
def art_attack(model, *, eps: float, steps: int, batch_size: int):
    """ART's APGD on ``model`` with our settings (see the module docstring)."""
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    classifier = TensorFlowV2Classifier(
        model=model,
        nb_classes=int(model.output_shape[-1]),
        input_shape=tuple(model.input_shape[1:]),
        loss_object=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )
    return AutoProjectedGradientDescent(
        classifier,
        norm=np.inf,
        eps=float(eps),
        eps_step=2.0 * float(eps),
        max_iter=int(steps),
        targeted=False,
        nb_random_init=1,
        batch_size=int(batch_size),
        loss_type="cross_entropy",
        verbose=False,
    )


@dataclass
class Outcome:
    """One configuration's figures; times in seconds per batch."""

    model: str
    eps: float
    clean: np.ndarray
    ours: np.ndarray
    art: np.ndarray
    ours_success: np.ndarray
    norms: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=lambda: {"ours": [], "art": [], "ours_full": []})
    batch_sizes: list = field(default_factory=list)
    queries: list = field(default_factory=list)
    #: Early exit vs none: same success flags; same adversarial bits. The bits can differ
    #: without a logic difference: a shrinking batch changes oneDNN's float rounding of the
    #: gradient (per-image runs, where the batch never shrinks, are bit-identical).
    same_success: bool = True
    same_bits: bool = True


class Contest:
    """Ours (early exit), ours without early exit and ART on one model, built once (ε is a
    call argument for ours and an ART parameter set per configuration); one warm-up call
    each (graph tracing, ART's first eager calls)."""

    def __init__(self, label: str, model, x_warm, y_warm, eps: float, args):
        self.label, self.model, self.args = label, model, args
        self.forward = compiled_forward(model)
        options = {"norm": "linf", "loss": "ce", "steps": args.steps, "restarts": 1}
        self.ours = APGD(model, **options, seed=args.seed)
        self.full = APGD(model, **options, seed=args.seed, early_exit=False)
        self.art = art_attack(model, eps=eps, steps=args.steps, batch_size=args.batch_size)
        self.ours.run(x_warm, y_warm, eps)
        self.full.run(x_warm, y_warm, eps)
        self.art.generate(x_warm, y_warm)

    def run(self, x, y, eps: float, *, speed_images: int) -> Outcome:
        """All three on the same batches (ours without early exit on the first
        ``speed_images`` images only); correctness re-evaluated with one forward pass."""
        args, n = self.args, len(x)
        self.art.set_params(eps=float(eps), eps_step=2.0 * float(eps))
        logits = predict_logits(self.model, x, args.batch_size, forward=self.forward)
        out = Outcome(
            self.label, eps, np.argmax(logits, 1) == y, np.zeros(n, bool), np.zeros(n, bool),
            np.zeros(n, bool), norms={"ours": np.zeros(n), "art": np.zeros(n)},
        )  # fmt: skip
        np.random.seed(args.seed)  # ART's random start
        for lo in range(0, n, args.batch_size):
            hi = min(lo + args.batch_size, n)
            xb, yb, index = x[lo:hi], y[lo:hi], np.arange(lo, hi)
            t = time.perf_counter()
            result = self.ours.run(xb, yb, eps, index=index)
            out.seconds["ours"].append(time.perf_counter() - t)
            if lo < speed_images:
                t = time.perf_counter()
                reference = self.full.run(xb, yb, eps, index=index)
                out.seconds["ours_full"].append(time.perf_counter() - t)
                out.same_success &= bool(np.array_equal(reference.success, result.success))
                out.same_bits &= bool(np.array_equal(reference.adversarial, result.adversarial))
            t = time.perf_counter()
            adv_art = self.art.generate(xb, yb)
            out.seconds["art"].append(time.perf_counter() - t)
            out.batch_sizes.append(hi - lo)
            out.queries.append(result.queries)
            for side, adv in (("ours", result.adversarial), ("art", adv_art)):
                pred = np.argmax(self.forward(tf.constant(adv, tf.float32)).numpy(), 1)
                getattr(out, side)[lo:hi] = pred == yb
                out.norms[side][lo:hi] = perturbation_norms(xb, adv, "linf")
            out.ours_success[lo:hi] = result.success
            full = (
                f" (no early exit {out.seconds['ours_full'][-1]:.1f}s)" if lo < speed_images else ""
            )
            ours_only, art_only, _ = mcnemar_two_sided(out.ours[:hi], out.art[:hi])
            print(
                f"  [{self.label} eps={eps * 255:g}/255] images {hi}/{n}: seconds ours "
                f"{out.seconds['ours'][-1]:.1f}{full}, ART {out.seconds['art'][-1]:.1f}; so far "
                f"clean {out.clean[:hi].sum()}, robust ours {out.ours[:hi].sum()}, ART "
                f"{out.art[:hi].sum()}, robust under ours only {ours_only}, ART only {art_only}",
                flush=True,
            )
        return out


# --------------------------------------------------------------------------- figures
def mcnemar_two_sided(a_correct, b_correct) -> tuple[int, int, float]:
    """Discordant pairs (A right only, B right only) and the exact two-sided p-value."""
    from scipy.stats import binomtest

    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    p = binomtest(a_only, n, 0.5, alternative="two-sided").pvalue if n else 1.0
    return a_only, b_only, float(p)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def agreement_table(outcomes: list[Outcome]) -> str:
    rows = []
    for o in outcomes:
        ours_only, art_only, p = mcnemar_two_sided(o.ours, o.art)
        mismatch = int(np.sum(o.ours != ~o.ours_success))
        rows.append([
            o.model, f"{o.eps * 255:g}/255", str(len(o.clean)), f"{o.clean.mean():.3f}",
            f"{o.ours.mean():.3f}", f"{o.art.mean():.3f}", str(ours_only), str(art_only),
            f"{p:.3g}",
            f"{o.norms['ours'].max() / o.eps:.4f} / {o.norms['art'].max() / o.eps:.4f}",
            str(mismatch),
        ])  # fmt: skip
    return markdown(
        [
            "model", "ε (L∞)", "n", "clean acc", "robust acc ours", "robust acc ART",
            "robust under ours only", "robust under ART only", "McNemar p (2-sided)",
            "max ‖δ‖∞/ε ours / ART", "ours success ≠ re-eval",
        ],
        rows,
    )  # fmt: skip


def speed_table(outcomes: list[Outcome]) -> str:
    rows = []
    for o in outcomes:
        k = len(o.seconds["ours_full"])  # the batches all three ran on
        n = sum(o.batch_sizes[:k])
        if not k:
            continue
        rate = {side: n / sum(o.seconds[side][:k]) for side in ("ours", "art", "ours_full")}
        queries = np.concatenate(o.queries[:k]).mean()
        rows.append([
            o.model, f"{o.eps * 255:g}/255", str(n), f"{rate['ours_full']:.3f}",
            f"{rate['art']:.3f}", f"{rate['ours_full'] / rate['art']:.2f}x",
            f"{rate['ours']:.3f}", f"{rate['ours'] / rate['art']:.2f}x",
            f"{rate['ours'] / rate['ours_full']:.2f}x", f"{queries:.1f}",
            "yes" if o.same_success else "NO",
            "yes" if o.same_bits else "no (float rounding of a smaller batch)",
        ])  # fmt: skip
    return markdown(
        [
            "model", "ε", "images", "ours img/s (no early exit)", "ART img/s",
            "ours/ART (equal work)", "ours img/s (early exit)", "ours early exit/ART",
            "early exit/no early exit", "ours gradients/img (early exit)",
            "same success, early exit or not", "same adversarial bits",
        ],
        rows,
    )  # fmt: skip


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    model_arguments(ap)
    ap.add_argument("--n-images", type=int, default=200, help="attack images (all 10 classes)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument(
        "--eps",
        type=float,
        nargs="*",
        default=[0.5, 1.0],
        help="Lite0's ε in 1/255 units; none (a bare --eps) skips Lite0",
    )
    ap.add_argument(
        "--defense-eps",
        type=float,
        nargs="*",
        default=[1.0],
        help="the defense head's ε in 1/255 units; none (a bare --defense-eps) skips the head",
    )
    ap.add_argument(
        "--defense-model",
        default=None,
        help="a saved defense model (<workspace>/models/defense/<name>.keras of a real-data "
        "run) attacked instead of the clean head trained here, on --n-images of its "
        "workspace's test split",
    )
    ap.add_argument("--defense-train", type=int, default=100, help="training images per class")
    ap.add_argument("--defense-val", type=int, default=30, help="validation images per class")
    ap.add_argument("--defense-epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument(
        "--speed-images",
        type=int,
        default=50,
        help="images (whole batches from the first) that ours also runs without early exit",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(DATA), help="Imagenette folder (one dir per wnid)")
    ap.add_argument("--quick", action="store_true", help="tiny numbers: end-to-end check")
    args = ap.parse_args()
    if args.quick:
        args.n_images, args.steps, args.batch_size, args.speed_images = 10, 5, 5, 5
        args.defense_train, args.defense_val, args.defense_epochs = 10, 5, 3
    start = time.perf_counter()
    print("command: python " + shlex.join(sys.argv))
    root = Path(args.data)
    if not root.is_dir():
        print(f"skipped: no Imagenette folder at {root} (one sub-folder per WordNet id)")
        return
    import art

    per_class = math.ceil(args.n_images / len(IMAGENETTE_CLASSES))
    defense_test = math.ceil(args.n_images / len(DEFENSE_CLASSES))
    print(
        describe(
            args,
            f"ART {art.__version__}, APGD-CE L∞, {args.steps} steps, 1 restart, "
            f"initial step 2ε, batch {args.batch_size}, seed {args.seed}, "
            f"{per_class * len(IMAGENETTE_CLASSES)} Imagenette images ({per_class}/class); "
            + (
                "defense: none"
                if not args.defense_eps
                else f"defense: saved model {args.defense_model}"
                if args.defense_model
                else f"defense: clean head on frozen {DEFENSE_TRUNK}, classes {DEFENSE_CLASSES}, "
                f"{args.defense_train}/{args.defense_val}/{defense_test} train/val/test per class"
            ),
        ),
        flush=True,
    )
    outcomes = []

    def attack(contest: Contest, x, y, eps: float) -> None:
        outcomes.append(contest.run(x, y, eps, speed_images=args.speed_images))
        o = outcomes[-1]
        ours_only, art_only, p = mcnemar_two_sided(o.ours, o.art)
        print(
            f"done: {o.model} eps={eps * 255:g}/255, n={len(o.clean)}: robust acc ours "
            f"{o.ours.mean():.3f}, ART {o.art.mean():.3f}, discordant {ours_only}/{art_only}, "
            f"p={p:.3g}; attack seconds ours {sum(o.seconds['ours']):.0f}, ART "
            f"{sum(o.seconds['art']):.0f} ({time.perf_counter() - start:.0f}s elapsed)",
            flush=True,
        )

    if args.eps:
        model = build_model(args.model, weights=not args.random_weights)
        images, labels = load(root, IMAGENETTE_CLASSES, 0, per_class)
        x = to_unit_float(images)
        contest = Contest(args.model, model, x[:2], labels[:2], args.eps[0] / 255, args)
        for eps in args.eps:
            attack(contest, x, labels, eps / 255)
    if args.defense_eps:
        defense_head(args, root, defense_test, attack)
    print("\n## Agreement: robust accuracy, ours vs ART (same images)\n")
    print(agreement_table(outcomes))
    print(f"\n## Speed: attack calls only, first {args.speed_images} images of each set\n")
    print(speed_table(outcomes))
    print(f"\nwall time {time.perf_counter() - start:.0f}s", flush=True)


def defense_head(args, root: Path, n_test: int, attack) -> None:
    """Train the clean head (``train_defense_head``), or load ``--defense-model``, and
    attack it at each ``--defense-eps``."""
    if args.defense_model:
        path = Path(args.defense_model)
        if not path.is_file():
            raise SystemExit(f"--defense-model: no saved defense model at {path}")
        defense, images, dy = saved_defense(path, "test", args.n_images, args.seed)
        dx = to_unit_float(images)
        label = f"{path.stem} (saved defense model, {defense.output_shape[-1]} classes)"
        print(f"defense model: {path}, {len(dx)} test images (seed {args.seed})", flush=True)
    else:
        sizes = {"train": args.defense_train, "val": args.defense_val, "test": n_test}
        defense, dx, dy, metrics, seconds = train_defense_head(
            root, sizes, args.defense_epochs, log=lambda m: None
        )
        print(
            f"defense head: trained in {seconds:.0f}s, best epoch {metrics['best_epoch']}, "
            f"val top-1 {metrics['best_val_top1']:.3f} ({metrics['n_train']} train / "
            f"{metrics['n_val']} val images, {len(dx)} test images disjoint)",
            flush=True,
        )
        label = f"clean head ({DEFENSE_TRUNK} trunk, 3 classes)"
    contest = Contest(label, defense, dx[:2], dy[:2], args.defense_eps[0] / 255, args)
    for eps in args.defense_eps:
        attack(contest, dx, dy, eps / 255)


if __name__ == "__main__":
    main()
