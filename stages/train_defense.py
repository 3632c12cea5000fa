"""Stage 'train_clean' / 'train@<defense>': train one defense model.

Usage: python stages/train_defense.py {clean,kurakin_step_ll,kurakin_fgsm,...}
Writes models/defense/<name>.keras (+ .json), metrics/defense/train/<name>.json,
plots/defense/curves/<name>.csv and timings/train_<name>.json.
"""

import sys

import common
from advpipe.defenses.registry import DEFENSES
from advpipe.reporting import write_json, write_rows_csv
from wiring import defense_setup


def main(name: str) -> None:
    p = common.params()
    train_x, train_y, _, classes = common.defense_split("train")
    val_x, val_y, _, _ = common.defense_split("val", classes)
    if len(train_x) == 0 or len(val_x) == 0:
        raise ValueError(
            f"data.defense_set.split: the defense set has {len(train_x)} train and "
            f"{len(val_x)} val images; training needs both"
        )
    common.log(
        f"{name}: {len(classes)} classes {classes}, {len(train_x)} train / {len(val_x)} val images"
    )
    from advpipe.defenses.train import train_defense

    out = train_defense(
        name, defense_setup(p, name), (train_x, train_y), (val_x, val_y), classes, log=common.log
    )
    from advpipe.runtime import is_chief

    if not is_chief():  # a multi-worker run: only the chief writes the stage's outputs
        return
    write_json(f"metrics/defense/train/{name}.json", out["metrics"])
    write_rows_csv(f"plots/defense/curves/{name}.csv", out["curves"])
    common.write_timing(f"train@{name}", out["timings"])


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in DEFENSES:
        sys.exit(f"usage: python stages/train_defense.py {{{','.join(DEFENSES)}}}")
    common.run(main, sys.argv[1], training=True)
