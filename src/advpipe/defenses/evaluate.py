"""Robustness of one defense model, measured honestly (Carlini et al. 2019).

On the same test images for every attack, ε and model:

* clean top-1;
* **white-box** top-1 under every ε-attack (one-step and PGD), the examples crafted
  against this model itself;
* **transfer** top-1: the same attacks crafted on a source model (the clean head)
  and evaluated on this one;
* DeepFool success and ρ₂ (eq. 14) against this model;
* **AutoAttack** (:mod:`advpipe.attacks.autoattack`) robust accuracy at the ε asked for,
  which attack broke each image, and the **per-image worst case** over AutoAttack and
  PGD (an image counts as robust only if both fail on it): the headline figure;
* the **gradient-masking checks** of :func:`advpipe.metrics.masking_checks` as paired
  tests on the same images, plus APGD-CE against PGD at every ε (APGD significantly
  weaker: a flag) and Square against the gradient attacks (Square breaking what they
  could not: masking).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..inference import iterate_batches
from ..metrics import Timer, TopKCounter, masking_checks, paired_test


def _eps_key(e: float) -> str:
    return f"{e:g}"


def attack_accuracies(
    attacks: Mapping[str, object],
    target,
    images,
    labels,
    epsilons: Sequence[float],
    batch_size: int,
    progress: Callable[[str], None],
    tag: str,
) -> tuple[dict, float]:
    """Top-1 of ``target`` on examples from each attack (crafted on the attack's own model).

    Returns ``({attack: {eps: bool per image, correct after the attack}}, clean top-1 of
    the attacks' source model)``; the attack's model is ``target`` for white-box, another
    model for transfer.
    """
    from ..inference import compiled_forward

    forward = compiled_forward(target)
    correct = {name: {e: [] for e in epsilons} for name in attacks}
    source_clean = TopKCounter()
    timer = Timer()
    for start, x, y in iterate_batches(images, labels, batch_size):
        with timer:
            index = np.arange(start, start + len(x))
            for j, (name, attack) in enumerate(attacks.items()):
                prepared = attack.prepare(x, y, index=index)
                if j == 0:
                    source_clean.update(prepared.clean_logits.numpy(), y)
                for e in epsilons:
                    logits = forward(attack.perturb(prepared, e)).numpy()
                    correct[name][e].append(logits.argmax(1) == y)
        progress(
            f"[{tag}] {start + len(x)}/{len(images)} images, {len(attacks)} attacks x "
            f"{len(epsilons)} eps, {timer.seconds:.0f} s"
        )
    return (
        {
            name: {
                _eps_key(e): np.concatenate(c) if c else np.zeros(0, bool) for e, c in per.items()
            }
            for name, per in correct.items()
        },
        source_clean.as_dict()["top1"],
    )


def _top1(per_image: dict) -> dict:
    return {
        name: {eps: float(np.mean(c)) if len(c) else 0.0 for eps, c in per.items()}
        for name, per in per_image.items()
    }


def apgd_vs_pgd(apgd_correct, pgd_correct, alpha: float) -> dict:
    """APGD-CE against PGD on the same images: each one's top-1, the exact paired test
    (:func:`paired_test`) and ``apgd_weaker`` (APGD-CE significantly weaker at level
    ``alpha``: a masking flag, since APGD-CE is the stronger attack when gradients work)."""
    apgd_correct = np.asarray(apgd_correct, bool)
    pgd_correct = np.asarray(pgd_correct, bool)
    t = paired_test(apgd_correct, pgd_correct)
    return {
        "apgd_ce_top1": float(np.mean(apgd_correct)) if len(apgd_correct) else 0.0,
        "pgd_top1": float(np.mean(pgd_correct)) if len(pgd_correct) else 0.0,
        **t,
        "apgd_weaker": bool(t["p_value"] < alpha),
    }


def apgd_weaker_flag(check: dict, eps_key: str) -> str:
    """The masking flag's line for an :func:`apgd_vs_pgd` result with ``apgd_weaker``."""
    return (
        f"APGD-CE {check['apgd_ce_top1']:.3f} > PGD {check['pgd_top1']:.3f} at eps {eps_key} "
        f"(paired p = {check['p_value']:.2g}): APGD weaker than PGD"
    )


def autoattack_summary(result, pgd_correct, alpha: float) -> dict:
    """One AutoAttack run beside PGD on the same images: robust accuracy, per-attack
    counts, the per-image worst case over both, APGD-CE vs PGD (paired test) and the
    Square warning."""
    from ..attacks.autoattack import square_warning

    d = result.to_dict()
    out = {k: d[k] for k in ("robust_top1", "per_attack", "standard", "note", "max_norm")}
    if pgd_correct is not None:
        worst = result.robust & np.asarray(pgd_correct, bool)
        out["pgd_top1"] = float(np.mean(pgd_correct)) if len(worst) else 0.0
        out["worst_case_top1"] = float(np.mean(worst)) if len(worst) else 0.0
        out["pgd_only"] = int(np.sum(result.robust & ~np.asarray(pgd_correct, bool)))
        if result.attacks and result.attacks[0] == "apgd-ce":
            apgd_correct = [b not in ("clean", "apgd-ce") for b in result.broken_by]
            out["apgd_ce_vs_pgd"] = apgd_vs_pgd(apgd_correct, pgd_correct, alpha)
    else:
        out["worst_case_top1"] = d["robust_top1"]
    out["square"] = square_warning(result)
    return out


def evaluate_defense(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    whitebox: Mapping[str, object],
    transfer: Mapping[str, object] | None,
    epsilons: Sequence[float],
    deepfool_options: Mapping,
    batch_size: int = 32,
    chance: float,
    margin: float,
    alpha: float = 0.05,
    autoattack: Callable | None = None,
    apgd_ce: Callable | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Every measurement above for ``model`` on ``(images, labels)`` (labels: its class ids).

    ``whitebox``: attacks built on ``model``; ``transfer``: the same attacks built on the
    source model (``None`` when ``model`` is the source). ``autoattack``: ``None``, or a
    callable ``(model, images, labels) -> {eps: AutoAttackResult}`` (e.g.
    :func:`advpipe.attacks.autoattack.autoattack_epsilons` with its options bound).
    ``apgd_ce``: ``None``, or a callable ``(model, images, labels, eps) -> bool per image``
    (correct after APGD-CE); it runs at every ε where AutoAttack did not already start with
    APGD-CE, and each ε's result is compared with PGD's by the paired test
    (``apgd_ce_vs_pgd``; APGD-CE significantly weaker is a masking flag).
    Returns nested, JSON-ready metrics and a timing dict under ``"_seconds"``.
    """
    from ..attacks.deepfool import deepfool
    from ..runtime import require_float32

    require_float32(model, "the defense evaluation")
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    epsilons = sorted(float(e) for e in epsilons)
    seconds = {}
    with Timer() as t:
        wb, clean = attack_accuracies(
            whitebox, model, images, labels, epsilons, batch_size, say, "white-box"
        )
    seconds["whitebox"] = t.seconds
    out: dict = {
        "n_images": int(len(images)),
        "clean_top1": clean,
        "epsilons": [_eps_key(e) for e in epsilons],
        "whitebox": _top1(wb),
    }
    tr = None
    if transfer:
        with Timer() as t:
            tr, out["transfer_source_clean_top1"] = attack_accuracies(
                transfer, model, images, labels, epsilons, batch_size, say, "transfer"
            )
        seconds["transfer"] = t.seconds
        out["transfer"] = _top1(tr)
    else:
        out["transfer"] = None
    with Timer() as t:
        df = deepfool(model, images, labels, progress=say, **deepfool_options).to_metrics()
    seconds["deepfool"] = t.seconds
    out["deepfool"] = {
        k: df[k]
        for k in (
            "success_rate",
            "success_rate_on_correct",
            "n_correct",
            "rho2",
            "l2_median",
            "l2_mean",
        )
    }
    out["deepfool"]["top1_after"] = df["adversarial"]["top1"]
    out["masking"] = masking_checks(wb, tr, chance=chance, margin=margin, alpha=alpha)
    out["autoattack"] = None
    if autoattack is not None:
        with Timer() as t:
            runs = autoattack(model, images, labels)
        seconds["autoattack"] = t.seconds
        for e, r in runs.items():
            for attack, sec in r.seconds.items():
                seconds[f"autoattack_{_eps_key(e)}_{attack}"] = sec
        pgd = wb.get("pgd", {})
        out["autoattack"] = {
            _eps_key(e): autoattack_summary(r, pgd.get(_eps_key(e)), alpha) for e, r in runs.items()
        }
        for e, summary in out["autoattack"].items():
            if summary.get("apgd_ce_vs_pgd", {}).get("apgd_weaker"):
                out["masking"]["flags"].append(apgd_weaker_flag(summary["apgd_ce_vs_pgd"], e))
                out["masking"]["passed"] = False
            if summary["square"]["warning"]:
                q = summary["square"]
                out["masking"]["flags"].append(
                    f"Square broke {q['broken_by_gradient_free']} image(s) the gradient "
                    f"attacks could not at eps {e} (> {q['threshold']:.1%}): gradient masking"
                )
                out["masking"]["passed"] = False
    pgd = wb.get("pgd")
    out["apgd_ce_vs_pgd"] = None
    if apgd_ce is not None and pgd is not None:
        out["apgd_ce_vs_pgd"] = {}
        with Timer() as t:
            for e in epsilons:
                key = _eps_key(e)
                summary = (out["autoattack"] or {}).get(key, {}).get("apgd_ce_vs_pgd")
                if summary is None:  # else AutoAttack's own APGD-CE, flagged above if weaker
                    summary = apgd_vs_pgd(apgd_ce(model, images, labels, e), pgd[key], alpha)
                    if summary["apgd_weaker"]:
                        out["masking"]["flags"].append(apgd_weaker_flag(summary, key))
                        out["masking"]["passed"] = False
                out["apgd_ce_vs_pgd"][key] = summary
                say(
                    f"[apgd-ce vs pgd] eps {key}: APGD-CE {summary['apgd_ce_top1']:.3f}, PGD "
                    f"{summary['pgd_top1']:.3f}, paired p = {summary['p_value']:.2g}"
                )
        seconds["apgd_ce"] = t.seconds
    out["_seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return out
