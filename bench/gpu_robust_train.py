"""Robust training of the pipeline's defense model on a GPU machine without TensorFlow.

The lent GPU machine (docs/benchmarks.md, "GPU runs") has JAX but no TensorFlow, and
TensorFlow's wheels are far over what may travel there. Keras 3 runs the pipeline's own
saved models on JAX, so this script loads a ``.keras`` defense model written by the
pipeline (``models/defense/clean.keras``: the ImageNet trunk and the trained head), makes
the trunk trainable with the pipeline's own :func:`advpipe.defenses.model.set_trainable_blocks`
(batch norm frozen, in inference mode), and trains it with **the same methods as the
pipeline's** ``train@pgd_at`` and ``train@trades`` (``src/advpipe/defenses/pgd_at.py``,
``trades.py``) — written here once more as one jitted JAX step, since the pipeline's step is
TensorFlow:

* PGD-AT (Madry et al. 2018, https://arxiv.org/abs/1706.06083): every example replaced by
  PGD from the current weights (uniform random start in the L∞ ε-ball, ``steps`` signed
  steps of ``rel_stepsize``·ε, projected on the ball and on [0, 1]); cross-entropy on them;
* TRADES (Zhang et al. 2019, https://arxiv.org/abs/1901.08573): CE(clean) + β·KL(p(x) ‖ p(x′)),
  x′ from PGD on the KL term with p(x) fixed, started at x + 0.001·N(0, I);
* ε ramp over the first ``warmup_epochs`` (ε·min(1, (step+1)/warmup_steps)), crop (reflect
  pad 4) + flip augmentation, Adam with a cosine learning rate, batch norm in inference mode;
* the best epoch by val robust accuracy under PGD-10 (one start), as the pipeline does.

Then it evaluates the best weights on the test split (clean; PGD-10 at each ``--eps``;
PGD-``--strong-steps`` × ``--strong-restarts`` at ``--strong-eps``, an image robust only if
clean-correct and every start fails) and saves the model as ``.keras``, which the pipeline's
TensorFlow code reads unchanged: ``bench/robust_eval.py`` and ``bench/autoattack_defense.py``
re-measure it here with the pipeline's own attacks (docs/results.md).

A wall-clock ``--budget`` (seconds for training) caps the epochs: after the first epoch the
run keeps as many epochs as fit (the cosine schedule is re-planned over them, said in the log).

    KERAS_BACKEND=jax python bench/gpu_robust_train.py --model clean3.keras --data def3.csv \\
        --method pgd_at --epsilon 0.00784314 --steps 10 --rel-stepsize 0.25 --epochs 40 \\
        --out pgd_at_gpu.keras

The CSV's labels are class *indexes* of the model's outputs (0..k-1), not ImageNet ids: a
wrong label stops the run with one line (an out-of-range label gives NaN losses in JAX).
On the H200, leave XLA's autotuning on: ``--xla_gpu_autotune_level=0`` made every step
about 10× slower (measured, docs/results.md). ``GPU_TRAIN_DEBUG=N`` prints the first N
steps' losses and stops.

Not a test, and not a pipeline stage: it prints figures and writes a JSON of them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import advpipe.models.preprocessing  # noqa: E402,F401  (registers the custom layers)
from advpipe.defenses.model import head_of, set_trainable_blocks, trunk_blocks, trunk_of  # noqa: E402

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def load_images(csv_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (uint8 [n, H, W, 3], int32 labels)}`` from a ``file,label,split`` CSV."""
    base = csv_path.parent
    out: dict[str, tuple[list, list]] = {}
    for row in csv.DictReader(open(csv_path)):
        img = np.asarray(Image.open(base / row["file"]).convert("RGB"), dtype=np.uint8)
        xs, ys = out.setdefault(row["split"], ([], []))
        xs.append(img)
        ys.append(int(row["label"]))
    return {k: (np.stack(v[0]), np.asarray(v[1], np.int32)) for k, v in out.items()}


def build(args) -> keras.Model:
    model = keras.models.load_model(args.model, compile=False)
    if args.fc10:  # a 10-class head from the ImageNet classifier's rows of those classes
        fc = np.load(args.fc10)
        trunk = trunk_of(model)
        inputs = keras.Input(model.input_shape[1:], name="rgb_0_1")
        feats = keras.Input((trunk.output_shape[-1],), name="features")
        dense = keras.layers.Dense(fc["kernel"].shape[1], name="logits")
        head = keras.Model(feats, dense(feats), name="head")
        dense.set_weights([fc["kernel"], fc["bias"]])
        model = keras.Model(inputs, head(trunk(inputs)), name="defense")
    trunk = trunk_of(model)
    blocks = set_trainable_blocks(trunk, len(trunk_blocks(trunk)))
    head_of(model).trainable = True
    log(f"trainable blocks: {len(blocks)}; trainable tensors: {len(model.trainable_variables)}")
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a pipeline .keras defense model to start from")
    ap.add_argument("--fc10", default=None, help="npz (kernel, bias): replace the head by these")
    ap.add_argument("--data", required=True, help="CSV file,label,split (paths relative to it)")
    ap.add_argument("--method", choices=("pgd_at", "trades"), default="pgd_at")
    ap.add_argument("--epsilon", type=float, default=2 / 255, help="training ε (L∞, [0, 1])")
    ap.add_argument("--val-epsilon", type=float, default=None, help="monitor ε (default --epsilon)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rel-stepsize", type=float, default=0.25)
    ap.add_argument("--beta", type=float, default=6.0)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--budget", type=float, default=1e9, help="training seconds at most")
    ap.add_argument("--eps", type=float, nargs="+", default=[1 / 255, 2 / 255, 4 / 255])
    ap.add_argument("--strong-eps", type=float, default=2 / 255)
    ap.add_argument("--strong-steps", type=int, default=50)
    ap.add_argument("--strong-restarts", type=int, default=5)
    ap.add_argument("--eval-batch", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="the trained .keras model")
    ap.add_argument("--json", default=None, help="figures (default: <out stem>.result.json)")
    args = ap.parse_args()
    val_eps = args.val_epsilon or args.epsilon

    log(f"jax {jax.__version__} on {jax.devices()}; keras {keras.__version__}")
    data = load_images(Path(args.data))
    log("data: " + ", ".join(f"{k} {len(v[1])}" for k, v in data.items()))
    model = build(args)
    n_out = model.output_shape[-1]
    for split, (_, ys) in data.items():
        if ys.min() < 0 or ys.max() >= n_out:
            sys.exit(
                f"{args.data}: {split} labels must be class indexes in [0, {n_out}), "
                f"got {ys.min()}..{ys.max()}"
            )
    tvars, ntvars = model.trainable_variables, model.non_trainable_variables
    tv = [v.value for v in tvars]
    ntv = [v.value for v in ntvars]

    def logits_fn(params, x):
        return model.stateless_call(params, ntv, x, training=False)[0]

    def ce(logits, y):
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]

    def project(xa, x, eps):
        return jnp.clip(jnp.clip(xa, x - eps, x + eps), 0.0, 1.0)

    def sign_ascent(loss, xa, x, eps, steps, rel):
        """``steps`` signed-gradient steps of ``rel``·ε on ``loss`` from ``xa``, each projected
        onto the ε-ball around ``x`` and [0, 1]: the inner loop of PGD-AT and TRADES."""
        grad = jax.grad(loss)

        def body(_, xa):
            return project(xa + rel * eps * jnp.sign(grad(xa)), x, eps)

        return jax.lax.fori_loop(0, steps, body, xa)

    def pgd(params, x, y, eps, steps, rel, key):
        xa = project(x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps), x, eps)
        return sign_ascent(lambda z: ce(logits_fn(params, z), y).sum(), xa, x, eps, steps, rel)

    def trades_x(params, x, eps, steps, rel, key):
        p_clean = jax.lax.stop_gradient(jax.nn.softmax(logits_fn(params, x)))

        def kl(z):
            lq = jax.nn.log_softmax(logits_fn(params, z))
            return jnp.sum(p_clean * (jnp.log(jnp.clip(p_clean, 1e-12)) - lq))

        xa = jnp.clip(x + 0.001 * jax.random.normal(key, x.shape), 0.0, 1.0)
        return sign_ascent(kl, xa, x, eps, steps, rel)

    def augment(x, key):
        """Reflect-pad 4, random crop back to size, flip with probability ½ (per image)."""
        n, h, w, _ = x.shape
        k1, k2 = jax.random.split(key)
        off = jax.random.randint(k1, (n, 2), 0, 9)
        flip = jax.random.bernoulli(k2, 0.5, (n,))
        padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")

        def one(img, o, f):
            c = jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, 3))
            return jnp.where(f, c[:, ::-1], c)

        return jax.vmap(one)(padded, off, flip)

    b1, b2, adam_eps = 0.9, 0.999, 1e-7  # keras.optimizers.Adam's defaults

    @jax.jit
    def train_step(params, m, v, t, x8, y, eps, lr, key):
        x = augment(x8.astype(jnp.float32) / 255.0, jax.random.fold_in(key, 1))
        ka = jax.random.fold_in(key, 2)
        if args.method == "pgd_at":
            xa = jax.lax.stop_gradient(pgd(params, x, y, eps, args.steps, args.rel_stepsize, ka))

            def loss_fn(p):
                lg = logits_fn(p, xa)
                return ce(lg, y).mean(), lg
        else:
            xa = jax.lax.stop_gradient(trades_x(params, x, eps, args.steps, args.rel_stepsize, ka))

            def loss_fn(p):
                lc = logits_fn(p, x)
                la = logits_fn(p, xa)
                pc = jax.nn.softmax(lc)
                kl = jnp.sum(pc * (jax.nn.log_softmax(lc) - jax.nn.log_softmax(la)), axis=1)
                return (ce(lc, y) + args.beta * kl).mean(), la

        (loss, lg), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        t = t + 1
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        lr_t = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        params = [p - lr_t * mi / (jnp.sqrt(vi) + adam_eps) for p, mi, vi in zip(params, m, v)]
        acc = jnp.mean(jnp.argmax(lg, axis=1) == y)
        return params, m, v, t, loss, acc

    @jax.jit
    def pgd_fails(params, x8, y, eps, key, steps):
        """Per image: PGD (``steps`` a traced count: one compilation) leaves it correct."""
        x = x8.astype(jnp.float32) / 255.0
        xa = pgd(params, x, y, eps, steps, 0.25, key)
        return jnp.argmax(logits_fn(params, xa), axis=1) == y

    def robust_batch(params, x8, y, eps, key, steps: int, restarts: int):
        """Per image: clean-correct and every PGD start fails."""
        ok = clean_batch(params, x8, y)
        for r in range(restarts):
            ok = ok & pgd_fails(params, x8, y, eps, jax.random.fold_in(key, r), jnp.int32(steps))
        return ok

    @jax.jit
    def clean_batch(params, x8, y):
        return jnp.argmax(logits_fn(params, x8.astype(jnp.float32) / 255.0), axis=1) == y

    def accuracy(params, split, eps=None, steps=10, restarts=1, seed=0):
        xs, ys = data[split]
        n, bs, hits = len(ys), args.eval_batch, []
        for i in range(0, n, bs):
            xb, yb = xs[i : i + bs], ys[i : i + bs]
            k = len(yb)
            if k < bs:  # pad to the compiled shape; the padding is not counted
                xb = np.concatenate([xb, np.repeat(xb[-1:], bs - k, 0)])
                yb = np.concatenate([yb, np.repeat(yb[-1:], bs - k, 0)])
            if eps is None:
                ok = clean_batch(params, xb, yb)
            else:
                key = jax.random.PRNGKey(seed * 100003 + i)
                ok = robust_batch(
                    params, xb, yb, jnp.float32(eps), key, steps=steps, restarts=restarts
                )
            hits.append(np.asarray(ok)[:k])
        return float(np.concatenate(hits).mean())

    xtr, ytr = data["train"]
    n_train, bs = len(ytr), args.batch_size
    steps_per_epoch = n_train // bs
    warmup = max(1, int(round(args.warmup_epochs * steps_per_epoch)))
    epochs = args.epochs
    rng = np.random.default_rng(args.seed)
    m = [jnp.zeros_like(p) for p in tv]
    v = [jnp.zeros_like(p) for p in tv]
    t = jnp.int32(0)
    params = tv
    has_val = "val" in data
    best = (-1.0, 0, params)
    curve = []
    log(
        f"method {args.method}: ε {args.epsilon:.6f} (val {val_eps:.6f}), {args.steps} steps of "
        f"{args.rel_stepsize}·ε, batch {bs}, {steps_per_epoch} steps/epoch, lr {args.lr} cosine, "
        f"ramp {warmup} steps, {epochs} epochs planned, budget {args.budget:.0f} s"
    )
    train_start = time.time()
    step = 0
    epoch = 0
    while epoch < epochs:
        t_ep = time.time()
        order = rng.permutation(n_train)
        losses, accs = [], []
        for s in range(steps_per_epoch):
            idx = order[s * bs : (s + 1) * bs]
            eps = args.epsilon * min(1.0, (step + 1) / warmup)
            total = epochs * steps_per_epoch
            lr = args.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
            key = jax.random.PRNGKey(args.seed * 1_000_003 + step)
            params, m, v, t, loss, acc = train_step(
                params, m, v, t, xtr[idx], ytr[idx], jnp.float32(eps), jnp.float32(lr), key
            )
            losses.append(loss)
            if os.environ.get("GPU_TRAIN_DEBUG"):
                log(
                    f"step {step}: loss {float(loss):.4f} acc {float(acc):.3f} "
                    f"eps {eps:.5f} lr {lr:.2e}"
                )
                if step + 1 >= int(os.environ["GPU_TRAIN_DEBUG"]):
                    return 0
            accs.append(acc)
            step += 1
        loss_ep = float(np.mean([float(x) for x in losses]))
        acc_ep = float(np.mean([float(x) for x in accs]))
        entry = {"epoch": epoch + 1, "loss": loss_ep, "train_adv_acc": acc_ep, "eps": eps, "lr": lr}
        if has_val:
            entry["val_clean"] = accuracy(params, "val")
            entry["val_pgd10"] = accuracy(params, "val", val_eps, 10, 1, seed=epoch + 1)
            if entry["val_pgd10"] > best[0]:
                best = (entry["val_pgd10"], epoch + 1, params)
        else:
            best = (float("nan"), epoch + 1, params)
        entry["seconds"] = time.time() - t_ep
        curve.append(entry)
        log(
            "epoch "
            + json.dumps({k: round(x, 4) if isinstance(x, float) else x for k, x in entry.items()})
        )
        epoch += 1
        if epoch == 2:  # the first epoch's time includes compilation: plan from the second
            per = time.time() - t_ep
            fit = epoch + int((args.budget - (time.time() - train_start)) // max(per, 1e-3))
            if fit < epochs:
                log(f"budget: {fit} epochs fit, not {epochs}; the cosine schedule is re-planned")
                epochs = max(fit, epoch)
        if time.time() - train_start > args.budget and epoch < epochs:
            log(f"budget spent after {epoch} epochs")
            epochs = epoch
    train_s = time.time() - train_start
    params = best[2]
    log(f"training {train_s:.0f} s; best epoch {best[1]} (val PGD-10 {best[0]:.4f})")

    for var, value in zip(tvars, params):
        var.assign(value)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)  # before the evaluation, so that an interrupted run keeps the model
    result_path = Path(args.json or out.with_name(out.stem + ".result.json"))
    result = {
        "args": vars(args),
        "epochs_run": epoch,
        "best_epoch": best[1],
        "train_seconds": train_s,
        "curve": curve,
        "test": {},
    }
    result_path.write_text(json.dumps(result, indent=1))
    log(f"saved {out}")
    t_eval = time.time()
    test = result["test"]
    test["n"] = int(len(data["test"][1]))

    def record(key, value):
        test[key] = value
        result_path.write_text(json.dumps(result, indent=1))  # each figure as soon as known
        log(f"test {key}: {value:.4f}")

    record("clean", accuracy(params, "test"))
    record(
        f"pgd{args.strong_steps}x{args.strong_restarts}_{args.strong_eps:.6f}",
        accuracy(params, "test", args.strong_eps, args.strong_steps, args.strong_restarts, seed=11),
    )
    for e in args.eps:
        record(f"pgd10_{e:.6f}", accuracy(params, "test", e, 10, 1, seed=7))
    result["eval_seconds"] = time.time() - t_eval
    log("test " + json.dumps(test))

    result_path.write_text(json.dumps(result, indent=1))
    log(f"eval {result['eval_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
