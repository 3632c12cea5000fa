"""Stage 'data': build the attack set and the (split) defense set, each from its own source.

``data.attack_set.source`` and ``data.defense_set.source`` pick ``samples``, ``urls``,
``folder`` or ``imagenette``. Outputs data/attack/ and data/defense/ (PNG images +
manifest.csv) and metrics/data.json. Downloads (``urls``: data/raw/<set>/;
``imagenette``: ``data.imagenette.cache_dir``) stay between runs (not DVC outputs), so
an interrupted download resumes.
"""

import sys

import common
from advpipe.config import get, set_classes
from advpipe.data import build
from advpipe.data.errors import DataError
from advpipe.data.images import write_image_set
from advpipe.data.splits import stratified_split
from advpipe.reporting import write_json

SETS = {"attack": "attack_set", "defense": "defense_set"}


def source_settings(data: dict) -> build.SourceSettings:
    """The library's settings of the sources, from the ``data`` params group."""
    return build.SourceSettings(
        resize=build.Resize(int(data["image_size"]), data["resample"], float(data["crop_ratio"])),
        urls=build.UrlSettings(**data["urls"]),
        folder=build.FolderSettings(**data["folder"]),
        imagenette=build.ImagenetteSettings(**data["imagenette"]),
    )


def main() -> None:
    p = common.params()
    common.log(f"data: model {get(p, 'model.name')}: weights {common.check_model(p)}")
    wanted = {}
    for name, key in SETS.items():
        source = get(p, f"data.{key}.source")
        classes = set_classes(p, key)
        if source == "imagenette":  # fail before any download
            from advpipe.data.imagenette import check_classes

            try:
                check_classes(classes, key=f"data.{key}")
            except DataError as exc:
                sys.exit(f"error: {exc}")
        wanted[name] = (source, classes, get(p, f"data.{key}.per_class"))
    metrics = {name: {"source": source} for name, (source, _, _) in wanted.items()}
    settings = source_settings(p["data"])
    sets = {}
    for name, (source, classes, per_class) in wanted.items():
        if source == "samples":
            common.log(
                f"data: {name} set, the bundled ImageNet images (Foolbox); "
                f"data.{SETS[name]}.first/indices/per_class do not apply to 'samples'"
            )
        else:
            common.log(
                f"data: {name} set, {len(classes)} classes x {per_class} images from {source}"
            )
        try:
            images, manifest, report = build.build_set(
                source, settings, f"data/raw/{name}", classes, per_class, progress=common.log
            )
        except (DataError, FileNotFoundError) as exc:
            sys.exit(f"error: {exc}")
        if not len(images):
            sys.exit(f"error: data.{SETS[name]}: no usable image from source '{source}'")
        sets[name] = (images, manifest)
        metrics[name].update(report)
    images, manifest = sets["defense"]
    manifest = manifest.assign(
        split=stratified_split(
            manifest["label"], get(p, "data.defense_set.split"), seed=get(p, "seed")
        )
    )
    sets["defense"] = (images, manifest)
    for name, (images, manifest) in sets.items():
        write_image_set(f"data/{name}", images, manifest)
        metrics[name]["n_images"] = len(images)
        metrics[name]["n_classes"] = int(manifest["label"].nunique())
        if name == "defense":
            metrics[name]["split"] = manifest["split"].value_counts().to_dict()
        common.log(f"data: wrote data/{name} ({len(images)} images)")
    write_json("metrics/data.json", metrics)


if __name__ == "__main__":
    common.run(main)
