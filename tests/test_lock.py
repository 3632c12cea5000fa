"""tools/check_lock.py: dvc.lock must record the code and params of the tree; missing
(not pulled) outputs are fine; bytecode caches (.dvcignore) never count as a change."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "check_lock.py"
ENV = dict(
    os.environ,
    DVC_NO_ANALYTICS="1",
    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
)


def _run(args, cwd, check=True):
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _check(repo: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, str(TOOL), str(repo)], repo, check=False)


@pytest.fixture
def project(tmp_path):
    """A tiny DVC project, reproduced: stage `make` (a script, a package folder dep, a
    param, a cached output) feeding stage `use` (that output as a dep)."""
    d = tmp_path / "project"
    (d / "pkg").mkdir(parents=True)
    (d / "pkg" / "__init__.py").write_text("")
    (d / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (d / "make.py").write_text(
        "import sys, yaml\nsys.path.insert(0, '.')\nfrom pkg.mod import VALUE\n"
        "x = yaml.safe_load(open('params.yaml'))['x']\n"
        "open('out.txt', 'w').write(f'{VALUE * x}\\n')\n"
    )
    (d / "params.yaml").write_text("x: 2\n")
    (d / "dvc.yaml").write_text(
        "stages:\n"
        "  make:\n"
        "    cmd: python make.py\n"
        "    deps: [make.py, pkg]\n"
        "    params: [x]\n"
        "    outs: [out.txt]\n"
        "  use:\n"
        "    cmd: python -c \"open('used.txt', 'w').write(open('out.txt').read())\"\n"
        "    deps: [out.txt]\n"
        "    outs: [{used.txt: {cache: false}}]\n"
    )
    shutil.copy2(ROOT / ".dvcignore", d / ".dvcignore")  # the repository's own
    _run(["git", "init", "-q"], d)
    _run([sys.executable, "-m", "dvc", "init", "-q"], d)
    _run([sys.executable, "-m", "dvc", "repro", "-q"], d)
    return d


def test_a_matching_lock_passes_even_with_bytecode_and_missing_outputs(project):
    ok = _check(project)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().splitlines() == [
        "check_lock: ok: dvc.lock matches the code and params of all 2 stage(s)"
    ]

    # bytecode in a folder dep: .dvcignore leaves it out of the folder's hash
    (project / "pkg" / "__pycache__").mkdir()
    (project / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00bytecode")
    assert _check(project).returncode == 0
    # ... which is what makes it pass: without .dvcignore the folder counts as modified
    (project / ".dvcignore").unlink()
    bare = _check(project)
    assert bare.returncode == 1 and "make: dependency pkg modified" in bare.stdout
    shutil.copy2(ROOT / ".dvcignore", project / ".dvcignore")

    # a fresh clone: cached outputs neither in the workspace nor in the cache
    (project / "out.txt").unlink()
    shutil.rmtree(project / ".dvc" / "cache")
    missing = _check(project)
    assert missing.returncode == 0, missing.stdout + missing.stderr
    assert "1 output(s) not in the workspace" in missing.stdout


def test_a_changed_dependency_or_param_fails_one_line_each(project):
    with open(project / "pkg" / "mod.py", "a") as f:
        f.write("# edited\n")
    (project / "params.yaml").write_text("x: 3\n")
    (project / "used.txt").write_text("edited by hand\n")
    bad = _check(project)
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        "make: dependency pkg modified",
        "make: param params.yaml:x modified",
        "use: output used.txt modified",
        "check_lock: FAILED: 3 problem(s) in 2 of 2 stage(s): dvc.lock does not record the "
        "code and params of this tree (run `dvc repro` and commit dvc.lock with its outputs)",
    ]


def test_an_unreadable_pipeline_is_an_error(project):
    (project / "dvc.yaml").write_text("stages: [\n")
    proc = _check(project)
    assert proc.returncode == 2 and "check_lock: error: DVC cannot read the pipeline" in proc.stderr


def test_this_repository_names_the_stage_of_a_changed_source_file(tmp_path):
    """In a clone of HEAD (its dvc.yaml and dvc.lock; data/ and models/ not pulled), an edit
    of a stage's script is reported against that stage."""
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(ROOT), str(clone)], tmp_path)
    with open(clone / "stages" / "baseline.py", "a") as f:
        f.write("# edited\n")
    proc = _check(clone)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "baseline: dependency stages/baseline.py modified" in lines
    assert [line for line in lines if "stages/baseline.py" in line] == [
        "baseline: dependency stages/baseline.py modified"
    ]
    assert lines[-1].startswith("check_lock: FAILED: ")
