"""The params schema is the one home of every key: params.yaml and the generated
parameter reference (docs/parameters.md) cannot disagree with it."""

import sys
from pathlib import Path

import yaml

from advpipe.config import SCHEMA, get, validate

ROOT = Path(__file__).resolve().parents[1]
_ABSENT = object()


def test_params_yaml_ships_the_schema_defaults():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    validate(params)
    differ = {
        key: (get(params, key), rule.default)
        for key, rule in SCHEMA.items()
        if get(params, key, _ABSENT) is not _ABSENT and get(params, key) != rule.default
    }
    assert not differ, f"params.yaml value != schema default (params, schema): {differ}"
    missing = [
        k for k, rule in SCHEMA.items() if rule.required and get(params, k, _ABSENT) is _ABSENT
    ]
    assert not missing


def test_every_schema_key_is_documented():
    assert all(rule.doc and rule.kind for rule in SCHEMA.values()), [
        k for k, r in SCHEMA.items() if not (r.doc and r.kind)
    ]


def test_schema_defaults_are_valid_values():
    bad = {k: r.check(r.default) for k, r in SCHEMA.items() if r.check(r.default)}
    assert not bad


def _params_doc():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import params_doc
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return params_doc


def test_parameter_page_is_generated_from_the_schema():
    """docs/parameters.md equals what tools/params_doc.py writes (run it after a schema edit)."""
    assert (ROOT / "docs" / "parameters.md").read_text() == _params_doc().render(), (
        "docs/parameters.md is stale: run python tools/params_doc.py"
    )


def test_parameter_page_check_fails_when_stale(tmp_path, monkeypatch):
    params_doc = _params_doc()
    page = tmp_path / "parameters.md"
    monkeypatch.setattr(params_doc, "PAGE", page)
    monkeypatch.setattr(params_doc, "ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["params_doc.py"])
    assert params_doc.main() == 0
    monkeypatch.setattr(sys, "argv", ["params_doc.py", "--check"])
    assert params_doc.main() == 0
    page.write_text(page.read_text().replace("`0.875`", "`0.9`"))
    assert params_doc.main() == 1
