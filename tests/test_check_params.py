"""stages/check_params.py: the whole params.yaml validated, one line on a problem."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check(d: Path, params: str) -> subprocess.CompletedProcess:
    (d / "params.yaml").write_text(params)
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / "check_params.py")],
        cwd=d,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # two imports of advpipe.config (TensorFlow): ~10 s
def test_a_typo_nobody_declares_fails_in_one_line_and_a_valid_file_writes_the_same_bytes(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    assert "  fgsm:\n    epsilons:" in text
    bad = _check(tmp_path, text.replace("  fgsm:\n    epsilons:", "  fgsm:\n    epsilon:", 1))
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()], bad.stderr  # one line
    assert bad.stderr.startswith("error: ")
    assert (
        "unknown key 'attacks.fgsm.epsilon' (did you mean 'attacks.fgsm.epsilons'?)" in bad.stderr
    )
    assert not (tmp_path / "checks" / "params.ok").exists()

    ok = _check(tmp_path, text + "\n# a comment\n")
    assert ok.returncode == 0, ok.stderr
    from check_params import OK_LINE  # stages/ is on sys.path (conftest)

    assert (tmp_path / "checks" / "params.ok").read_text() == OK_LINE
