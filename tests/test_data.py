"""Class index, resizing, image sets, the bundled samples, the folder source, the split."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from advpipe.data.class_index import imagenet_classes
from advpipe.data.folder import ImageChecks, UnreadableClassError, load_folder
from advpipe.data.images import load_square, read_image_set, to_rgb, to_square, write_image_set
from advpipe.data.samples import load_samples
from advpipe.data.splits import stratified_split


def test_class_index_known_entries():
    c = imagenet_classes()
    assert len(c) == 1000
    assert c.wnids[0] == "n01440764" and c.short_name(0) == "tench"
    assert (c.short_name(96), c.short_name(530), c.short_name(950)) == (
        "toucan",
        "digital clock",
        "orange",
    )
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
    assert out[50, 50, 1] > 200  # the green band sits in the middle
    assert out[50, 2, 0] > 200 and out[50, 97, 2] > 200
    with pytest.raises(ValueError, match="resample"):
        to_square(Image.fromarray(arr), 100, "cubic")


def test_crop_ratio_cuts_the_border_standard_imagenet_eval(tmp_path):
    # 320x320: a 20-pixel red frame around a green centre. crop_ratio 0.875 at size 224:
    # short side -> 256 (scale 0.8, the frame becomes 16 px), centre 224 -> the frame is cut.
    arr = np.zeros((320, 320, 3), np.uint8)
    arr[:, :] = (255, 0, 0)
    arr[20:300, 20:300] = (0, 255, 0)
    img = Image.fromarray(arr)
    cropped = np.asarray(to_square(img, 224, "nearest", crop_ratio=0.875))
    assert cropped.shape == (224, 224, 3)
    assert (cropped == (0, 255, 0)).all()  # no red pixel left anywhere
    full = np.asarray(to_square(img, 224, "nearest", crop_ratio=1.0))
    assert (full[:10, :, 0] == 255).all() and (full[112, 112] == (0, 255, 0)).all()
    # a frame wider than the cut survives: 40 px -> 32 px at 256, 16 px cut on each side
    arr[20:300, 20:300] = (255, 0, 0)
    arr[40:280, 40:280] = (0, 0, 255)
    out = np.asarray(to_square(Image.fromarray(arr), 224, "nearest", crop_ratio=0.875))
    assert (out[:16, :, 0] == 255).all() and (out[16:208, 16:208, 2] == 255).all()
    assert (out[16:208, 16:208, 0] == 0).all()
    # a 224x224 image (the bundled samples) is zoomed too, and load_square agrees
    Image.fromarray(arr).resize((224, 224), Image.Resampling.NEAREST).save(tmp_path / "a.png")
    loaded = load_square(tmp_path / "a.png", 224, "nearest", crop_ratio=0.875)
    assert loaded.shape == (224, 224, 3) and (loaded[0, 0] == (255, 0, 0)).all()
    assert (loaded[:16, :, 0] == 255).all() and (loaded[16:208, 16:208, 2] == 255).all()
    with pytest.raises(ValueError, match="crop_ratio"):
        to_square(img, 224, crop_ratio=0.0)


def test_crop_ratio_non_square_keeps_aspect_and_centre():
    # 400x200 landscape, crop_ratio 0.5 at size 50: short side -> 100, width -> 200,
    # centre 50x50 = original x in [150, 250), y in [50, 150)
    arr = np.zeros((200, 400, 3), np.uint8)
    arr[50:150, 150:250] = (0, 0, 255)
    out = np.asarray(to_square(Image.fromarray(arr), 50, "nearest", crop_ratio=0.5))
    assert out.shape == (50, 50, 3) and (out == (0, 0, 255)).all()
    portrait = np.ascontiguousarray(arr.transpose(1, 0, 2))
    out = np.asarray(to_square(Image.fromarray(portrait), 50, "nearest", crop_ratio=0.5))
    assert out.shape == (50, 50, 3) and (out == (0, 0, 255)).all()


GREY = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # ITU-R 601-2 luma of (200, 100, 50)
RGB = Image.new("RGB", (8, 8), (200, 100, 50))


@pytest.mark.parametrize(
    "make,expected,tol",
    [
        (lambda: RGB.convert("L"), (GREY,) * 3, 0),
        (lambda: RGB.convert("LA"), (GREY,) * 3, 0),
        (lambda: RGB.convert("CMYK"), (200, 100, 50), 0),
        (lambda: RGB.convert("P", palette=Image.Palette.ADAPTIVE), (200, 100, 50), 0),
        (lambda: RGB.convert("RGBA"), (200, 100, 50), 0),
        (lambda: Image.fromarray(np.full((8, 8), GREY * 257, np.uint16)), (GREY,) * 3, 1),  # I;16
    ],
    ids=["L", "LA", "CMYK", "P", "RGBA", "I;16"],
)
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
    manifest = pd.DataFrame(
        {
            "label": [1, 2, 3],
            "wnid": ["a", "b", "c"],
            "name": list("xyz"),
            "split": ["train", "val", "test"],
        }
    )
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


def _photo_folder(root, labels, n, size=(72, 96), seed=1):
    """Photo-like JPEGs (white noise is rejected by the downloader's noise check)."""
    from test_download import photo

    c = imagenet_classes()
    for label in labels:
        d = root / c.wnids[label]
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(photo(*size, seed=seed + 100 * label + i)).save(d / f"{i}.jpg")
    return c


def test_folder_source(tmp_path):
    c = _photo_folder(tmp_path, (1, 2), 3)
    (tmp_path / c.wnids[1] / "0.jpg").write_bytes(b"not an image")  # skipped, next one taken
    images, manifest, report = load_folder(tmp_path, [1, 2], per_class=2, size=32)
    assert images.shape == (4, 32, 32, 3)
    assert list(manifest["label"]) == [1, 1, 2, 2]
    assert report[c.wnids[1]]["taken"] == 2 and len(report[c.wnids[1]]["skipped"]) == 1
    assert report[c.wnids[1]]["rejected"] == {"decode_error": 1}
    with pytest.raises(FileNotFoundError, match="class 3"):
        load_folder(tmp_path, [3], per_class=1)


def test_folder_applies_the_downloader_checks(tmp_path):
    c = _photo_folder(tmp_path, (5,), 2)
    d = tmp_path / c.wnids[5]
    Image.new("RGB", (100, 90), (128, 128, 128)).save(d / "0a_blank.png")  # placeholder
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 90, 3), dtype=np.uint8)).save(
        d / "0b_small.png"
    )  # side < 64
    big = Image.fromarray(np.random.default_rng(3).integers(0, 256, (100, 120, 3), np.uint8))
    big.save(d / "0c_big.png")  # 12000 px
    images, manifest, report = load_folder(
        tmp_path, [5], per_class=2, size=32, checks=ImageChecks(min_side=64, max_pixels=10_000)
    )
    assert [Path(f).name for f in manifest["source"]] == ["0.jpg", "1.jpg"]
    assert report[c.wnids[5]]["rejected"] == {
        "placeholder_uniform": 1,
        "too_many_pixels": 1,
        "too_small_side": 1,
    }
    # the blank image alone is not a usable class
    for f in ("0.jpg", "1.jpg", "0b_small.png", "0c_big.png"):
        (d / f).unlink()
    with pytest.raises(UnreadableClassError, match="placeholder_uniform: 1"):
        load_folder(tmp_path, [5], per_class=2, size=32)


def test_folder_class_with_only_unreadable_files(tmp_path, caplog):
    c = _photo_folder(tmp_path, (1, 7), 3)
    bad = tmp_path / c.wnids[7]
    for i, f in enumerate(sorted(bad.iterdir())):
        f.write_bytes(b"junk" * 1000 if i else b"\xff\xd8\xff\xe0" + b"\0" * 3000)
    Image.new("RGB", (100, 100), (0, 0, 0)).save(bad / "3.png")
    with pytest.raises(UnreadableClassError) as err:
        load_folder(tmp_path, [1, 7], per_class=2, size=32)
    message = str(err.value)
    assert "\n" not in message
    assert f"class 7 ({c.wnids[7]}, {c.short_name(7)}) has no usable image" in message
    assert "4 files; decode_error: 3, placeholder_uniform: 1" in message
    assert "data.folder.skip_unreadable_classes" in message
    (tmp_path / c.wnids[9]).mkdir()  # an empty class folder is no better
    with pytest.raises(UnreadableClassError, match="class 9 .* no image files"):
        load_folder(tmp_path, [9], per_class=2, size=32)
    # skipped with a warning; the split of what is left does not crash
    with caplog.at_level("WARNING"):
        images, manifest, report = load_folder(
            tmp_path, [1, 7], per_class=2, size=32, skip_unreadable_classes=True
        )
    assert "class 7" in caplog.text and "skipped" in caplog.text
    assert images.shape == (2, 32, 32, 3) and list(manifest["label"]) == [1, 1]
    assert report[c.wnids[7]]["skipped_class"] is True
    split = stratified_split(manifest["label"], {"train": 1, "val": 1, "test": 0}, seed=0)
    assert sorted(split) == ["train", "val"]
    # every class skipped: an empty set with the usual columns, and an empty split
    images, manifest, _ = load_folder(
        tmp_path, [7, 9], per_class=2, size=32, skip_unreadable_classes=True
    )
    assert images.shape == (0, 32, 32, 3) and list(manifest.columns[:2]) == ["label", "wnid"]
    assert len(stratified_split(manifest["label"], {"train": 1, "val": 1, "test": 1}, 0)) == 0


def test_split_is_stratified_exact_and_deterministic():
    labels = np.repeat([96, 530, 950], 500)
    split = stratified_split(labels, {"train": 300, "val": 100, "test": 100}, seed=0)
    for cls in (96, 530, 950):
        counts = pd.Series(split[labels == cls]).value_counts()
        assert counts.to_dict() == {"train": 300, "val": 100, "test": 100}
    np.testing.assert_array_equal(
        split, stratified_split(labels, {"train": 3, "val": 1, "test": 1}, seed=0)
    )
    assert (split != stratified_split(labels, {"train": 3, "val": 1, "test": 1}, seed=1)).any()


def test_split_keeps_overall_proportions_for_tiny_classes():
    labels = np.arange(20)  # one image per class, like the bundled samples
    split = stratified_split(labels, {"train": 300, "val": 100, "test": 100}, seed=0)
    assert pd.Series(split).value_counts().to_dict() == {"train": 12, "val": 4, "test": 4}
    with pytest.raises(ValueError, match="must be non-negative and not all 0"):
        stratified_split(labels, {"train": 0, "val": 0, "test": 0}, seed=0)
