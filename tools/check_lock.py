"""Check that dvc.lock vouches for the committed results: it records the code and params
of the working tree.

    python tools/check_lock.py [REPO]        (REPO: default, the current directory)

Runs DVC's status (what ``dvc status --json`` prints) and fails, one line per problem
and a summary line last, when any stage has

* a dependency that is modified, new, or deleted (a deleted dependency is fine when it is
  an output of a stage, e.g. ``data/attack`` not pulled: see below);
* a changed param, or a changed command;
* an output that is there but differs from the lock, or that the lock does not record.

Outputs that are simply missing (``deleted``, ``not in cache``: ``data/`` and ``models/``
not pulled, no DVC cache on a fresh clone) are fine: they are results not fetched, not
results that disagree with the code. Exit status: 0 when the lock matches, 1 when it does
not, 2 when DVC cannot read the pipeline.
"""

from __future__ import annotations

import os
import sys

MISSING_OUT = {"deleted", "not in cache"}
IGNORED = {"always changed"}  # a stage declared always_changed: no lock mismatch


def _rel(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _inside(a: str, b: str) -> bool:
    """``a`` is ``b`` or under it."""
    return a == b or a.startswith(b.rstrip("/") + "/")


def lock_problems(root: str = ".") -> tuple[list[str], int, int]:
    """``(problems, number of stages, number of missing outputs)`` of the repository at
    ``root``, one problem per line ``<stage>: <what> <path> <status>``."""
    from dvc.repo import Repo

    with Repo(root) as repo:
        top = repo.root_dir
        stages = list(repo.index.stages)
        outs = [_rel(o.fs_path, top) for s in stages for o in s.outs]
        status = repo.status()

    def produced(dep: str) -> bool:  # an output of the pipeline, or a folder of outputs
        return any(_inside(dep, out) or _inside(out, dep) for out in outs)

    problems: list[str] = []
    missing = 0
    for stage, entries in sorted(status.items()):
        for entry in entries:
            if isinstance(entry, str):
                if entry not in IGNORED:
                    problems.append(f"{stage}: {entry}")
                continue
            for kind, changes in entry.items():
                for path, st in changes.items():
                    if isinstance(st, dict):  # a params file: key -> status
                        problems += [f"{stage}: param {path}:{key} {s}" for key, s in st.items()]
                    elif kind == "changed deps":
                        rel = _rel(os.path.join(top, path), top)
                        if st == "deleted" and produced(rel):
                            continue  # an output not pulled (its stage answers for it)
                        problems.append(f"{stage}: dependency {path} {st}")
                    elif kind == "changed outs" and st in MISSING_OUT:
                        missing += 1
                    else:
                        what = "output" if kind == "changed outs" else kind
                        problems.append(f"{stage}: {what} {path} {st}")
    return problems, len(stages), missing


def main(argv: list[str]) -> int:
    root = argv[0] if argv else "."
    try:
        problems, n_stages, missing = lock_problems(root)
    except Exception as exc:  # DVC cannot read dvc.yaml / dvc.lock, not a repository...
        print(
            f"check_lock: error: DVC cannot read the pipeline: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())}",
            file=sys.stderr,
        )
        return 2
    for line in problems:
        print(line)
    stages = {line.split(":", 1)[0] for line in problems}
    if problems:
        print(
            f"check_lock: FAILED: {len(problems)} problem(s) in {len(stages)} of {n_stages} "
            "stage(s): dvc.lock does not record the code and params of this tree (run "
            "`dvc repro` and commit dvc.lock with its outputs)"
        )
        return 1
    note = f"; {missing} output(s) not in the workspace (not pulled: fine)" if missing else ""
    print(f"check_lock: ok: dvc.lock matches the code and params of all {n_stages} stage(s){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
