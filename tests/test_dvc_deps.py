"""dvc.yaml's code dependencies cannot drift from the code.

For every stage (``foreach`` expanded by DVC itself), the script named in ``cmd`` is
followed through its imports -- statically, with ``ast``: nothing is imported, so no
TensorFlow -- inside ``advpipe`` (``src/advpipe/``) and ``stages/`` (sibling imports such
as ``import common``). Followed: imports inside functions, relative imports, the package
``__init__.py`` files an import runs on the way, and the attack modules
``advpipe.attacks.registry`` imports by name (``ATTACKS[...].module``). Then:

* every module a stage reaches must be covered by one of its ``deps`` (a folder dep
  covers every file under it): else a change to that module would not re-run the stage;
* every ``deps`` entry that holds Python code (a ``.py`` file, or a folder with ``.py``
  files) must be reached: a file dep by its module, a folder dep by at least one module
  under it. Non-Python deps (data, params, models, metrics) are not checked here, except
  the package data a reached module reads at run time (:data:`RUNTIME_FILES`).
"""

from __future__ import annotations

import ast
import os
import shlex
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STAGES = ROOT / "stages"


# ------------------------------------------------------------------ modules <-> files
def _module_file(dotted: str) -> Path | None:
    """The file of an ``advpipe`` module or package (``None``: not part of advpipe)."""
    path = SRC.joinpath(*dotted.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _stage_module(name: str) -> Path | None:
    """A stage-side module (``stages/<name>.py``) imported as a sibling."""
    path = STAGES / f"{name}.py"
    return path if "." not in name and path.is_file() else None


def _dotted(path: Path) -> str:
    """``src/advpipe/attacks/base.py`` -> ``advpipe.attacks.base`` (packages: their name)."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _registry_modules(path: Path) -> list[str]:
    """``advpipe.attacks.<module>`` of every ``AttackEntry("<module>", ...)`` in the registry
    (:func:`advpipe.attacks.registry.attack_class` imports them with importlib)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "AttackEntry":
            arg = (
                node.args[0]
                if node.args
                else next((k.value for k in node.keywords if k.arg == "module"), None)
            )
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append(f"advpipe.attacks.{arg.value}")
    assert found, f"{path}: no AttackEntry(...) found: the registry changed, update this test"
    return found


REGISTRY = SRC / "advpipe" / "attacks" / "registry.py"

#: Files a module reads at run time (not imports): a stage reaching the module needs them.
RUNTIME_FILES = {
    "src/advpipe/data/class_index.py": ["src/advpipe/data/imagenet_classes.csv"],
}


# ------------------------------------------------------------------ the import walk
def _imports(path: Path) -> list[tuple[str | None, list[str]]]:
    """Every import statement of ``path`` (at any depth) as ``(module, names)``:
    ``("a.b", [])`` for ``import a.b``; ``("<absolute module>", names)`` for a ``from``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = None  # the package a relative import starts from
    if SRC in path.parents:
        package = _dotted(path) if path.name == "__init__.py" else _dotted(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module
            if node.level:
                assert package is not None, f"{path}: relative import outside advpipe"
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
            out.append((module, [a.name for a in node.names]))
    return out


def _reached(script: Path) -> set[Path]:
    """Every file of ``advpipe`` and ``stages/`` that running ``script`` imports."""
    seen: set[Path] = set()
    todo = [script]

    def add_advpipe(dotted: str) -> None:
        parts = dotted.split(".")
        if parts[0] != "advpipe":
            return
        for n in range(1, len(parts) + 1):  # a.b.c runs a/__init__.py, a/b/__init__.py first
            found = _module_file(".".join(parts[:n]))
            if found is not None:
                todo.append(found)

    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path == REGISTRY:
            for dotted in _registry_modules(path):
                add_advpipe(dotted)
        for module, names in _imports(path):
            if module is None:
                continue
            top = module.split(".")[0]
            if top == "advpipe":
                add_advpipe(module)
                for name in names:  # `from advpipe.attacks import deepfool`: a submodule
                    if _module_file(f"{module}.{name}") is not None:
                        add_advpipe(f"{module}.{name}")
            elif path.parent == STAGES:
                sibling = _stage_module(module)
                if sibling is not None:
                    todo.append(sibling)
    return seen


# ------------------------------------------------------------------ the stages
@cache
def _stages() -> dict[str, tuple[Path, list[str]]]:
    """``{stage name: (script, deps)}`` of dvc.yaml, resolved by DVC (foreach, vars...)."""
    from dvc.repo import Repo

    stages = {}
    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            if not getattr(stage, "cmd", None):
                continue
            argv = shlex.split(stage.cmd)
            assert argv[0] == "python" and argv[1].startswith("stages/"), (
                f"stage {stage.addressing}: cmd {stage.cmd!r} is not `python stages/<x>.py ...`"
            )
            deps = [Path(os.path.relpath(d.fs_path, repo.root_dir)).as_posix() for d in stage.deps]
            stages[stage.addressing] = (ROOT / argv[1], deps)
    return stages


def _covered(rel: str, deps: list[str]) -> bool:
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def _is_python_dep(rel: str) -> bool:
    path = ROOT / rel
    if path.is_dir():
        return any(p.suffix == ".py" and "__pycache__" not in p.parts for p in path.rglob("*.py"))
    return path.suffix == ".py"


def _problems(name: str) -> tuple[list[str], list[str]]:
    script, deps = _stages()[name]
    reached = sorted(p.relative_to(ROOT).as_posix() for p in _reached(script))
    needed = reached + [f for rel in reached for f in RUNTIME_FILES.get(rel, [])]
    missing = [rel for rel in needed if not _covered(rel, deps)]
    unused = [
        d for d in deps if _is_python_dep(d) and not any(_covered(rel, [d]) for rel in reached)
    ]
    return missing, unused


def test_runtime_files_exist():
    for module, files in RUNTIME_FILES.items():
        assert (ROOT / module).is_file(), module
        for rel in files:
            assert (ROOT / rel).is_file(), rel


def test_every_stage_runs_a_stage_script():
    assert _stages(), "dvc.yaml has no stages"
    for name, (script, _) in _stages().items():
        assert script.is_file(), f"stage {name}: {script.relative_to(ROOT)} does not exist"


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_cover_exactly_the_code_it_imports(name):
    missing, unused = _problems(name)
    message = []
    if missing:
        message.append(
            f"stage {name}: imports modules (or reads their files) that no dep in "
            "dvc.yaml covers (add them, or their folder, to its deps): " + ", ".join(missing)
        )
    if unused:
        message.append(
            f"stage {name}: Python deps in dvc.yaml that nothing it runs imports "
            "(remove them): " + ", ".join(unused)
        )
    assert not message, "\n".join(message)


# ------------------------------------------------------------------ the walk itself
def test_the_walk_follows_relative_function_level_and_registry_imports():
    reached = {p.relative_to(ROOT).as_posix() for p in _reached(STAGES / "attack.py")}
    assert {
        "stages/common.py",  # sibling import
        "src/advpipe/__init__.py",  # package __init__ on the way
        "src/advpipe/attacks/__init__.py",
        "src/advpipe/attacks/core.py",  # `from . import core` in base.py
        "src/advpipe/attacks/fgsm.py",  # loaded by name by the registry
        "src/advpipe/models/zoo.py",  # imported inside a function (common.model)
    } <= reached
    assert not any("__pycache__" in rel for rel in reached)


# ------------------------------------------------------------------ check_params first
def test_every_stage_waits_for_the_params_check():
    """check_params depends on the whole params.yaml; every other stage on its output, so
    a misspelled key nobody declares still stops `dvc repro` before any real work."""
    check_script, check_deps = _stages()["check_params"]
    assert check_script == STAGES / "check_params.py"
    assert "params.yaml" in check_deps
    late = [
        name
        for name, (_, deps) in _stages().items()
        if name != "check_params" and "checks/params.ok" not in deps
    ]
    assert not late, f"stages that do not depend on checks/params.ok: {late}"
