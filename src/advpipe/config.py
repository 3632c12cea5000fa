"""Load and validate ``params.yaml``.

Every hyperparameter of the pipeline lives in ``params.yaml``. Stage scripts call
:func:`load_params` once at start-up; it checks the whole file against
:data:`SCHEMA` and fails with a :class:`ParamsError` that names the offending key
and the allowed values, before any expensive work starts.

The library itself never reads ``params.yaml``: stage scripts pass plain values.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from .attacks import registry as _attack_registry
from .defenses import registry as _defense_registry


class ParamsError(ValueError):
    """A parameter is missing or has a value the pipeline cannot use."""


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """How to check one dotted key: ``check(value) -> error text or None``."""

    check: Callable[[Any], str | None]
    required: bool = True


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def choice(*allowed: Any, required: bool = True) -> Rule:
    return Rule(lambda v: None if v in allowed else f"must be one of {list(allowed)}", required)


def integer(lo: int | None = None, hi: int | None = None, required: bool = True) -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return "must be an integer"
        if lo is not None and v < lo:
            return f"must be >= {lo}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None

    return Rule(check, required)


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, required: bool = True) -> Rule:
    def check(v: Any) -> str | None:
        if not _is_number(v):
            return "must be a finite number"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and (v >= hi if hi_open else v > hi):
            return f"must be {'<' if hi_open else '<='} {hi}"
        return None

    return Rule(check, required)


def boolean(required: bool = True) -> Rule:
    return Rule(lambda v: None if isinstance(v, bool) else "must be true or false", required)


def string(required: bool = True) -> Rule:
    return Rule(lambda v: None if isinstance(v, str) and v else "must be a non-empty string",
                required)


def optional_string() -> Rule:
    return Rule(lambda v: None if v is None or (isinstance(v, str) and v)
                else "must be a non-empty string or null", required=False)


def epsilon_list() -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or not v:
            return "must be a non-empty list of numbers in [0, 1]"
        if not all(_is_number(e) and 0 <= e <= 1 for e in v):
            return f"must hold numbers in [0, 1] (a distance in [0, 1] pixel space), got {v}"
        if len(set(v)) != len(v):
            return f"must not repeat a value, got {v}"
        return None

    return Rule(check)


def int_list(lo: int, hi: int, *, required: bool = True, unique: bool = True,
             non_empty: bool = False, nullable: bool = False) -> Rule:
    def check(v: Any) -> str | None:
        if v is None and nullable:
            return None
        if non_empty and v == []:
            return "must be a non-empty list of integers"
        if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                               for i in v):
            return "must be a list of integers" + (" or null" if nullable else "")
        if not all(lo <= i <= hi for i in v):
            return f"must hold integers in [{lo}, {hi}], got {v}"
        if unique and len(set(v)) != len(v):
            return f"must not repeat a value, got {v}"
        return None

    return Rule(check, required)


def nullable(rule: Rule) -> Rule:
    """``rule`` or null (the key itself must still be present when ``rule`` is required)."""

    def check(v: Any) -> str | None:
        if v is None:
            return None
        err = rule.check(v)
        return f"{err} (or null)" if err else None

    return Rule(check, rule.required)


def sha256_hex() -> Rule:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdefABCDEF"
                                                         for c in v):
            return "must be a sha256 digest (64 hexadecimal characters) or null"
        return None

    return Rule(check)


def http_url() -> Rule:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str) or not v.lower().startswith(("http://", "https://")):
            return "must be an http(s) URL or null"
        return None

    return Rule(check)


def split_counts() -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, dict) or set(v) != {"train", "val", "test"}:
            return "must be a mapping with exactly the keys train, val, test"
        if not all(_is_number(x) and x >= 0 for x in v.values()) or sum(v.values()) <= 0:
            return "must hold non-negative numbers that do not all equal 0"
        return None

    return Rule(check)


ATTACKS = tuple(_attack_registry.ATTACKS)

#: Training keys every defense params group has (see advpipe.defenses.training.TrainConfig).
TRAIN_RULES: dict[str, Rule] = {
    "optimizer": choice("adam", "sgd"),
    "learning_rate": number(0, 1, lo_open=True),
    "momentum": number(0, 1, required=False),
    "epochs": integer(1, 100000),
    "batch_size": integer(1, 4096),
    "patience": integer(0),
    "max_steps": Rule(lambda v: None if v is None or (isinstance(v, int) and v >= 1
                                                      and not isinstance(v, bool))
                      else "must be null or an integer >= 1", required=False),
    "lr_decay_at": Rule(lambda v: None if v is None or (_is_number(v) and 0 < v < 1)
                        else "must be null or a fraction in (0, 1)", required=False),
}
SOURCES = ("samples", "urls", "folder", "imagenette")
IMAGENETTE_ARCHIVES = ("imagenette2-160", "imagenette2-320", "imagenette2")
SETS = ("attack_set", "defense_set")


def free_mapping(required: bool = True) -> Rule:
    """A group whose children are free-form (not walked for unknown keys): declare it so."""
    return Rule(lambda v: None if isinstance(v, Mapping) else "must be a mapping", required)
MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
          "resnet50", "vgg16", "tiny")

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

    return Rule(check, required)


TRANSFER_MODELS = tuple(m for m in MODELS if m != "tiny")
DECISION_ATTACKS = _attack_registry.DECISION_ATTACKS

SCHEMA: dict[str, Rule] = {
    "seed": integer(0),
    # ---------------------------------------------------------------- data
    "data.image_size": integer(8, 1024),
    "data.crop_ratio": number(0, 1, lo_open=True),
    "data.resample": choice("bicubic", "bilinear", "lanczos", "nearest"),
    "data.attack_set.source": choice(*SOURCES),
    "data.attack_set.first": nullable(integer(1, 1000)),
    "data.attack_set.indices": nullable(int_list(0, 999, non_empty=True)),
    "data.attack_set.per_class": integer(1),
    "data.defense_set.source": choice(*SOURCES),
    "data.defense_set.first": nullable(integer(1, 1000)),
    "data.defense_set.indices": nullable(int_list(0, 999, non_empty=True)),
    "data.defense_set.per_class": integer(1),
    "data.defense_set.split": split_counts(),
    "data.urls.list": string(),
    "data.urls.format": choice("auto", "fall11", "csv"),
    "data.urls.workers": integer(1, 256),
    "data.urls.timeout": number(0, lo_open=True),
    "data.urls.retries": integer(0, 20),
    "data.urls.backoff": number(0),
    "data.urls.min_bytes": integer(0),
    "data.urls.min_side": integer(1),
    "data.urls.max_pixels": integer(1),
    # optional (defaults in advpipe.data.build.URL_DEFAULTS)
    "data.urls.deadline": number(0, lo_open=True, required=False),
    "data.urls.max_retry_after": number(0, required=False),
    "data.urls.decode_pixels": integer(1, required=False),
    "data.urls.background_fraction": number(0, 1, lo_open=True, required=False),
    "data.urls.background_tolerance": integer(0, 255, required=False),
    "data.urls.text_edge_ratio": number(0, 1, required=False),
    "data.urls.noise_min_correlation": number(-1, 1, required=False),
    "data.urls.noise_max_blockiness": number(0, lo_open=True, required=False),
    "data.urls.noise_min_block_correlation": number(-1, 1, required=False),
    "data.urls.cross_class": choice("first", "reject", required=False),
    "data.folder.path": string(),
    "data.folder.skip_unreadable_classes": boolean(),
    "data.imagenette.archive": choice(*IMAGENETTE_ARCHIVES),
    "data.imagenette.url": http_url(),
    "data.imagenette.sha256": sha256_hex(),
    "data.imagenette.path": optional_string(),
    "data.imagenette.cache_dir": string(),
    # ---------------------------------------------------------------- model
    "model.name": choice(*MODELS),
    "model.weights_path": optional_string(),
    "model.batch_size": integer(1, 4096),
    # ---------------------------------------------------------------- attacks
    "attacks.labels": choice("ground_truth", "predicted"),
    "attacks.fgsm.epsilons": epsilon_list(),
    "attacks.fgm.epsilons": epsilon_list(),
    "attacks.fgm.norm": choice("l2", "linf_equivalent"),
    "attacks.rfgsm.epsilons": epsilon_list(),
    # alpha = eps would leave no step along the gradient: (0, 1) open on both ends
    "attacks.rfgsm.alpha_fraction": number(0, 1, lo_open=True, hi_open=True),
    "attacks.step_ll.epsilons": epsilon_list(),
    "attacks.pgd.epsilons": epsilon_list(),
    "attacks.pgd.steps": integer(1, 1000),
    "attacks.pgd.rel_stepsize": number(0, lo_open=True),
    "attacks.pgd.random_start": boolean(),
    "attacks.deepfool.steps": integer(1),
    "attacks.deepfool.candidates": integer(2, 1000),
    "attacks.deepfool.overshoot": number(0),
    "attacks.deepfool.batch_size": integer(1, 4096),
    # ---------------------------------------------------------------- defense
    "defense.model.trunk": choice(*MODELS),
    "defense.model.weights_path": optional_string(),
    "defense.model.trainable_blocks": integer(0, 100),
    "defense.model.hidden_units": int_list(1, 65536, unique=False),
    "defense.model.dropout": number(0, 1),
    **{f"defense.{group}.{key}": rule for group in ("clean", "kurakin", "deep_defense")
       for key, rule in TRAIN_RULES.items()},
    "defense.deep_defense.mu": number(0),
    "defense.deep_defense.c": number(0),
    "defense.deep_defense.d": number(0),
    "defense.deep_defense.steps": integer(1, 100),
    "defense.deep_defense.overshoot": number(0),
    "defense.deep_defense.candidates": integer(2, 1000),
    "defense.kurakin.adversarial_fraction": number(0, 1, lo_open=True),
    "defense.kurakin.lambda": number(0, lo_open=True),
    "defense.kurakin.eps_stddev": number(0, 1, lo_open=True),
    "defense.kurakin.eps_max": number(0, 1, lo_open=True),
    "defense.kurakin.labels": choice("ground_truth", "predicted"),
    "defense.evaluation.split": choice("train", "val", "test"),
    "defense.evaluation.epsilons": epsilon_list(),
    "defense.evaluation.batch_size": integer(1, 4096),
    "defense.evaluation.chance_margin": number(0, 1),
    "defense.evaluation.report_epsilon": number(0, 1, lo_open=True),
    # ---------------------------------------------------------------- black-box
    "blackbox.batch_size": integer(1, 4096),
    "blackbox.native_size": boolean(),
    "blackbox.transfer.models": choice_list(*TRANSFER_MODELS),
    "blackbox.transfer.attacks": choice_list(*ATTACKS, "deepfool"),
    "blackbox.transfer.epsilons": epsilon_list(),
    "blackbox.transfer.heatmap_epsilon": number(0, 1, lo_open=True),
    "blackbox.transfer_defense.models": choice_list(*_defense_registry.DEFENSES),
    "blackbox.decision.model": choice(*TRANSFER_MODELS),
    "blackbox.decision.attack": choice(*DECISION_ATTACKS),
    "blackbox.decision.budgets": int_list(1, 10**6, non_empty=True),
    "blackbox.decision.n_images": integer(1),
    "blackbox.decision.batch_size": integer(1, 4096),
    "blackbox.decision.max_gradient_evals": integer(1, 100000),
    "blackbox.decision.seed": integer(0),
    "blackbox.decision.l2_threshold": number(0, lo_open=True),
    # ---------------------------------------------------------------- report
    "report.figure.attack": choice(*ATTACKS),
    # null: the first `n_images` images the model classifies correctly
    "report.figure.images": int_list(0, 10**9, nullable=True),
    "report.figure.n_images": integer(1, 20),
    "report.figure.epsilons": epsilon_list(),
}


def _class_choice(params: Mapping[str, Any]) -> list[str]:
    """Each set needs ``first`` or ``indices``; ``indices`` wins when both are given."""
    problems = []
    for name in SETS:
        first = get(params, f"data.{name}.first", None)
        indices = get(params, f"data.{name}.indices", None)
        if first is None and indices is None:
            problems.append(f"'data.{name}.first' and 'data.{name}.indices' are both null: "
                            "set one (the first N classes, or a list of class indices)")
    return problems


def _heatmap_epsilon(params: Mapping[str, Any]) -> list[str]:
    """The heatmaps show one of the transfer epsilons."""
    eps = get(params, "blackbox.transfer.heatmap_epsilon", None)
    grid = get(params, "blackbox.transfer.epsilons", None)
    if eps is not None and isinstance(grid, list) and not any(
            _is_number(e) and math.isclose(e, eps, rel_tol=1e-9, abs_tol=1e-12) for e in grid):
        return [f"'blackbox.transfer.heatmap_epsilon' {eps} is not one of "
                f"'blackbox.transfer.epsilons' {grid}"]
    return []


#: Checks that involve several keys; each returns a list of problems.
CROSS_CHECKS: tuple[Callable[[Mapping[str, Any]], list[str]], ...] = (
    _class_choice, _heatmap_epsilon)


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
    names = sorted(k[len(prefix):] for k in known
                   if k.startswith(prefix) and "." not in k[len(prefix):])
    leaf = full[len(prefix):]
    close = [prefix + c for c in difflib.get_close_matches(leaf, names, n=1, cutoff=0.7)]
    if not close:
        close = sorted(k for k in known if k.rsplit(".", 1)[-1] == leaf)[:1]
    if close:
        return f" (did you mean '{close[0]}'?)"
    group = f"'{prefix.rstrip('.')}'" if prefix else "the top level"
    return f" ({group} takes: {', '.join(names)})"


WEIGHT_FILE_MODELS = ("resnet50", "vgg16")


def _cross_checks(params: Mapping[str, Any]) -> list[str]:
    """Rules that tie two keys together (run once every key is valid on its own)."""
    problems = []
    name = get(params, "model.name")
    if get(params, "model.weights_path", None) is not None and name not in WEIGHT_FILE_MODELS:
        problems.append(
            f"'model.weights_path' applies only to {' and '.join(WEIGHT_FILE_MODELS)} (a Keras "
            f".h5 weight file); model '{name}' does not use it: set it to null")
    if name in WEIGHT_FILE_MODELS and get(params, "data.image_size") != 224:
        problems.append(f"'data.image_size' must be 224 for model '{name}' (its ImageNet "
                        f"classifier is fixed), got {get(params, 'data.image_size')}")
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
