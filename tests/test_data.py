"""Class index, resizing, image sets, the bundled samples, the folder source, the split."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from advpipe.data.class_index import imagenet_classes
from advpipe.data.folder import load_folder
from advpipe.data.images import read_image_set, to_rgb, to_square, write_image_set
from advpipe.data.samples import load_samples
from advpipe.data.splits import stratified_split


def test_class_index_known_entries():
    c = imagenet_classes()
    assert len(c) == 1000
    assert c.wnids[0] == "n01440764" and c.short_name(0) == "tench"
    assert (c.short_name(96), c.short_name(530), c.short_name(950)) == (
        "toucan", "digital clock", "orange")
    assert c.index_of("n07747607") == 950
    assert list(c.wnids) == sorted(c.wnids)  # the standard order: sorted by WordNet id
    with pytest.raises(KeyError, match="n99999999"):
        c.index_of("n99999999")


def test_to_square_short_side_then_centre_crop():
    # a 400x200 image: left half red, right half blue, a green centre band
    arr = np.zeros((200, 400, 3), np.uint8)
    arr[:, :200, 0] = 255
    arr[:, 200:, 2] = 255
    arr[:, 190:210] = (0, 255, 0)
    out = np.asarray(to_square(Image.fromarray(arr), 100))
    assert out.shape == (100, 100, 3)
    # short side 200 -> 100, width 400 -> 200, centre 100 kept: x in [100, 300) of the original
    assert out[50, 50, 1] > 200          # the green band sits in the middle
    assert out[50, 2, 0] > 200 and out[50, 97, 2] > 200
    with pytest.raises(ValueError, match="resample"):
        to_square(Image.fromarray(arr), 100, "cubic")


GREY = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # ITU-R 601-2 luma of (200, 100, 50)
RGB = Image.new("RGB", (8, 8), (200, 100, 50))


@pytest.mark.parametrize("make,expected,tol", [
    (lambda: RGB.convert("L"), (GREY,) * 3, 0),
    (lambda: RGB.convert("LA"), (GREY,) * 3, 0),
    (lambda: RGB.convert("CMYK"), (200, 100, 50), 0),
    (lambda: RGB.convert("P", palette=Image.Palette.ADAPTIVE), (200, 100, 50), 0),
    (lambda: RGB.convert("RGBA"), (200, 100, 50), 0),
    (lambda: Image.fromarray(np.full((8, 8), GREY * 257, np.uint16)), (GREY,) * 3, 1),  # I;16
], ids=["L", "LA", "CMYK", "P", "RGBA", "I;16"])
def test_to_rgb_modes(make, expected, tol):
    out = to_rgb(make())
    assert out.mode == "RGB" and out.size == (8, 8)
    pixels = np.asarray(out).reshape(-1, 3).astype(int)
    assert (np.abs(pixels - expected) <= tol).all(), pixels[0]


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(img)).min() == 255


def test_image_set_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    manifest = pd.DataFrame({"label": [1, 2, 3], "wnid": ["a", "b", "c"], "name": list("xyz"),
                             "split": ["train", "val", "test"]})
    write_image_set(tmp_path / "s", images, manifest)
    back, m = read_image_set(tmp_path / "s")
    np.testing.assert_array_equal(back, images)
    assert list(m["label"]) == [1, 2, 3]
    val, mv = read_image_set(tmp_path / "s", split="val")
    np.testing.assert_array_equal(val, images[1:2])
    assert not list((tmp_path / "s").rglob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="data"):
        read_image_set(tmp_path / "missing")


def test_bundled_samples():
    images, manifest = load_samples()
    assert images.shape == (20, 224, 224, 3) and images.dtype == np.uint8
    assert manifest["label"].between(0, 999).all()
    assert manifest.loc[0, "label"] == 243 and manifest.loc[0, "name"] == "bull mastiff"


def test_folder_source(tmp_path):
    c = imagenet_classes()
    rng = np.random.default_rng(1)
    for label in (1, 2):
        d = tmp_path / c.wnids[label]
        d.mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    (tmp_path / c.wnids[1] / "0.jpg").write_bytes(b"not an image")  # skipped, next one taken
    images, manifest, report = load_folder(tmp_path, [1, 2], per_class=2, size=32)
    assert images.shape == (4, 32, 32, 3)
    assert list(manifest["label"]) == [1, 1, 2, 2]
    assert report[c.wnids[1]]["taken"] == 2 and len(report[c.wnids[1]]["skipped"]) == 1
    with pytest.raises(FileNotFoundError, match="class 3"):
        load_folder(tmp_path, [3], per_class=1)


def test_split_is_stratified_exact_and_deterministic():
    labels = np.repeat([96, 530, 950], 500)
    split = stratified_split(labels, {"train": 300, "val": 100, "test": 100}, seed=0)
    for cls in (96, 530, 950):
        counts = pd.Series(split[labels == cls]).value_counts()
        assert counts.to_dict() == {"train": 300, "val": 100, "test": 100}
    np.testing.assert_array_equal(split, stratified_split(labels, {"train": 3, "val": 1,
                                                                   "test": 1}, seed=0))
    assert (split != stratified_split(labels, {"train": 3, "val": 1, "test": 1}, seed=1)).any()


def test_split_keeps_overall_proportions_for_tiny_classes():
    labels = np.arange(20)  # one image per class, like the bundled samples
    split = stratified_split(labels, {"train": 300, "val": 100, "test": 100}, seed=0)
    assert pd.Series(split).value_counts().to_dict() == {"train": 12, "val": 4, "test": 4}
    with pytest.raises(ValueError, match="must be non-negative and not all 0"):
        stratified_split(labels, {"train": 0, "val": 0, "test": 0}, seed=0)
