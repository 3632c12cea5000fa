"""The layers hold: the library never reads params or stage code, and lower layers never
import higher ones (data, models < attacks < defenses)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "advpipe"


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{alias.name}" for alias in node.names}
    return found


def _violations(rules: dict[str, tuple[str, ...]]) -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        mod = _module(path)
        for prefix, forbidden in rules.items():
            if mod == prefix or mod.startswith(prefix + "."):
                out += [
                    f"{mod} imports {imp}"
                    for imp in sorted(_imports(path))
                    if any(imp == f or imp.startswith(f + ".") for f in forbidden)
                ]
    return out


def test_nothing_in_the_library_imports_config_or_stages():
    bad = [
        v
        for v in _violations({"advpipe": ("advpipe.config", "common", "wiring", "stages")})
        if not v.startswith("advpipe.config imports")
    ]
    assert not bad, bad


def test_lower_layers_do_not_import_higher_ones():
    bad = _violations(
        {
            "advpipe.data": ("advpipe.attacks", "advpipe.defenses"),
            "advpipe.models": ("advpipe.attacks", "advpipe.defenses"),
            "advpipe.attacks": ("advpipe.defenses",),
        }
    )
    assert not bad, bad


def test_the_import_scan_sees_a_violation(tmp_path):
    """The checker itself: a relative import of config from a library module is caught."""
    fake = SRC / "attacks" / "_layers_probe.py"
    fake.write_text("from ..config import get\nfrom ..defenses import registry\n")
    try:
        assert _violations({"advpipe.attacks": ("advpipe.defenses",)}) == [
            "advpipe.attacks._layers_probe imports advpipe.defenses",
            "advpipe.attacks._layers_probe imports advpipe.defenses.registry",
        ]
        assert "advpipe.attacks._layers_probe imports advpipe.config" in _violations(
            {"advpipe": ("advpipe.config",)}
        )
    finally:
        fake.unlink()


def test_stage_scripts_import_common_before_tensorflow():
    """stages/common.py filters TensorFlow's start-up messages out of stderr; a stage script
    that loads TensorFlow (or a module that does) before it prints them on every run."""
    stages = SRC.parents[1] / "stages"
    heavy = ("tensorflow", "keras", "foolbox", "advpipe", "wiring")
    late = []
    for path in sorted(stages.glob("*.py")):
        if path.name in ("common.py", "wiring.py"):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import) and any(a.name == "common" for a in node.names):
                break
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[0] in heavy for n in names):
                late.append(f"{path.name}: {names[0]} before common")
                break
    assert not late, late
