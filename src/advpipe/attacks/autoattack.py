"""AutoAttack (Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690): the protocol.

An ensemble of four diverse, parameter-free attacks run as a cascade: each attack runs
only on the images every earlier attack failed on, and an image counts as robust only
if every attack fails on it. ``version="standard"`` is the authors' configuration:

=================  ===============================================================
``apgd-ce``        APGD, cross-entropy, 100 steps, 1 restart (:mod:`.apgd`)
``apgd-t``         APGD, targeted DLR loss, 100 steps, 9 target classes
``fab-t``          FAB-T, targeted, 100 steps, 9 target classes (:mod:`.fab`)
``square``         Square, 5,000 queries, p_init 0.8 (:mod:`.square`), no gradients
=================  ===============================================================

Few classes: targeted DLR uses the 4th-largest logit, so with 3 classes ``apgd-t`` is
replaced by ``apgd-dlr`` (untargeted DLR) and ``apgd-ce-t`` (targeted cross-entropy on
each other class), and the run is marked non-standard; with 2 classes APGD uses
cross-entropy only. ``version="custom"`` runs any list of the components below with the
options given.

The result keeps, per image, which attack broke it (or that the model misclassified it
clean), the count each attack broke, the final robust accuracy, and the float64 norms of
every adversarial example (each asserted ≤ ε). :func:`sanity_checks` are the authors'
checks of the model (random outputs, probabilities instead of logits, zero gradients);
:func:`square_warning` the check that the gradient-free Square attack did not lower
robust accuracy further than the gradient attacks (a sign of gradient masking).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..metrics import Timer
from .bounded import check_norm, check_norms

VERSIONS = ("standard", "custom")


@dataclass(frozen=True)
class Component:
    """One attack of the cascade: a bounded attack class and fixed options."""

    module: str  # under advpipe.attacks
    cls: str
    fixed: tuple[tuple[str, object], ...] = ()  # options the component always sets
    gradient_free: bool = False
    min_classes: int = 2

    def build(self, model, *, norm: str, seed: int, **options):
        attack = getattr(importlib.import_module(f"advpipe.attacks.{self.module}"), self.cls)
        return attack(model, norm=norm, seed=seed, **dict(self.fixed), **options)


#: Every component, by the name reports use. Registered once: params, docs and the
#: stages ask this dict.
COMPONENTS: dict[str, Component] = {
    "apgd-ce": Component("apgd", "APGD", (("loss", "ce"),)),
    "apgd-dlr": Component("apgd", "APGD", (("loss", "dlr"),), min_classes=3),
    "apgd-t": Component("apgd", "APGD", (("loss", "dlr_targeted"),), min_classes=4),
    "apgd-ce-t": Component("apgd", "APGD", (("loss", "ce_targeted"),)),
    "fab-t": Component("fab", "FABTargeted"),
    "square": Component("square", "Square", gradient_free=True),
}

#: The options each component takes from the settings (:class:`Settings`).
_OPTIONS = {
    "apgd": ("steps", "restarts", "n_target_classes"),
    "fab": ("steps", "restarts", "n_target_classes"),
    "square": ("queries", "p_init", "restarts"),
}
_TARGETED = ("apgd-t", "apgd-ce-t", "fab-t")


@dataclass(frozen=True)
class Settings:
    """The options of every component (the authors' defaults)."""

    apgd_steps: int = 100
    apgd_restarts: int = 1
    n_target_classes: int = 9
    fab_steps: int = 100
    fab_restarts: int = 1
    square_queries: int = 5000
    square_p_init: float = 0.8
    square_restarts: int = 1

    def options(self, name: str, num_classes: int) -> dict:
        module = COMPONENTS[name].module
        if module == "apgd":
            out = {"steps": self.apgd_steps, "restarts": self.apgd_restarts}
        elif module == "fab":
            out = {"steps": self.fab_steps, "restarts": self.fab_restarts}
        else:
            return {
                "queries": self.square_queries,
                "p_init": self.square_p_init,
                "restarts": self.square_restarts,
            }
        if name in _TARGETED:
            out["n_target_classes"] = min(self.n_target_classes, num_classes - 1)
        return out


STANDARD = Settings()


def plan(
    version: str, num_classes: int, attacks: Sequence[str] | None = None
) -> tuple[list[str], bool, str]:
    """The cascade to run: ``(component names, standard?, note)``.

    ``standard``: APGD-CE → APGD-T → FAB-T → Square, adapted to fewer than 4 classes
    (then not standard). ``custom``: ``attacks`` as given (each checked against the
    number of classes).
    """
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if num_classes < 2:
        raise ValueError(f"AutoAttack needs at least 2 classes, the model has {num_classes}")
    if version == "custom":
        names = list(attacks or ())
        if not names:
            raise ValueError("a custom AutoAttack needs a non-empty list of attacks")
        for name in names:
            if name not in COMPONENTS:
                raise ValueError(
                    f"unknown AutoAttack component '{name}'; choose from {list(COMPONENTS)}"
                )
            if num_classes < COMPONENTS[name].min_classes:
                raise ValueError(
                    f"'{name}' needs at least {COMPONENTS[name].min_classes} classes, "
                    f"the model has {num_classes}"
                )
        return names, False, "custom attack list"
    if num_classes >= 4:
        return ["apgd-ce", "apgd-t", "fab-t", "square"], True, "standard"
    if num_classes == 3:
        return (
            ["apgd-ce", "apgd-dlr", "apgd-ce-t", "fab-t", "square"],
            False,
            "3 classes: targeted DLR needs 4, so APGD-DLR (untargeted) and targeted-CE "
            "APGD on each other class replace APGD-T (non-standard)",
        )
    return (
        ["apgd-ce", "fab-t", "square"],
        False,
        "2 classes: APGD with cross-entropy only (non-standard)",
    )


@dataclass
class AutoAttackResult:
    """One AutoAttack run at one ε on a set of images."""

    eps: float
    norm: str
    attacks: list[str]
    standard: bool
    note: str
    clean_correct: np.ndarray  # bool [n]
    robust: np.ndarray  # bool [n]: correct clean and no attack succeeded
    broken_by: list[str]  # per image: "" robust, "clean" misclassified clean, or the attack
    max_norm: float  # largest float64 ‖x' − x‖ over the adversarial examples found
    seconds: dict[str, float] = field(default_factory=dict)
    queries: dict[str, float] = field(default_factory=dict)  # mean model calls per attacked image

    @property
    def n_images(self) -> int:
        return len(self.robust)

    def per_attack(self) -> list[dict]:
        """Per stage of the cascade: images attacked, broken, and robust accuracy after
        (no wall-clock time: that is in :attr:`seconds`, which metrics files leave out)."""
        rows, alive = [], int(np.sum(self.clean_correct))
        for name in self.attacks:
            broken = sum(1 for b in self.broken_by if b == name)
            rows.append(
                {
                    "attack": name,
                    "attacked": alive,
                    "broken": broken,
                    "robust_after": (alive - broken) / self.n_images if self.n_images else 0.0,
                }
            )
            alive -= broken
        return rows

    def to_dict(self) -> dict:
        n = self.n_images
        return {
            "eps": self.eps,
            "norm": self.norm,
            "attacks": self.attacks,
            "standard": self.standard,
            "note": self.note,
            "n_images": n,
            "clean_top1": float(np.mean(self.clean_correct)) if n else 0.0,
            "robust_top1": float(np.mean(self.robust)) if n else 0.0,
            "per_attack": self.per_attack(),
            "max_norm": self.max_norm,
            "broken_by": list(self.broken_by),
            "queries": self.queries,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> AutoAttackResult:
        broken_by = list(d["broken_by"])
        return cls(
            eps=float(d["eps"]),
            norm=d["norm"],
            attacks=list(d["attacks"]),
            standard=bool(d["standard"]),
            note=d["note"],
            clean_correct=np.array([b != "clean" for b in broken_by], dtype=bool),
            robust=np.array([b == "" for b in broken_by], dtype=bool),
            broken_by=broken_by,
            max_norm=float(d["max_norm"]),
            seconds=dict(d.get("seconds", {})),
            queries=dict(d.get("queries", {})),
        )


def _predict(forward, images, batch_size):
    from ..inference import iterate_batches

    out = []
    for _, x, _ in iterate_batches(images, np.zeros(len(images), np.int64), batch_size):
        out.append(forward(x).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def autoattack(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    eps: float,
    *,
    norm: str = "linf",
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    settings: Settings = STANDARD,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    checkpoint=None,
) -> AutoAttackResult:
    """Run the AutoAttack cascade on ``(images, labels)`` at one ``eps``.

    ``images``: uint8 or float [0, 1] NHWC; ``labels``: the model's output indices.
    ``version="standard"`` ignores ``attacks`` and ``settings`` (the authors' defaults);
    ``"custom"`` runs ``attacks`` with ``settings``. ``checkpoint``: an
    :class:`advpipe.resume.Checkpoint` (``load()``/``save(state)``) for this model, these
    images, ε and settings; the state is saved after each batch, and a run that finds one
    goes on from it: the images an attack already ran on are not attacked again (the
    per-image seeds make the result that of an uninterrupted run).
    """
    from ..data.images import to_unit_float
    from ..inference import compiled_forward

    norm = check_norm(norm)
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    labels = np.asarray(labels, dtype=np.int64)
    forward = compiled_forward(model)
    logits = _predict(forward, images, batch_size)
    num_classes = int(model.output_shape[-1])
    names, standard, note = plan(version, num_classes, attacks)
    if version == "standard":
        settings = STANDARD
    n = len(images)
    clean = logits.argmax(1) == labels if n else np.zeros(0, bool)
    broken_by = ["" if c else "clean" for c in clean]
    max_norm = 0.0
    seconds: dict[str, float] = {}
    queries: dict[str, float] = {}
    spent_by: dict[str, list] = {}  # per attack: the queries of each image it attacked
    ran_on: dict[str, list] = {}  # per attack: the images it has run on
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None and len(state["broken_by"]) == n:
        broken_by, max_norm = list(state["broken_by"]), float(state["max_norm"])
        seconds, spent_by = dict(state["seconds"]), dict(state["spent"])
        ran_on = {k: list(v) for k, v in state["ran_on"].items()}
        say(
            f"[autoattack eps {eps:.4g}] resumed from an interrupted run: "
            + ", ".join(f"{k} {len(v)} images" for k, v in ran_on.items())
        )
    for name in names:
        skip = set(ran_on.setdefault(name, []))
        alive = np.array(
            [i for i, b in enumerate(broken_by) if b == "" and i not in skip], np.int64
        )
        attack = COMPONENTS[name].build(
            model, norm=norm, seed=seed, **settings.options(name, num_classes)
        )
        timer, done = Timer(), 0
        timer.seconds = seconds.get(name, 0.0)
        spent = spent_by.setdefault(name, [])
        for start in range(0, len(alive), batch_size):
            idx = alive[start : start + batch_size]
            x = to_unit_float(images[idx])
            with timer:
                result = attack.run(x, labels[idx], float(eps), index=idx)
            fooled = np.asarray(result.success, bool)
            if fooled.any():
                adv = np.asarray(result.adversarial)[fooled]
                # the adversarial must really be misclassified and within eps (float64)
                norms = check_norms(x[fooled], adv, float(eps), norm)
                max_norm = max(max_norm, float(norms.max()))
                wrong = forward(adv).numpy().argmax(1) != labels[idx][fooled]
                if not wrong.all():
                    raise AssertionError(
                        f"{name} reported success on images {idx[fooled][~wrong].tolist()} "
                        "whose adversarial example is classified correctly"
                    )
                for i in idx[fooled]:
                    broken_by[i] = name
            if result.queries is not None:
                spent.extend(np.asarray(result.queries).tolist())
            done += len(idx)
            ran_on[name].extend(idx.tolist())
            seconds[name] = timer.seconds
            if checkpoint is not None:
                checkpoint.save(
                    {
                        "broken_by": broken_by,
                        "max_norm": max_norm,
                        "seconds": seconds,
                        "spent": spent_by,
                        "ran_on": ran_on,
                    }
                )
            robust_now = sum(1 for b in broken_by if b == "")
            say(
                f"[autoattack {name} eps {eps:.4g}] {done}/{len(alive)} images, "
                f"robust so far {robust_now}/{n}, "
                f"{done / max(timer.seconds, 1e-9):.2f} img/s"
            )
        seconds[name] = timer.seconds
        if spent:
            queries[name] = float(np.mean(spent))
    robust = np.array([b == "" for b in broken_by], dtype=bool)
    return AutoAttackResult(
        eps=float(eps),
        norm=norm,
        attacks=names,
        standard=standard,
        note=note,
        clean_correct=clean,
        robust=robust,
        broken_by=broken_by,
        max_norm=max_norm,
        seconds=seconds,
        queries=queries,
    )


# ------------------------------------------------------------------ the checks
def square_warning(result: AutoAttackResult, threshold: float = 0.002) -> dict:
    """The authors' check: gradient-free attacks must not lower robust accuracy further
    than the gradient attacks before them. Square breaking more than ``threshold`` (0.2
    points) of the images the gradient attacks could not is a masking warning."""
    gradient_free = [a for a in result.attacks if COMPONENTS[a].gradient_free]
    broken = sum(1 for b in result.broken_by if b in gradient_free)
    share = broken / result.n_images if result.n_images else 0.0
    return {
        "broken_by_gradient_free": broken,
        "share": share,
        "threshold": threshold,
        "warning": bool(share > threshold),
    }


def sanity_checks(model, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 32) -> dict:
    """The authors' checks of a model before AutoAttack (``autoattack/checks.py``).

    * ``random_outputs``: two forward passes on the same images differ (randomised
      defenses need EOT; AutoAttack's numbers would not hold);
    * ``probabilities``: the outputs look like probabilities (each row in [0, 1] summing
      to 1), not logits (the DLR loss and the gradients then saturate: masking);
    * ``zero_gradients``: the share of images whose cross-entropy input gradient is
      exactly zero (no signal for a gradient attack).
    Each flag is stored and shown; none stops the run.
    """
    import tensorflow as tf

    from ..attacks.base import LossGradient
    from ..data.images import to_unit_float

    x = to_unit_float(images[:batch_size])
    y = np.asarray(labels[: len(x)], dtype=np.int64)
    if not len(x):
        return {
            "random_outputs": False,
            "probabilities": False,
            "zero_gradients": 0.0,
            "warnings": [],
        }
    a = model(tf.constant(x), training=False).numpy()
    b = model(tf.constant(x), training=False).numpy()
    random_outputs = bool(np.abs(a - b).max() > 1e-5 * max(1.0, np.abs(a).max()))
    probabilities = bool(a.min() >= 0 and a.max() <= 1 and np.allclose(a.sum(1), 1.0, atol=1e-4))
    _, grad = LossGradient(model)(x, y)
    flat = np.zeros(len(x)) if grad is None else np.abs(grad.numpy()).reshape(len(x), -1).max(1)
    zero = float(np.mean(flat == 0))
    warnings = []
    if random_outputs:
        warnings.append("the model's outputs are random (two passes differ): use EOT")
    if probabilities:
        warnings.append("the outputs look like probabilities, not logits: possible masking")
    if zero > 0:
        warnings.append(f"{zero:.0%} of the images have an all-zero input gradient")
    return {
        "random_outputs": random_outputs,
        "probabilities": probabilities,
        "zero_gradients": zero,
        "warnings": warnings,
    }


def autoattack_epsilons(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    epsilons: Sequence[float],
    *,
    store=None,
    progress: Callable[[str], None] | None = None,
    **options,
) -> dict[float, AutoAttackResult]:
    """:func:`autoattack` at every ε. With ``store`` (a :class:`advpipe.resume.PerEpsilonStore`,
    e.g. from :func:`resume_store`), each finished ε is written there and an ε found there
    (from a run that was interrupted) is not computed again, and an ε left unfinished goes
    on from its last finished batch; the caller clears the store once its outputs are
    written."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = {}
    for eps in sorted(float(e) for e in epsilons):
        cached = store.get(eps) if store is not None else None
        if cached is not None:
            say(f"[autoattack] eps {eps:.4g}: resumed from an interrupted run ({store.path})")
            out[eps] = AutoAttackResult.from_dict(cached)
            continue
        checkpoint = store.partial(eps) if store is not None else None
        out[eps] = autoattack(
            model, images, labels, eps, progress=say, checkpoint=checkpoint, **options
        )
        if store is not None:
            store.put(eps, out[eps].to_dict())
    return out


def apgd_ce_correct(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    eps: float,
    *,
    settings: Settings = STANDARD,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Correct after APGD-CE (L∞, ``settings``' steps and restarts), per image: the check
    that APGD-CE is not weaker than PGD at ε where AutoAttack does not run."""
    result = autoattack(
        model,
        images,
        labels,
        eps,
        norm="linf",
        version="custom",
        attacks=["apgd-ce"],
        settings=settings,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    return result.robust


def resume_store(directory, name: str, model, images, labels, options: Mapping):
    """Where :func:`autoattack_epsilons` keeps finished ε: ``directory/<name>-<hash>``, the
    hash over the model's weights, the images, labels, ``options`` and the attack code (a
    change of any starts afresh: a model retrained under the same name after an interrupted
    run reuses nothing)."""
    from pathlib import Path

    from ..resume import PerEpsilonStore, fingerprint

    settings = {
        k: (vars(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in options.items()
    }
    weights = [(w.path, np.asarray(w)) for w in model.weights]
    key = fingerprint(
        name,
        [path for path, _ in weights],
        *(value for _, value in weights),
        np.asarray(images),
        np.asarray(labels),
        settings,
        Path(__file__).parent,
    )
    return PerEpsilonStore(directory, f"{name}-{key}")
