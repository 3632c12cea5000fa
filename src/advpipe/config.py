"""Load and validate ``params.yaml``.

Every hyperparameter of the pipeline lives in ``params.yaml``. Stage scripts call
:func:`load_params` once at start-up; it checks the whole file against
:data:`SCHEMA` and fails with a :class:`ParamsError` that names the offending key
and the allowed values, before any expensive work starts.

This is the params layer, and the one home of every key: its allowed values, its
default and its description (``docs/parameters.md`` is generated from :data:`SCHEMA` by
``tools/params_doc.py``). The library never reads ``params.yaml`` and nothing else
under ``src/advpipe/`` imports this module: stage scripts (``stages/wiring.py``) turn
params into plain values. Defaults of optional keys that the library applies when a
key is absent are read here from the library's own dataclasses, not written twice.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .attacks import registry as _attack_registry
from .defenses import registry as _defense_registry
from .models import registry as _model_registry
from .runtime import STRATEGIES as _STRATEGIES


class ParamsError(ValueError):
    """A parameter is missing or has a value the pipeline cannot use."""


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """How to check one dotted key: ``check(value) -> error text or None``.

    ``kind`` says what the rule allows (the parameter reference shows it); a schema
    entry also carries the key's ``default`` (the value ``params.yaml`` ships with, or
    the value used when an optional key is absent) and a one-line ``doc``.
    """

    check: Callable[[Any], str | None]
    required: bool = True
    kind: str = ""
    default: Any = None
    doc: str = ""


def param(rule: Rule, default: Any, doc: str) -> Rule:
    """``rule`` with the key's default value and its one-line description."""
    return replace(rule, default=default, doc=doc)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _interval(lo: Any, hi: Any, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" {'>' if lo_open else '≥'} {lo}"
    if lo is None:
        return f" {'<' if hi_open else '≤'} {hi}"
    return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def choice(*allowed: Any, required: bool = True) -> Rule:
    return Rule(
        lambda v: None if v in allowed else f"must be one of {list(allowed)}",
        required,
        "one of " + " \\| ".join(f"`{a}`" for a in allowed),
    )


def integer(lo: int | None = None, hi: int | None = None, required: bool = True) -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return "must be an integer"
        if lo is not None and v < lo:
            return f"must be >= {lo}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None

    return Rule(check, required, "integer" + _interval(lo, hi))


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    required: bool = True,
) -> Rule:
    def check(v: Any) -> str | None:
        if not _is_number(v):
            return "must be a finite number"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and (v >= hi if hi_open else v > hi):
            return f"must be {'<' if hi_open else '<='} {hi}"
        return None

    return Rule(check, required, "number" + _interval(lo, hi, lo_open, hi_open))


def boolean(required: bool = True) -> Rule:
    return Rule(
        lambda v: None if isinstance(v, bool) else "must be true or false",
        required,
        "`true` \\| `false`",
    )


def string(required: bool = True) -> Rule:
    return Rule(
        lambda v: None if isinstance(v, str) and v else "must be a non-empty string",
        required,
        "non-empty string",
    )


def optional_string() -> Rule:
    return Rule(
        lambda v: (
            None
            if v is None or (isinstance(v, str) and v)
            else "must be a non-empty string or null"
        ),
        False,
        "non-empty string or `null`",
    )


def epsilon_list() -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or not v:
            return "must be a non-empty list of numbers in [0, 1]"
        if not all(_is_number(e) and 0 <= e <= 1 for e in v):
            return f"must hold numbers in [0, 1] (a distance in [0, 1] pixel space), got {v}"
        if len(set(v)) != len(v):
            return f"must not repeat a value, got {v}"
        return None

    return Rule(check, kind="non-empty list of distinct ε in [0, 1]")


def int_list(
    lo: int,
    hi: int,
    *,
    required: bool = True,
    unique: bool = True,
    non_empty: bool = False,
    nullable: bool = False,
) -> Rule:
    def check(v: Any) -> str | None:
        if v is None and nullable:
            return None
        if non_empty and v == []:
            return "must be a non-empty list of integers"
        if not isinstance(v, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in v
        ):
            return "must be a list of integers" + (" or null" if nullable else "")
        if not all(lo <= i <= hi for i in v):
            return f"must hold integers in [{lo}, {hi}], got {v}"
        if unique and len(set(v)) != len(v):
            return f"must not repeat a value, got {v}"
        return None

    kind = (
        f"{'non-empty ' if non_empty else ''}list of {'distinct ' if unique else ''}"
        f"integers in [{lo}, {hi}]{' or `null`' if nullable else ''}"
    )
    return Rule(check, required, kind)


def nullable(rule: Rule) -> Rule:
    """``rule`` or null (the key itself must still be present when ``rule`` is required)."""

    def check(v: Any) -> str | None:
        if v is None:
            return None
        err = rule.check(v)
        return f"{err} (or null)" if err else None

    return Rule(check, rule.required, f"{rule.kind} or `null`")


def sha256_hex() -> Rule:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        if (
            not isinstance(v, str)
            or len(v) != 64
            or any(c not in "0123456789abcdefABCDEF" for c in v)
        ):
            return "must be a sha256 digest (64 hexadecimal characters) or null"
        return None

    return Rule(check, kind="SHA-256 digest (64 hex characters) or `null`")


def http_url() -> Rule:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str) or not v.lower().startswith(("http://", "https://")):
            return "must be an http(s) URL or null"
        return None

    return Rule(check, kind="http(s) URL or `null`")


def split_counts() -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, dict) or set(v) != {"train", "val", "test"}:
            return "must be a mapping with exactly the keys train, val, test"
        if not all(_is_number(x) and x >= 0 for x in v.values()) or sum(v.values()) <= 0:
            return "must hold non-negative numbers that do not all equal 0"
        return None

    return Rule(check, kind="mapping `{train, val, test}` of non-negative numbers")


def choice_list(*allowed: Any, required: bool = True) -> Rule:
    """A non-empty list of distinct values, each one of ``allowed``."""

    def check(v: Any) -> str | None:
        if not isinstance(v, list) or not v:
            return f"must be a non-empty list of values from {list(allowed)}"
        bad = [x for x in v if x not in allowed]
        if bad:
            return f"must hold values from {list(allowed)}, got {bad}"
        if len(set(v)) != len(v):
            return f"must not repeat a value, got {v}"
        return None

    return Rule(
        check,
        required,
        "non-empty list of distinct values from " + ", ".join(f"`{a}`" for a in allowed),
    )


def device_list() -> Rule:
    """Null, or a non-empty list of distinct device names (checked against the machine
    when a stage starts: :func:`advpipe.runtime.check_devices`)."""

    def check(v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, list) or not v or not all(isinstance(d, str) and d for d in v):
            return "must be null or a non-empty list of device names such as /gpu:0"
        if len(set(v)) != len(v):
            return f"must not repeat a device, got {v}"
        return None

    return Rule(check, True, "`null` or a non-empty list of device names (`/gpu:0`, `/cpu:0`)")


def optional_positive_int() -> Rule:
    return Rule(
        lambda v: (
            None
            if v is None or (isinstance(v, int) and v >= 1 and not isinstance(v, bool))
            else "must be null or an integer >= 1"
        ),
        False,
        "integer ≥ 1 or `null`",
    )


def optional_fraction() -> Rule:
    return Rule(
        lambda v: (
            None
            if v is None or (_is_number(v) and 0 < v < 1)
            else "must be null or a fraction in (0, 1)"
        ),
        False,
        "number in (0, 1) or `null`",
    )


# --------------------------------------------------------------------------- the schema
ATTACKS = tuple(_attack_registry.ATTACKS)
SOURCES = ("samples", "urls", "folder", "imagenette")
IMAGENETTE_ARCHIVES = ("imagenette2-160", "imagenette2-320", "imagenette2")
SETS = ("attack_set", "defense_set")
MODELS = _model_registry.MODELS
TRANSFER_MODELS = _model_registry.IMAGENET_MODELS
DECISION_ATTACKS = _attack_registry.DECISION_ATTACKS
WEIGHT_FILE_MODELS = _model_registry.KERAS_APPLICATIONS
#: The default ε grid: the proposal's {0.001, 0.005, 0.01, 0.05, 0.1} merged with
#: {1, 2, 4, 8, 16}/255 (the usual 8-bit steps).
EPSILONS = [
    0.001,
    0.00392157,
    0.005,
    0.00784314,
    0.01,
    0.01568627,
    0.03137255,
    0.05,
    0.0627451,
    0.1,
]
#: 1, 2, 4, 8 / 255
EPSILONS_255 = [0.00392157, 0.00784314, 0.01568627, 0.03137255]


def _train_defaults(field_name: str) -> Any:
    """An optional training key's default: the library's TrainConfig field (its one home)."""
    from .defenses.loop import TrainConfig

    return TrainConfig.__dataclass_fields__[field_name].default


def _train_rules(
    optimizer: str,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    patience: int,
    **required: Any,
) -> dict[str, Rule]:
    """The training keys every defense params group has (TrainConfig's fields).

    An optional key given in ``required`` is required in that group, with that default.
    """
    rules = {
        "optimizer": param(choice("adam", "sgd"), optimizer, "`adam`, or `sgd` with `momentum`"),
        "learning_rate": param(number(0, 1, lo_open=True), learning_rate, "learning rate"),
        "momentum": param(
            number(0, 1, required=False), _train_defaults("momentum"), "SGD momentum (optional)"
        ),
        "epochs": param(integer(1, 100000), epochs, "training epochs"),
        "batch_size": param(integer(1, 4096), batch_size, "training batch size (m)"),
        "patience": param(
            integer(0),
            patience,
            "early stopping: epochs without improvement (0: off); the best epoch is kept",
        ),
        "max_steps": param(
            optional_positive_int(),
            _train_defaults("max_steps"),
            "cap on training steps (optional)",
        ),
        "lr_decay_at": param(
            optional_fraction(),
            _train_defaults("lr_decay_at"),
            "halve the learning rate after this fraction of the epochs (optional)",
        ),
        "accumulation_steps": param(
            integer(1, 4096, required=False),
            _train_defaults("accumulation_steps"),
            "gradient accumulation: `batch_size` is the effective batch, run as this many "
            "micro-batches (memory: batch_size / this) (optional)",
        ),
        "lr_schedule": param(
            choice("constant", "cosine", "cyclic", "step", required=False),
            _train_defaults("lr_schedule"),
            "`constant` (with `lr_decay_at`), `cosine` to 0, `cyclic` one-cycle peaking at "
            "`lr_peak_at`, `step` (÷10 at 50 % and 75 %) (optional)",
        ),
        "lr_peak_at": param(
            number(0, 1, required=False),
            _train_defaults("lr_peak_at"),
            "cyclic: the fraction of the steps where the rate peaks (optional)",
        ),
        "augment": param(
            choice("none", "crop_flip", "resized_crop_flip", required=False),
            _train_defaults("augment"),
            "random crop (padded) or resized crop, plus horizontal flip (optional)",
        ),
        "augment_pad": param(
            integer(0, 64, required=False),
            _train_defaults("augment_pad"),
            "crop_flip: pixels of padding on each side (optional)",
        ),
        "augment_padding": param(
            choice("reflect", "zero", required=False),
            _train_defaults("augment_padding"),
            "crop_flip: padding mode (optional)",
        ),
        "crop_scale_min": param(
            number(0, 1, lo_open=True, required=False),
            _train_defaults("crop_scale_min"),
            "resized_crop_flip: smallest area fraction of the crop (optional)",
        ),
    }
    for key, default in required.items():
        rules[key] = replace(
            rules[key],
            required=True,
            default=default,
            doc=rules[key].doc.replace(" (optional)", ""),
        )
    return rules


_ROBUST_METHOD_KEYS = {
    "steps": (integer(1, 1000), "PGD steps that make each training example"),
    "rel_stepsize": (number(0, lo_open=True), "PGD step size relative to ε (Madry: 0.25)"),
    "clean_fraction": (
        number(0, 1, hi_open=True),
        "fraction of each batch left clean (0: every example adversarial)",
    ),
    "beta": (number(0, lo_open=True), "β, the weight of KL(p(x) ‖ p(x′)) (authors: 6)"),
    "alpha": (number(0, lo_open=True), "FGSM step as a multiple of ε (Wong et al.: 1.25)"),
}


def _robust_group(group: str, **method: Any) -> dict[str, Rule]:
    """``defense.<group>`` of a method that trains against an ε-ball attack (PGD-AT, TRADES,
    fast AT): the training keys, ε and its ramp, the val robust accuracy that picks the best
    epoch, the catastrophic-overfitting guard and the method's own keys."""
    rules = {
        **_train_rules("adam", 0.0001, 2, 32, 0, max_steps=4),
        "epsilon": param(
            number(0, 1, lo_open=True), 0.00784314, "training ε (L∞, [0, 1] pixels; 2/255)"
        ),
        "eps_warmup_epochs": param(
            number(0), 1.0, "ε grows linearly from 0 over these epochs (0: full ε at once)"
        ),
        "val_pgd_steps": param(
            integer(1, 1000), 10, "PGD steps of the val robust accuracy (picks the best epoch)"
        ),
        "val_pgd_restarts": param(
            integer(1, 100), 1, "random starts of that PGD (robust only if every one fails)"
        ),
        "guard_checks_per_epoch": param(
            integer(0, 1000),
            4,
            "catastrophic-overfitting guard: PGD accuracy on a held val batch this many "
            "times per epoch (0: off)",
        ),
        "guard_drop": param(
            number(0, 1),
            0.2,
            "the guard stops training and restores the previous check's weights when that "
            "accuracy falls more than this below its best (Wong et al.: 20 points)",
        ),
        "guard_images": param(integer(1, 4096), 32, "the guard's held val batch"),
        "trainable_blocks": param(
            nullable(integer(0, 1000)),
            None,
            "trunk blocks this method trains on top of the clean head (null: "
            "`defense.model.trainable_blocks`; 18: all of EfficientNet-Lite0's)",
        ),
    }
    for key, default in method.items():
        rule, doc = _ROBUST_METHOD_KEYS[key]
        rules[key] = param(rule, default, doc)
    return {f"defense.{group}.{k}": r for k, r in rules.items()}


def _library_default(group: str, key: str) -> Any:
    """A ``data.<group>`` default: the field of the library's settings dataclass (its home)."""
    from .data.build import FolderSettings, ImagenetteSettings

    cls = {"folder": FolderSettings, "imagenette": ImagenetteSettings}[group]
    return cls.__dataclass_fields__[key].default


def _url_default(key: str) -> Any:
    """An ``data.urls`` default: the library's UrlSettings field (its one home)."""
    from .data.url_source import UrlSettings

    return UrlSettings.__dataclass_fields__[key].default


def _autoattack() -> dict[str, Rule]:
    """``attacks.autoattack``: the protocol's settings; the components' options default to
    the library's :class:`advpipe.attacks.autoattack.Settings` (the authors' values)."""
    from .attacks.autoattack import COMPONENTS, VERSIONS, Settings

    d = lambda key: Settings.__dataclass_fields__[key].default  # noqa: E731
    custom = "(custom version; `standard` uses the authors' value)"
    return {
        "attacks.autoattack.epsilons": param(
            epsilon_list(), [0.00392157], "the ε of the attack set's AutoAttack runs (1/255)"
        ),
        "attacks.autoattack.norm": param(choice("linf", "l2"), "linf", "the threat model"),
        "attacks.autoattack.version": param(
            choice(*VERSIONS),
            "standard",
            "`standard`: APGD-CE → APGD-T → FAB-T → Square, the authors' settings; "
            "`custom`: `attacks` with the options below",
        ),
        "attacks.autoattack.attacks": param(
            choice_list(*COMPONENTS),
            ["apgd-ce", "apgd-t", "fab-t", "square"],
            "the cascade of the custom version, in order",
        ),
        "attacks.autoattack.apgd_steps": param(
            integer(1, 100000), d("apgd_steps"), f"APGD iterations {custom}"
        ),
        "attacks.autoattack.apgd_restarts": param(
            integer(1, 1000), d("apgd_restarts"), f"APGD random restarts {custom}"
        ),
        "attacks.autoattack.n_target_classes": param(
            integer(1, 999),
            d("n_target_classes"),
            f"target classes of APGD-T / FAB-T, capped at classes − 1 {custom}",
        ),
        "attacks.autoattack.fab_steps": param(
            integer(1, 100000), d("fab_steps"), f"FAB-T iterations {custom}"
        ),
        "attacks.autoattack.fab_restarts": param(
            integer(1, 1000), d("fab_restarts"), f"FAB-T restarts {custom}"
        ),
        "attacks.autoattack.square_queries": param(
            integer(1, 10**7), d("square_queries"), f"Square's query budget per image {custom}"
        ),
        "attacks.autoattack.square_p_init": param(
            number(0, 1, lo_open=True), d("square_p_init"), f"Square's p_init {custom}"
        ),
        "attacks.autoattack.square_restarts": param(
            integer(1, 1000), d("square_restarts"), f"Square's restarts {custom}"
        ),
    }


def _sets(
    name: str, first: int | None, indices: list[int] | None, per_class: int, paper: str
) -> dict[str, Rule]:
    return {
        f"data.{name}.source": param(
            choice(*SOURCES), "samples", "where the images come from: see [data](data.md)"
        ),
        f"data.{name}.first": param(
            nullable(integer(1, 1000)),
            first,
            "the first N ImageNet classes (used when `indices` is null)",
        ),
        f"data.{name}.indices": param(
            nullable(int_list(0, 999, non_empty=True)),
            indices,
            "an explicit list of ImageNet class indices (wins over `first`)",
        ),
        f"data.{name}.per_class": param(integer(1), per_class, f"images per class ({paper})"),
    }


def _urls() -> dict[str, Rule]:
    rules = {
        "list": (string(), "the URL list: `fall11_urls.txt` or a `url,class_index` CSV"),
        "format": (choice("auto", "fall11", "csv"), "format of the URL list"),
        "workers": (integer(1, 256), "concurrent downloads"),
        "timeout": (number(0, lo_open=True), "seconds per request"),
        "retries": (integer(0, 20), "extra tries for timeouts, connection errors, 5xx, 429"),
        "backoff": (number(0), "seconds before the first retry, doubled at each retry"),
        "min_bytes": (integer(0), "smaller files are rejected"),
        "min_side": (integer(1), "smaller images are rejected (also `folder` and `imagenette`)"),
        "max_pixels": (
            integer(1),
            "decompression-bomb limit, Pillow's default (also `folder` and `imagenette`)",
        ),
        "deadline": (
            number(0, lo_open=True, required=False),
            "hard wall-clock seconds per attempt (connect + headers + body)",
        ),
        "max_retry_after": (
            number(0, required=False),
            "cap on a 429/503 Retry-After wait, seconds",
        ),
        "decode_pixels": (
            integer(1, required=False),
            "larger images: JPEG decoded at 1/2..1/8 size, others rejected",
        ),
        "background_fraction": (
            number(0, 1, lo_open=True, required=False),
            "text placeholder: the dominant colour covers at least this share...",
        ),
        "background_tolerance": (
            integer(0, 255, required=False),
            "...counting pixels within this max channel difference of it...",
        ),
        "text_edge_ratio": (
            number(0, 1, required=False),
            "...and at least this share of the ink (pixels > tolerance + 12 off the "
            "background) touches non-ink pixels (thin strokes)",
        ),
        "noise_min_correlation": (
            number(-1, 1, required=False),
            "noise test: rejected when the adjacent-pixel correlation is below this at "
            "every scale (see [data](data.md))",
        ),
        "noise_max_blockiness": (
            number(0, lo_open=True, required=False),
            "noise test: JPEG 8×8 block-border step threshold",
        ),
        "noise_min_block_correlation": (
            number(-1, 1, required=False),
            "noise test: correlation inside blocks threshold",
        ),
        "cross_class": (
            choice("first", "reject", required=False),
            "a URL listed under several classes: its `first` class, or `reject` it",
        ),
    }
    return {f"data.urls.{k}": param(rule, _url_default(k), doc) for k, (rule, doc) in rules.items()}


#: The top-level groups of params.yaml, each with what it governs (docs/parameters.md).
GROUPS: dict[str, str] = {
    "seed": "The one seed of the pipeline.",
    "data": "The attack set and the defense set: where the images come from and how they are "
    "resized ([data](data.md)).",
    "model": "The attacked ImageNet model (every model takes RGB [0, 1] NHWC and returns logits).",
    "attacks": "The ε-parameterised attacks and DeepFool ([attacks](attacks.md)). ε is a distance "
    "in [0, 1] pixel space.",
    "defense": "The defense model, the training of each defense method and their evaluation "
    "([defenses](defenses.md)).",
    "blackbox": "The transfer matrices and the decision-based attack ([black-box](blackbox.md)).",
    "report": "The figure of adversarial examples (the proposal's Figure 4).",
    "runtime": "Where the compiled functions run ([scaling out](scaling.md)). `distribute` and "
    "`devices` cannot change a result, so they are no stage's dependency (environment "
    "overrides: `ADVPIPE_DISTRIBUTE`, `ADVPIPE_DEVICES`); `jit_compile` and "
    "`mixed_precision` (training only) can, so they are.",
}

SCHEMA: dict[str, Rule] = {
    "seed": param(integer(0), 0, "the one seed: splits, random starts, training"),
    # ---------------------------------------------------------------- data
    "data.image_size": param(integer(8, 1024), 224, "side of the square images the model reads"),
    "data.crop_ratio": param(
        number(0, 1, lo_open=True),
        0.875,
        "short side → round(image_size / crop_ratio), then a centre crop "
        "(standard ImageNet eval: 256 → 224); 1.0: short side → "
        "image_size",
    ),
    "data.resample": param(
        choice("bicubic", "bilinear", "lanczos", "nearest"), "bicubic", "resampling filter"
    ),
    **_sets("attack_set", 50, None, 50, "paper: the first 50 classes × 50 images"),
    **_sets(
        "defense_set", None, [96, 530, 950], 500, "paper: toucan, digital clock, orange; 500 each"
    ),
    "data.defense_set.split": param(
        split_counts(),
        {"train": 300, "val": 100, "test": 100},
        "per-class proportions of the train/val/test split",
    ),
    **_urls(),
    "data.folder.path": param(
        string(),
        _library_default("folder", "path"),
        "a local ImageNet-style folder, one sub-folder per WordNet id",
    ),
    "data.folder.skip_unreadable_classes": param(
        boolean(),
        _library_default("folder", "skip_unreadable_classes"),
        "true: a class with no usable image is skipped (warning) instead of stopping the stage",
    ),
    "data.imagenette.archive": param(
        choice(*IMAGENETTE_ARCHIVES),
        _library_default("imagenette", "archive"),
        "which Imagenette archive (`imagenette2`: full size)",
    ),
    "data.imagenette.url": param(
        http_url(),
        _library_default("imagenette", "url"),
        "null: the official URL of `archive`; or any http(s) URL",
    ),
    "data.imagenette.sha256": param(
        sha256_hex(),
        _library_default("imagenette", "sha256"),
        "null: the known checksum of the official archive; a string: required",
    ),
    "data.imagenette.path": param(
        optional_string(),
        _library_default("imagenette", "path"),
        "a local copy instead of a download: the .tgz or an extracted folder",
    ),
    "data.imagenette.cache_dir": param(
        string(),
        _library_default("imagenette", "cache_dir"),
        "where the archive is downloaded and extracted",
    ),
    # ---------------------------------------------------------------- model
    "model.name": param(
        choice(*MODELS),
        "efficientnet_lite0",
        "the attacked model (`resnet50`, `vgg16`: Keras weights, network or "
        "`weights_path`; `tiny`: tests)",
    ),
    "model.weights_path": param(
        optional_string(),
        None,
        "a Keras .h5 weight file for resnet50/vgg16, used instead of a download",
    ),
    "model.batch_size": param(integer(1, 4096), 32, "batch size of the attacks and predictions"),
    "model.file.path": param(
        optional_string(),
        None,
        "your own model (`model.name: file`): a .keras or .h5 file or a TensorFlow "
        "SavedModel folder",
    ),
    "model.file.inputs": param(
        choice(*_model_registry.FILE_INPUTS),
        "unit",
        "what the file model's input expects: RGB `unit` [0, 1] or `0_255` (preprocessing "
        "inside it), or [0, 255] preprocessed the Keras `caffe`/`torch`/`tf` way or `lite` "
        "((x·255 − 127)/128), applied by the wrapper",
    ),
    "model.file.outputs": param(
        choice(*_model_registry.FILE_OUTPUTS),
        "auto",
        "`auto`: a final softmax is removed; other probabilities become log(clip(p, 1e-12, 1)), "
        "flagged as possible gradient masking",
    ),
    "model.file.classes": param(
        int_list(0, 999, non_empty=True, nullable=True),
        None,
        "the ImageNet class of each output; null: all 1,000, or the `classes` of a "
        "pipeline model's <name>.json",
    ),
    "model.file.endpoint": param(
        optional_string(),
        None,
        "SavedModel only: the function to call (null: `serve`, else `serving_default`)",
    ),
    "model.file.safe_mode": param(
        boolean(),
        True,
        "false: let a .keras file's Lambda layers run their stored code (trusted files only)",
    ),
    # ---------------------------------------------------------------- attacks
    "attacks.labels": param(
        choice("ground_truth", "predicted"),
        "ground_truth",
        "attack the true label, or the model's prediction (no label leaking)",
    ),
    "attacks.fgsm.epsilons": param(epsilon_list(), EPSILONS, "FGSM's ε grid (L∞)"),
    "attacks.fgm.epsilons": param(epsilon_list(), EPSILONS, "FGM's ε grid"),
    "attacks.fgm.norm": param(
        choice("l2", "linf_equivalent"),
        "linf_equivalent",
        "`l2`: ε is the L2 norm; `linf_equivalent`: ε·√d, the L2 norm of "
        "an FGSM step of the same ε",
    ),
    "attacks.rfgsm.epsilons": param(epsilon_list(), EPSILONS, "R-FGSM's ε grid (L∞)"),
    # alpha = eps would leave no step along the gradient: (0, 1) open on both ends
    "attacks.rfgsm.alpha_fraction": param(
        number(0, 1, lo_open=True, hi_open=True), 0.5, "α = alpha_fraction·ε (paper: ε/2)"
    ),
    "attacks.step_ll.epsilons": param(epsilon_list(), EPSILONS, "step-LL's ε grid (L∞)"),
    "attacks.pgd.epsilons": param(epsilon_list(), EPSILONS, "PGD's ε grid (L∞)"),
    "attacks.pgd.steps": param(integer(1, 1000), 10, "PGD iterations"),
    "attacks.pgd.rel_stepsize": param(
        number(0, lo_open=True), 0.25, "step = rel_stepsize·ε (as Foolbox's LinfPGD)"
    ),
    "attacks.pgd.random_start": param(
        boolean(), True, "uniform start in the ε-ball (PGD); false: BIM"
    ),
    "attacks.pgd.norm": param(
        choice("linf", "l2"),
        "linf",
        "`linf`: sign steps, L∞ ball; `l2`: normalised-gradient steps, L2 ball (ε an L2 norm)",
    ),
    **_autoattack(),
    "attacks.deepfool.steps": param(integer(1), 50, "DeepFool's maximum steps"),
    "attacks.deepfool.candidates": param(
        integer(2, 1000), 10, "classes considered, the prediction included"
    ),
    "attacks.deepfool.overshoot": param(number(0), 0.02, "overshoot of the final step"),
    "attacks.deepfool.batch_size": param(integer(1, 4096), 10, "DeepFool's batch size"),
    # ---------------------------------------------------------------- defense
    "defense.model.trunk": param(
        choice(*_model_registry.ZOO), "efficientnet_lite0", "the ImageNet trunk (paper: vgg16)"
    ),
    "defense.model.weights_path": param(
        optional_string(), None, "Keras .h5 weights for a resnet50/vgg16 trunk"
    ),
    "defense.model.trainable_blocks": param(
        integer(0, 100), 0, "top trunk blocks left trainable (0: the paper's frozen trunk)"
    ),
    "defense.model.hidden_units": param(
        int_list(1, 65536, unique=False),
        [],
        "Dense ReLU layers before the logits ([]: a linear head)",
    ),
    "defense.model.dropout": param(number(0, 1), 0.0, "dropout before the logits"),
    **{f"defense.clean.{k}": r for k, r in _train_rules("adam", 0.001, 30, 32, 5).items()},
    **{f"defense.kurakin.{k}": r for k, r in _train_rules("adam", 0.0005, 5, 32, 0).items()},
    **{
        f"defense.deep_defense.{k}": r
        for k, r in _train_rules(
            "sgd", 0.0005, 2, 8, 0, momentum=0.9, lr_decay_at=0.8, max_steps=None
        ).items()
    },
    "defense.deep_defense.mu": param(number(0), 15, "regulariser weight μ"),
    "defense.deep_defense.c": param(number(0), 25, "correctly classified: μ·exp(−c‖r‖/‖x‖)"),
    "defense.deep_defense.d": param(number(0), 5, "misclassified: μ·exp(d‖r‖/‖x‖)"),
    "defense.deep_defense.steps": param(
        integer(1, 100), 5, "DeepFool steps unrolled in the training graph"
    ),
    "defense.deep_defense.overshoot": param(number(0), 0.02, "DeepFool's overshoot"),
    "defense.deep_defense.candidates": param(
        integer(2, 1000), 3, "DeepFool candidates, the prediction included"
    ),
    "defense.kurakin.adversarial_fraction": param(
        number(0, 1, lo_open=True), 0.5, "k/m (Kurakin et al.: k = 16 of m = 32)"
    ),
    "defense.kurakin.lambda": param(
        number(0, lo_open=True), 0.3, "λ, the weight of the adversarial examples' loss"
    ),
    "defense.kurakin.eps_stddev": param(
        number(0, 1, lo_open=True),
        0.03137255,
        "ε per example ~ N(0, σ) truncated to [0, eps_max] (σ = 8/255)",
    ),
    "defense.kurakin.eps_max": param(
        number(0, 1, lo_open=True), 0.0627451, "largest training ε (16/255)"
    ),
    "defense.kurakin.labels": param(
        choice("ground_truth", "predicted"),
        "ground_truth",
        "FGSM's labels (`ground_truth` shows label leaking; step-LL ignores it)",
    ),
    **_robust_group("pgd_at", steps=7, rel_stepsize=0.25, clean_fraction=0.0),
    **_robust_group("trades", beta=6.0, steps=10),
    **_robust_group("fast_at", alpha=1.25),
    "defense.evaluation.split": param(
        choice("train", "val", "test"), "test", "the split every defense model is evaluated on"
    ),
    "defense.evaluation.epsilons": param(
        epsilon_list(), EPSILONS_255, "ε of the white-box and transfer attacks"
    ),
    "defense.evaluation.batch_size": param(integer(1, 4096), 32, "evaluation batch size"),
    "defense.evaluation.chance_margin": param(
        number(0, 1), 0.1, "masking check: PGD at the largest ε within this of chance"
    ),
    "defense.evaluation.autoattack_epsilons": param(
        nullable(epsilon_list()),
        None,
        "ε of the AutoAttack column (null: `report_epsilon` only; Square costs ≈ 50 s "
        "per surviving image on 2 cores)",
    ),
    "defense.evaluation.apgd_check": param(
        boolean(),
        True,
        "APGD-CE (the AutoAttack settings, L∞) at every ε, compared with PGD by the paired "
        "test: APGD-CE significantly weaker is a masking flag",
    ),
    "defense.evaluation.alpha": param(
        number(0, 1, lo_open=True, hi_open=True),
        0.05,
        "significance level of the masking checks' paired (exact McNemar) tests",
    ),
    "defense.evaluation.report_epsilon": param(
        number(0, 1, lo_open=True), 0.01568627, "the ε of the table's attack columns (4/255)"
    ),
    # ---------------------------------------------------------------- black-box
    "blackbox.batch_size": param(integer(1, 4096), 20, "batch size of the transfer matrices"),
    "blackbox.native_size": param(
        boolean(),
        True,
        "true: a bilinear resize inside each model to its native size (Lite1 240, Lite2 260)",
    ),
    "blackbox.transfer.models": param(
        choice_list(*TRANSFER_MODELS),
        ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
        "source and target models (paper: + resnet50, vgg16)",
    ),
    "blackbox.transfer.attacks": param(
        choice_list(*ATTACKS, "deepfool"),
        ["fgsm", "fgm", "rfgsm", "step_ll", "pgd", "deepfool"],
        "attacks crafted on each source (options from `attacks.<name>`)",
    ),
    "blackbox.transfer.epsilons": param(epsilon_list(), EPSILONS_255, "ε of the matrix"),
    "blackbox.transfer.heatmap_epsilon": param(
        number(0, 1, lo_open=True), 0.01568627, "the ε the heatmaps show; one of `epsilons`"
    ),
    "blackbox.transfer_defense.models": param(
        choice_list(*_defense_registry.DEFENSES),
        ["clean", "kurakin_step_ll", "kurakin_fgsm", "deep_defense", "pgd_at", "trades", "fast_at"],
        "the defense models of the second matrix (attacks and ε: `blackbox.transfer`)",
    ),
    "blackbox.decision.model": param(
        choice(*TRANSFER_MODELS), "efficientnet_lite0", "the target of the label-only attack"
    ),
    "blackbox.decision.attack": param(
        choice(*DECISION_ATTACKS), "hopskipjump", "Foolbox's decision-based attack"
    ),
    "blackbox.decision.budgets": param(
        int_list(1, 10**6, non_empty=True), [10, 25, 50, 100, 250, 500, 1000], "queries per image"
    ),
    "blackbox.decision.n_images": param(
        integer(1), 10, "the first n images of the attack set the target classifies correctly"
    ),
    "blackbox.decision.batch_size": param(
        integer(1, 4096), 5, "images attacked together (memory: HopSkipJump's gradient samples)"
    ),
    "blackbox.decision.max_gradient_evals": param(
        integer(1, 100000), 100, "HopSkipJump's max_gradient_eval_steps"
    ),
    "blackbox.decision.seed": param(integer(0), 0, "the decision attack's seed"),
    "blackbox.decision.l2_threshold": param(
        number(0, lo_open=True),
        6.09,
        "success within this ‖r‖₂ too (6.09: every pixel changed by 4/255 at 224×224×3)",
    ),
    # ---------------------------------------------------------------- report
    "report.figure.attack": param(choice(*ATTACKS), "step_ll", "the attack of the figure"),
    "report.figure.images": param(
        int_list(0, 10**9, nullable=True),
        None,
        "positions in the attack set, or null: the first `n_images` the model classifies correctly",
    ),
    "report.figure.n_images": param(integer(1, 20), 2, "how many images the figure shows"),
    "report.figure.epsilons": param(epsilon_list(), [0.001, 0.01, 0.05], "one row per ε"),
    # ---------------------------------------------------------------- runtime
    "runtime.distribute": param(
        choice(*_STRATEGIES),
        "auto",
        "`auto`: mirrored over the GPUs when more than one is visible, else one device; "
        "`multi_worker`: the cluster of `TF_CONFIG` (training)",
    ),
    "runtime.devices": param(
        device_list(), None, "devices to use, e.g. `[/gpu:0, /gpu:1]`; null: every visible one"
    ),
    "runtime.jit_compile": param(
        boolean(), False, "compile the attack and training functions with XLA"
    ),
    "runtime.mixed_precision": param(
        boolean(),
        False,
        "train in bfloat16 (CPU with AVX512_BF16) or float16 (GPU); models are saved, "
        "attacked and evaluated in float32",
    ),
}


def _class_choice(params: Mapping[str, Any]) -> list[str]:
    """Each set needs ``first`` or ``indices``; ``indices`` wins when both are given."""
    problems = []
    for name in SETS:
        first = get(params, f"data.{name}.first", None)
        indices = get(params, f"data.{name}.indices", None)
        if first is None and indices is None:
            problems.append(
                f"'data.{name}.first' and 'data.{name}.indices' are both null: "
                "set one (the first N classes, or a list of class indices)"
            )
    return problems


def _heatmap_epsilon(params: Mapping[str, Any]) -> list[str]:
    """The heatmaps show one of the transfer epsilons."""
    eps = get(params, "blackbox.transfer.heatmap_epsilon", None)
    grid = get(params, "blackbox.transfer.epsilons", None)
    if (
        eps is not None
        and isinstance(grid, list)
        and not any(
            _is_number(e) and math.isclose(e, eps, rel_tol=1e-9, abs_tol=1e-12) for e in grid
        )
    ):
        return [
            f"'blackbox.transfer.heatmap_epsilon' {eps} is not one of "
            f"'blackbox.transfer.epsilons' {grid}"
        ]
    return []


#: Checks that involve several keys; each returns a list of problems.
CROSS_CHECKS: tuple[Callable[[Mapping[str, Any]], list[str]], ...] = (
    _class_choice,
    _heatmap_epsilon,
)


# --------------------------------------------------------------------------- access
_MISSING = object()
_ABSENT = object()  # a default for get(): "not there", as opposed to "no default given"


def get(params: Mapping[str, Any], dotted: str, default: Any = _MISSING) -> Any:
    """``get(p, "a.b.c")`` is ``p["a"]["b"]["c"]``; raises :class:`ParamsError` if absent."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is not _MISSING:
                return default
            raise ParamsError(f"params.yaml: missing key '{dotted}'")
        node = node[part]
    return node


def _groups(schema: Mapping[str, Rule]) -> set[str]:
    """Every dotted prefix of a schema key ('attacks', 'attacks.fgm', ...): the mappings."""
    return {".".join(key.split(".")[:i]) for key in schema for i in range(1, key.count(".") + 1)}


def _unknown_keys(params: Mapping[str, Any], schema: Mapping[str, Rule]) -> list[str]:
    """Keys of ``params`` that the schema does not declare, each with a hint.

    A schema key is a leaf: its rule checks the whole value (a mapping such as
    ``data.defense_set.split`` included), so its children are not walked. A group
    whose children are free-form must therefore be declared as a key of its own.
    """
    groups = _groups(schema)
    known = set(schema) | groups
    problems = []

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for child in node:
            full = f"{prefix}{child}"
            if full in schema:
                continue
            if full in groups:
                if isinstance(node[child], Mapping):
                    walk(node[child], full + ".")
                else:
                    problems.append(f"'{full}' must be a mapping (got {node[child]!r})")
                continue
            problems.append(f"unknown key '{full}'{_hint(str(full), prefix, known)}")

    walk(params, "")
    return problems


def _hint(full: str, prefix: str, known: set[str]) -> str:
    """' (did you mean ...?)' from the same group, else the same leaf name elsewhere."""
    names = sorted(
        k[len(prefix) :] for k in known if k.startswith(prefix) and "." not in k[len(prefix) :]
    )
    leaf = full[len(prefix) :]
    close = [prefix + c for c in difflib.get_close_matches(leaf, names, n=1, cutoff=0.7)]
    if not close:
        same_leaf = sorted(k for k in known if k.rsplit(".", 1)[-1] == leaf)
        close = difflib.get_close_matches(full, same_leaf, n=1, cutoff=0) or same_leaf[:1]
    if close:
        return f" (did you mean '{close[0]}'?)"
    group = f"'{prefix.rstrip('.')}'" if prefix else "the top level"
    return f" ({group} takes: {', '.join(names)})"


def _cross_checks(params: Mapping[str, Any]) -> list[str]:
    """Rules that tie two keys together (run once every key is valid on its own)."""
    problems = []
    name = get(params, "model.name")
    if get(params, "model.weights_path", None) is not None and name not in WEIGHT_FILE_MODELS:
        problems.append(
            f"'model.weights_path' applies only to {' and '.join(WEIGHT_FILE_MODELS)} (a Keras "
            f".h5 weight file); model '{name}' does not use it: set it to null"
        )
    path = get(params, "model.file.path", None)
    uses_file = (
        name == "file"
        or "file" in get(params, "blackbox.transfer.models", [])
        or (get(params, "blackbox.decision.model", None) == "file")
    )
    if uses_file and path is None:
        problems.append("'model.file.path' is null but a model is 'file': set it to your model")
    if name in WEIGHT_FILE_MODELS and get(params, "data.image_size") != 224:
        problems.append(
            f"'data.image_size' must be 224 for model '{name}' (its ImageNet "
            f"classifier is fixed), got {get(params, 'data.image_size')}"
        )
    return problems


def validate(params: Mapping[str, Any], schema: Mapping[str, Rule] = SCHEMA) -> None:
    """Check ``params`` against ``schema``: every key known, every value allowed.

    Raises one :class:`ParamsError`, on one line, listing every problem.
    """
    if not isinstance(params, Mapping):
        raise ParamsError("params.yaml: the top level must be a mapping")
    problems = _unknown_keys(params, schema)
    for key, rule in schema.items():
        value = get(params, key, _ABSENT)
        if value is _ABSENT:
            if rule.required:
                problems.append(f"missing key '{key}'")
            continue
        err = rule.check(value)
        if err:
            problems.append(f"'{key}' {err} (got {value!r})")
    if schema is SCHEMA and not problems:
        for cross in CROSS_CHECKS:
            problems.extend(cross(params))
        problems.extend(_cross_checks(params))
    if problems:
        raise ParamsError("params.yaml is invalid: " + "; ".join(problems))


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found (run from the repository root)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    validate(params)
    return params


def resolve_classes(first: int | None, indices: list[int] | None) -> list[int]:
    """The ImageNet class indices of a set: ``indices`` if given, else ``range(first)``."""
    if indices is not None:
        return [int(i) for i in indices]
    if first is None:
        raise ParamsError("a class selection needs 'first' or 'indices'")
    return list(range(int(first)))


def set_classes(params: Mapping[str, Any], name: str) -> list[int]:
    """The classes of ``data.<name>`` (``name``: ``attack_set`` or ``defense_set``)."""
    return resolve_classes(get(params, f"data.{name}.first"), get(params, f"data.{name}.indices"))
