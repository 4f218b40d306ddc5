"""CelebA loading, splits, duplicates, reports, bad files, and the tf.data pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO_ROOT, SHARED_DATA
from tf_models.data.celeba import load_celeba, read_attribute_file
from tf_models.data.tables import class_weights
from tf_models.images import ImageReadError, read_image
from tf_models.data.splits import celeba_official_partition, check_class_sizes, kfold_indices, stratified_split

SAMPLE = REPO_ROOT / "datasets" / "celeba" / "sample"
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "celeba").is_dir(), reason="../shared/data/celeba not present")


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _mini_celeba(tmp_path: Path, n: int = 40, kaggle: bool = False) -> Path:
    """A copy of the first n bundled sample images, in the official or Kaggle layout."""
    root = tmp_path / "celeba"
    images = root / "img_align_celeba" / ("img_align_celeba" if kaggle else "")
    images.mkdir(parents=True)
    attributes = read_attribute_file(SAMPLE / "list_attr_celeba.txt")
    attributes = pd.concat([attributes[attributes.Male == -1].head(n // 2), attributes[attributes.Male == 1].head(n // 2)])
    for name in attributes["image_id"]:
        shutil.copy(SAMPLE / "img_align_celeba" / name, images / name)
    if kaggle:
        attributes.to_csv(root / "list_attr_celeba.csv", index=False)
    else:
        header = [c for c in attributes.columns if c != "image_id"]
        rows = [f"{r[0]} " + " ".join(str(v) for v in r[1:]) for r in attributes.itertuples(index=False)]
        (root / "list_attr_celeba.txt").write_text("\n".join([str(len(rows)), " ".join(header), *rows]) + "\n")
    shutil.copy(SAMPLE / "identity_CelebA.txt", root / "identity_CelebA.txt")
    return root


def _truth(root: Path) -> dict[str, int]:
    attrs_file = root / "list_attr_celeba.txt"
    frame = read_attribute_file(attrs_file if attrs_file.exists() else root / "list_attr_celeba.csv")
    return dict(zip(frame["image_id"], (frame["Male"] == 1).astype(int)))


def _assert_labels_match(table, truth: dict[str, int]) -> None:
    for row in table.frame.itertuples():
        assert row.label == truth[Path(row.path).name], f"label shift at {row.path}"


# ---- formats ------------------------------------------------------------------------------------

def test_official_attribute_file_and_identity_split(tmp_path, cache):
    root = _mini_celeba(tmp_path)
    table = load_celeba(root, cache_dir=cache)
    assert table.class_names == ["Female", "Male"]
    assert len(table.frame) == 40
    _assert_labels_match(table, _truth(root))
    # identity-disjoint: no identity in two splits
    per_identity = table.frame.groupby("identity")["split"].nunique()
    assert (per_identity == 1).all()
    assert set(table.frame["split"]) == {"train", "val", "test"}
    assert "identity-disjoint" in " ".join(table.report.notes)


def test_kaggle_csv_and_double_folder(tmp_path, cache):
    root = _mini_celeba(tmp_path, kaggle=True)
    table = load_celeba(root, cache_dir=cache)
    assert len(table.frame) == 40
    _assert_labels_match(table, _truth(root))
    assert all("img_align_celeba/img_align_celeba" in p for p in table.frame["path"])


@needs_shared
def test_generic_labels_csv_with_x_and_y_columns(cache):
    table = load_celeba(SHARED_DATA / "celeba", labels_csv="gender_labels.csv", x_col="image_id", y_col="Male",
                        subset=300, cache_dir=cache)
    assert table.class_names == ["Female", "Male"]
    assert len(table.frame) == 300
    truth = pd.read_csv(SHARED_DATA / "celeba" / "gender_labels.csv").set_index("image_id")["Male"]
    assert all(truth[Path(p).name] == label for p, label in zip(table.frame["path"], table.frame["label"]))
    # the CSV's own identity column gives identity-disjoint splits
    assert (table.frame.groupby("identity")["split"].nunique() == 1).all()


def test_other_attribute_and_unknown_attribute(tmp_path, cache):
    root = _mini_celeba(tmp_path)
    table = load_celeba(root, attribute="Eyeglasses", split="random", cache_dir=cache)
    assert table.class_names == ["not Eyeglasses", "Eyeglasses"]
    with pytest.raises(ValueError, match="Unknown CelebA attribute 'Glasses'.*Eyeglasses"):
        load_celeba(root, attribute="Glasses", cache_dir=cache)


def test_bad_labels_csv_column_is_clear(tmp_path, cache):
    root = _mini_celeba(tmp_path)
    pd.DataFrame({"file": ["000045.jpg"], "Male": [1]}).to_csv(root / "labels.csv", index=False)
    with pytest.raises(ValueError, match="no column 'image_id'"):
        load_celeba(root, labels_csv="labels.csv", cache_dir=cache)


def test_official_partition_from_file_numbers():
    assert list(celeba_official_partition(["000001.jpg", "162770.jpg", "162771.jpg", "182638.jpg"])) == \
        ["train", "train", "val", "test"]


def test_official_split_mode_uses_partition_file(tmp_path, cache):
    root = _mini_celeba(tmp_path)
    names = sorted(p.name for p in (root / "img_align_celeba").iterdir())
    (root / "list_eval_partition.txt").write_text("\n".join(f"{n} {i % 3}" for i, n in enumerate(names)) + "\n")
    table = load_celeba(root, split="official", cache_dir=cache)
    expected = {n: ("train", "val", "test")[i % 3] for i, n in enumerate(names)}
    assert all(expected[Path(p).name] == s for p, s in zip(table.frame["path"], table.frame["split"]))


# ---- subset, balance, seeds ---------------------------------------------------------------------

def test_subset_and_undersample_and_weights(tmp_path, cache):
    root = _mini_celeba(tmp_path, n=40)
    # make it unbalanced: drop 10 males' labels -> 20 F / 10 M
    truth = _truth(root)
    males = [n for n, v in truth.items() if v == 1][:10]
    for name in males:
        (root / "img_align_celeba" / name).unlink()
    table = load_celeba(root, split="random", balance="undersample", cache_dir=cache)
    train = table.split("train")["label"].value_counts()
    assert train[0] == train[1]
    assert "balance=undersample" in " ".join(table.report.notes)
    assert len([s for s in table.report.skipped if s["reason"] == "image file missing"]) == 10
    weighted = load_celeba(root, split="random", balance="weights", cache_dir=cache)
    weights = weighted.class_weights()
    labels = weighted.split("train")["label"]
    assert weights[0] * (labels == 0).sum() == pytest.approx(weights[1] * (labels == 1).sum())
    small = load_celeba(root, split="random", subset=12, cache_dir=cache)
    assert len(small.frame) == 12


def test_class_weights_match_the_reference_project():
    labels = [0] * 60 + [1] * 40
    weights = class_weights(labels)
    assert weights[0] == pytest.approx(0.8333, abs=1e-4) and weights[1] == pytest.approx(1.25)


def test_same_seed_same_split_other_seed_differs(tmp_path, cache):
    root = _mini_celeba(tmp_path)
    a = load_celeba(root, split="random", seed=3, cache_dir=cache).frame
    b = load_celeba(root, split="random", seed=3, cache_dir=cache).frame
    c = load_celeba(root, split="random", seed=4, cache_dir=cache).frame
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_stratified_split_keeps_class_ratio_and_groups():
    labels = np.array([0] * 70 + [1] * 30)
    split = stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    for name, expected in (("train", 80), ("val", 10), ("test", 10)):
        assert abs((split == name).sum() - expected) <= 2
        assert set(labels[split == name]) == {0, 1}
    groups = np.repeat(np.arange(20), 5)
    split = stratified_split(labels, (0.6, 0.2, 0.2), seed=1, groups=groups)
    for g in range(20):
        assert len(set(split[groups == g])) == 1


def test_kfold_is_stratified_and_group_aware():
    labels = np.array([0] * 12 + [1] * 9)
    folds = kfold_indices(labels, 3, seed=0)
    assert len(folds) == 3
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(21))
    for _, test in folds:
        assert (labels[test] == 1).sum() == 3
    groups = np.repeat(np.arange(7), 3)
    for train, test in kfold_indices(labels, 3, seed=0, groups=groups):
        assert not set(groups[train]) & set(groups[test])


def test_too_few_images_names_the_class():
    with pytest.raises(ValueError, match="'Bob' has 2"):
        check_class_sizes([0, 0, 0, 1, 1], ["Alice", "Bob"], 3, "a train/val/test split")


# ---- duplicates -----------------------------------------------------------------------------------

def test_exact_and_near_duplicates_are_found_and_kept_together(tmp_path, cache):
    root = _mini_celeba(tmp_path)
    images = root / "img_align_celeba"
    names = sorted(p.name for p in images.iterdir())
    truth = _truth(root)
    # exact copy under a new name with the same label, and a re-encoded (near) copy
    shutil.copy(images / names[0], images / "900001.jpg")
    Image.open(images / names[1]).save(images / "900002.jpg", quality=70)
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    row0 = next(l for l in lines if l.startswith(names[0])).replace(names[0], "900001.jpg")
    row1 = next(l for l in lines if l.startswith(names[1])).replace(names[1], "900002.jpg")
    lines[0] = str(int(lines[0]) + 2)
    (root / "list_attr_celeba.txt").write_text("\n".join(lines + [row0, row1]) + "\n")
    table = load_celeba(root, split="random", dedup="group", cache_dir=cache)
    assert table.report.duplicates["exact"] == 1
    assert table.report.duplicates["near"] >= 1
    split_of = dict(zip(table.frame["image_id"], table.frame["split"]))
    assert split_of["900001.jpg"] == split_of[names[0]]
    assert split_of["900002.jpg"] == split_of[names[1]]
    dropped = load_celeba(root, split="random", dedup="drop", cache_dir=cache)
    assert len(dropped.frame) == len(table.frame) - 2
    assert sum(s["reason"].startswith("duplicate dropped") for s in dropped.report.skipped) == 2
    assert truth  # labels untouched


def test_duplicate_with_conflicting_labels_is_removed(tmp_path, cache):
    root = _mini_celeba(tmp_path)
    images = root / "img_align_celeba"
    truth = _truth(root)
    female = next(n for n, v in truth.items() if v == 0)
    shutil.copy(images / female, images / "900003.jpg")
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    header = lines[1].split()
    male_index = header.index("Male")
    values = ["-1"] * len(header)
    values[male_index] = "1"  # the same photo labelled Male
    lines[0] = str(int(lines[0]) + 1)
    (root / "list_attr_celeba.txt").write_text("\n".join(lines + ["900003.jpg " + " ".join(values)]) + "\n")
    table = load_celeba(root, split="random", cache_dir=cache)
    assert "900003.jpg" not in set(table.frame["image_id"]) and female not in set(table.frame["image_id"])
    assert table.report.duplicates["label_conflicts_removed"] == 2


# ---- bad input: one test per kind -------------------------------------------------------------------

def _add_file(root: Path, name: str, content: bytes | None = None, from_image: str | None = None) -> None:
    path = root / "img_align_celeba" / name
    if from_image is not None:
        data = (root / "img_align_celeba" / from_image).read_bytes()
        path.write_bytes(data if content is None else content(data))
    else:
        path.write_bytes(content or b"")
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    header = lines[1].split()
    lines[0] = str(int(lines[0]) + 1)
    (root / "list_attr_celeba.txt").write_text("\n".join(lines + [name + " " + " ".join(["1"] * len(header))]) + "\n")


@pytest.mark.parametrize("kind, name, maker, reason", [
    ("truncated", "800001.jpg", lambda d: d[: len(d) // 2], "corrupt or truncated"),
    ("corrupt header", "800002.jpg", lambda d: d[:200] + bytes(range(256)) * 8 + d[2248:], "not an image"),
    ("zero-byte", "800003.jpg", lambda d: b"", "empty file"),
    ("text file", "800004.jpg", lambda d: b"just some notes\n", "not an image"),
    ("ds_store", "800005.jpg", lambda d: b"\x00\x00\x00\x01Bud1" + b"\x00" * 100, "not an image"),
])
def test_bad_files_are_skipped_with_a_reason_and_no_label_shift(tmp_path, cache, kind, name, maker, reason):
    root = _mini_celeba(tmp_path)
    truth = _truth(root)
    first = sorted(truth)[0]
    _add_file(root, name, content=maker, from_image=first)
    table = load_celeba(root, split="random", cache_dir=cache)
    skipped = {Path(s["file"]).name: s["reason"] for s in table.report.skipped}
    assert name in skipped and reason in skipped[name], skipped
    assert name not in set(table.frame["image_id"])
    assert len(table.frame) == 40
    _assert_labels_match(table, _truth(root) | {name: 1})
    md = table.report.to_markdown()
    assert name in md and "Skipped files (1)" in md


def test_wrong_extension_is_read_by_content(tmp_path, cache):
    root = _mini_celeba(tmp_path)
    first = sorted(_truth(root))[0]
    png = Image.open(root / "img_align_celeba" / first)
    png.save(root / "img_align_celeba" / "800010.jpg", format="PNG")  # a PNG named .jpg
    _add_file(root, "800011.jpg", content=lambda d: d, from_image="800010.jpg")
    (root / "img_align_celeba" / "800010.jpg").unlink()
    table = load_celeba(root, split="random", dedup="keep", cache_dir=cache)
    assert "800011.jpg" in set(table.frame["image_id"])


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000)).save(path, optimize=True)  # ~400 MP, tiny on disk
    assert path.stat().st_size < 2_000_000
    with pytest.raises(ImageReadError, match="too large|decompression bomb"):
        read_image(path)


def test_image_modes_become_rgb(tmp_path):
    for mode, value in (("L", 128), ("RGBA", (10, 20, 30, 0)), ("P", 3), ("I;16", 65535), ("LA", (50, 255))):
        path = tmp_path / f"{mode.replace(';', '')}.png"
        Image.new(mode, (8, 6), value).save(path)
        array = read_image(path)
        assert array.shape == (6, 8, 3) and array.dtype == np.uint8, mode
    assert (read_image(tmp_path / "I16.png") == 255).all()  # 16-bit scaled, not clipped
    assert (read_image(tmp_path / "RGBA.png") == 255).all()  # transparent -> white background


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "rot.jpg").shape == (40, 20, 3)


def test_missing_folder_and_missing_labels_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="datasets/celeba/README.md"):
        load_celeba(tmp_path / "nope")
    (tmp_path / "img_align_celeba").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img_align_celeba" / "000001.jpg")
    with pytest.raises(FileNotFoundError, match="--labels-csv"):
        load_celeba(tmp_path)


# ---- report -------------------------------------------------------------------------------------

def test_report_json_and_markdown(tmp_path, cache):
    root = _mini_celeba(tmp_path)
    table = load_celeba(root, cache_dir=cache)
    json_path, md_path = table.report.save(tmp_path / "run")
    data = json.loads(json_path.read_text())
    assert data["class_names"] == ["Female", "Male"]
    assert sum(sum(v.values()) for v in data["counts"].values()) == 40
    md = md_path.read_text()
    assert "| Female |" in md and "| **all** |" in md


def test_bundled_sample_is_small_balanced_and_official():
    total = sum(p.stat().st_size for p in (REPO_ROOT / "datasets").rglob("*") if p.is_file())
    assert total < 15 * 1024 * 1024
    attributes = read_attribute_file(SAMPLE / "list_attr_celeba.txt")
    assert len(attributes) <= 1000
    assert (attributes["Male"] == 1).sum() == (attributes["Male"] == -1).sum()
    assert all((SAMPLE / "img_align_celeba" / n).is_file() for n in attributes["image_id"])
