"""Stage 'data': build the attack set and the (split) defense set from ``data.source``.

Outputs data/attack/ and data/defense/ (PNG images + manifest.csv) and
metrics/data.json. With ``data.source: urls`` the raw downloads go to data/raw/,
which DVC keeps between runs (persist), so an interrupted download resumes.
"""

import common
from advpipe.config import get, resolve_classes
from advpipe.data import build
from advpipe.data.images import write_image_set
from advpipe.data.splits import stratified_split
from advpipe.reporting import write_json


def main() -> None:
    p = common.params()
    common.log(f"data: model {get(p, 'model.name')}: weights {common.check_model(p)}")
    source = get(p, "data.source")
    size, resample = get(p, "data.image_size"), get(p, "data.resample")
    wanted = {
        "attack": (resolve_classes(get(p, "data.attack_set.classes")),
                   get(p, "data.attack_set.per_class")),
        "defense": (resolve_classes(get(p, "data.defense_set.classes")),
                    get(p, "data.defense_set.per_class")),
    }
    metrics = {"source": source}
    sets = {}
    if source == "samples":
        images, manifest = build.from_samples(size, resample)
        sets = {name: (images, manifest) for name in wanted}
        common.log(f"data: {len(images)} bundled ImageNet images (Foolbox); attack_set/"
                   "defense_set class lists do not apply to 'samples'")
    else:
        for name, (classes, per_class) in wanted.items():
            common.log(f"data: {name} set, {len(classes)} classes x {per_class} images "
                       f"from {source}")
            if source == "folder":
                images, manifest, report = build.from_folder(
                    get(p, "data.folder.path"), classes, per_class, size, resample)
            else:
                images, manifest, report = build.from_urls(
                    p["data"]["urls"], f"data/raw/{name}", classes, per_class, size, resample,
                    progress=common.log)
            sets[name] = (images, manifest)
            metrics[name] = report
    images, manifest = sets["defense"]
    manifest = manifest.assign(split=stratified_split(
        manifest["label"], get(p, "data.defense_set.split"), seed=get(p, "seed")))
    sets["defense"] = (images, manifest)
    for name, (images, manifest) in sets.items():
        write_image_set(f"data/{name}", images, manifest)
        metrics.setdefault(name, {})
        metrics[name]["n_images"] = len(images)
        metrics[name]["n_classes"] = int(manifest["label"].nunique()) if len(manifest) else 0
        if name == "defense":
            metrics[name]["split"] = manifest["split"].value_counts().to_dict()
        common.log(f"data: wrote data/{name} ({len(images)} images)")
    write_json("metrics/data.json", metrics)


if __name__ == "__main__":
    common.run(main)
