"""Resuming a long computation per ε: finished parts are kept until the whole run ends.

An AutoAttack evaluation runs for minutes to hours per ε. :class:`PerEpsilonStore`
writes each finished ε's result (a JSON-ready dict) atomically into a folder named by a
fingerprint of everything the result depends on (model weights, settings, images, code);
a run that was interrupted finds the finished ε there and computes only the others, and
within the ε it was in, goes on from the last finished batch (:class:`Checkpoint`). A
change of any of them changes the fingerprint, so nothing stale is reused. The caller
removes the folder once every output is written (:meth:`clear`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from .reporting import atomic_write_text


def fingerprint(*parts) -> str:
    """A short hash of JSON-able values, NumPy arrays (their bytes) and file trees."""
    h = hashlib.sha256()
    for part in parts:
        if hasattr(part, "tobytes"):
            h.update(str((part.dtype, part.shape)).encode())
            h.update(part.tobytes())
        elif isinstance(part, Path):
            files = sorted(part.rglob("*.py")) if part.is_dir() else [part]
            for f in files:
                h.update(str(f.relative_to(part) if part.is_dir() else f.name).encode())
                h.update(f.read_bytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class Checkpoint:
    """One unfinished ε's state (a JSON-ready dict), saved atomically after each batch so
    an interrupted run loses at most the batch in flight."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):  # a damaged file: start the ε afresh
            return None

    def save(self, state: Mapping) -> None:
        atomic_write_text(self.path, json.dumps(state))


class PerEpsilonStore:
    """Finished per-ε results under ``directory/<key>/eps_<ε>.json``; the state of an
    unfinished ε under ``eps_<ε>.partial.json`` (:meth:`partial`), removed when it ends."""

    def __init__(self, directory: str | Path, key: str):
        self.root = Path(directory)
        self.path = self.root / key

    def _file(self, eps: float) -> Path:
        return self.path / f"eps_{float(eps):.10g}.json"

    def get(self, eps: float) -> dict | None:
        f = self._file(eps)
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):  # a damaged file: compute again
            return None

    def put(self, eps: float, result: Mapping) -> None:
        atomic_write_text(self._file(eps), json.dumps(result))
        self.partial(eps).path.unlink(missing_ok=True)

    def partial(self, eps: float) -> Checkpoint:
        """Where the run of ``eps`` keeps its progress until :meth:`put`."""
        return Checkpoint(self.path / f"eps_{float(eps):.10g}.partial.json")

    def clear(self) -> None:
        """Remove this run's folder, then ``directory`` and, for a relative ``directory``,
        its parents up to the working directory, each only while nothing else is left in it
        (``resume/evaluate_clean`` leaves no empty ``resume/`` behind)."""
        shutil.rmtree(self.path, ignore_errors=True)
        folders = [self.root]
        if not self.root.is_absolute():
            folders += [q for q in self.root.parents if q != Path(".")]
        for folder in folders:
            try:
                folder.rmdir()  # only an empty folder; another run's files stop the walk
            except OSError:
                break
