"""Stage 'check_params': validate the whole params.yaml before any other stage runs.

DVC re-runs a stage only when a key it declares changes, so a misspelled key that no
stage declares (``attacks.fgsm.epsilon``) would otherwise go unnoticed: every stage
skipped, the typo silently ignored. This stage depends on the whole file, so any edit
re-runs it, and a problem ends ``dvc repro`` with ONE line ``error: ...`` (as every
stage, through ``common.run``), exit status 1, before anything expensive starts. Every
other stage depends on its output ``checks/params.ok``, whose content never changes: a
valid edit re-runs this check and nothing downstream (stages still re-run on the keys
they declare).

Usage: ``python stages/check_params.py [params.yaml [checks/params.ok]]``.
"""

import sys

import common
from advpipe.config import load_params
from advpipe.reporting import atomic_write_text

OK_LINE = "params.yaml is valid (stages/check_params.py)\n"


def main(path: str = "params.yaml", ok: str = "checks/params.ok") -> None:
    load_params(path)
    atomic_write_text(ok, OK_LINE)  # the same bytes on every valid run: nothing downstream re-runs


if __name__ == "__main__":
    common.run(main, *sys.argv[1:3], runtime=False)
