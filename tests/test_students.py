"""Student photos: folder per person, formats, face crops, cache, bad files, splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, SHARED_DATA
from tf_models.data.folders import load_students
from tf_models.faces.crop import CropSettings

SAMPLE = REPO_ROOT / "datasets" / "students" / "sample"
SCENES = SHARED_DATA / "scenes"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _copy_people(tmp_path: Path, people: int = 3) -> Path:
    root = tmp_path / "students"
    for folder in sorted(SAMPLE.iterdir())[:people]:
        shutil.copytree(folder, root / folder.name)
    return root


@pytest.fixture(scope="module")
def sample_table(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_students(SAMPLE, cache_dir=cache, fractions=(0.5, 0.25, 0.25)), cache


def test_bundled_sample_loads_every_person_and_format(sample_table):
    table, _ = sample_table
    assert 20 <= len(table.class_names) <= 30
    assert "Ana María López" in table.class_names  # non-ASCII names with spaces survive
    suffixes = {Path(s).suffix for s in table.frame["source"]}
    assert {".JPG", ".jpeg", ".png", ".webp", ".heic", ".jpg"} <= suffixes
    # every crop is a 160x160 RGB PNG made from a photo of the right person
    for row in table.frame.head(20).itertuples():
        assert Path(row.source).parent.name == table.class_names[row.label]
        with Image.open(row.path) as crop:
            assert crop.size == (160, 160) and crop.mode == "RGB"
    assert len(table.frame) >= 0.9 * 6 * len(table.class_names)
    # stratified by person: every person in every split
    for split in ("train", "val", "test"):
        assert table.split(split)["label"].nunique() == len(table.class_names)


def test_second_run_uses_the_crop_cache(sample_table, monkeypatch):
    table, cache = sample_table
    import tf_models.faces.detector as faces

    def no_detection(*args, **kwargs):
        raise AssertionError("the face cache was not used")

    monkeypatch.setattr(faces, "get_face_detector", no_detection)
    again = load_students(SAMPLE, cache_dir=cache, fractions=(0.5, 0.25, 0.25))
    assert again.frame["path"].tolist() == table.frame["path"].tolist()


def test_crop_settings_change_the_cache_key(tmp_path):
    root = _copy_people(tmp_path, 2)
    table = load_students(root, cache_dir=tmp_path / "c", fractions=(0.5, 0.5, 0.0),
                          crop=CropSettings(size=(64, 64), margin=0.1))
    with Image.open(table.frame["path"].iloc[0]) as crop:
        assert crop.size == (64, 64)


@pytest.mark.skipif(not SCENES.is_dir(), reason="../shared/data/scenes not present")
def test_group_photo_is_skipped_or_largest_face_kept(tmp_path):
    root = _copy_people(tmp_path, 2)
    person = sorted(root.iterdir())[0]
    shutil.copy(SCENES / "deepface_couple.jpg", person / "group.jpg")
    table = load_students(root, cache_dir=tmp_path / "c", fractions=(0.5, 0.5, 0.0))
    reasons = {Path(s["file"]).name: s["reason"] for s in table.report.skipped}
    assert "faces found" in reasons["group.jpg"]
    assert "group.jpg" not in {Path(s).name for s in table.frame["source"]}
    largest = load_students(root, cache_dir=tmp_path / "c", fractions=(0.5, 0.5, 0.0),
                            crop=CropSettings(multiple_faces="largest"))
    assert "group.jpg" in {Path(s).name for s in largest.frame["source"]}


def test_no_face_is_skipped_or_kept_whole(tmp_path):
    root = _copy_people(tmp_path, 2)
    person = sorted(root.iterdir())[0]
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(person / "wall.png")
    table = load_students(root, cache_dir=tmp_path / "c", fractions=(0.5, 0.5, 0.0))
    reasons = {Path(s["file"]).name: s["reason"] for s in table.report.skipped}
    assert reasons["wall.png"].startswith("no face found")
    whole = load_students(root, cache_dir=tmp_path / "c", fractions=(0.5, 0.5, 0.0),
                          crop=CropSettings(keep_whole_if_no_face=True))
    assert "wall.png" in {Path(s).name for s in whole.frame["source"]}


def test_bad_files_in_person_folders(tmp_path):
    root = _copy_people(tmp_path, 3)
    person = sorted(root.iterdir())[0]
    good = sorted(person.glob("*.jpg"))[0]
    (person / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (person / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (person / "notes.txt").write_text("bring ID")
    (person / "empty.jpg").write_bytes(b"")
    (person / "truncated.jpg").write_bytes(good.read_bytes()[:1500])
    (person / "fake.png").write_text("not really a png")
    (root / "stray.jpg").write_bytes(good.read_bytes())
    table = load_students(root, cache_dir=tmp_path / "c", fractions=(0.5, 0.5, 0.0))
    reasons = {Path(s["file"]).name: s["reason"] for s in table.report.skipped}
    assert reasons[".DS_Store"] == "system file" and reasons["Thumbs.db"] == "system file"
    assert reasons["notes.txt"].startswith("not an image file")
    assert reasons["empty.jpg"].startswith("empty file")
    assert "truncated" in reasons["truncated.jpg"]
    assert reasons["fake.png"].startswith("not an image")
    assert reasons["stray.jpg"] == "not inside a person folder"
    for row in table.frame.itertuples():  # no label shift
        assert Path(row.source).parent.name == table.class_names[row.label]


def test_same_photo_under_two_people_is_removed(tmp_path):
    root = _copy_people(tmp_path, 3)
    a, b = sorted(root.iterdir())[:2]
    photo = sorted(a.glob("*.jpg"))[0]
    shutil.copy(photo, b / "copied.jpg")
    table = load_students(root, cache_dir=tmp_path / "c", fractions=(0.5, 0.5, 0.0))
    sources = {Path(s).name for s in table.frame["source"]}
    assert "copied.jpg" not in sources and photo.name not in {Path(s).name for s in table.frame[table.frame.person == a.name]["source"]}
    # the pair, plus any near-duplicate of it (the sample has a few re-encoded CelebA shots)
    assert table.report.duplicates["label_conflicts_removed"] >= 2


def test_unreadable_folder_is_reported(tmp_path, monkeypatch):
    root = _copy_people(tmp_path, 3)
    locked = sorted(root.iterdir())[2]
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    table = load_students(root, cache_dir=tmp_path / "c", fractions=(0.5, 0.5, 0.0))
    reasons = {s["file"]: s["reason"] for s in table.report.skipped}
    assert reasons[str(locked)].startswith("unreadable folder")
    assert locked.name not in table.class_names


def test_too_few_photos_names_the_person(tmp_path):
    root = _copy_people(tmp_path, 2)
    person = sorted(root.iterdir())[1]
    for photo in sorted(person.iterdir())[2:]:
        photo.unlink()
    with pytest.raises(ValueError, match=f"'{person.name}' has 2"):
        load_students(root, cache_dir=tmp_path / "c", fractions=(0.6, 0.2, 0.2))


def test_grayscale_pgm_and_exif_rotated_photos(tmp_path):
    root = _copy_people(tmp_path, 2)
    person = sorted(root.iterdir())[0]
    source = sorted(person.glob("*.jpg"))[0]
    image = Image.open(source)
    image.convert("L").save(person / "gray.pgm")
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated; the viewer rotates back
    image.rotate(-90, expand=True).save(person / "rotated.jpg", exif=exif.tobytes())
    table = load_students(root, cache_dir=tmp_path / "c", fractions=(0.5, 0.5, 0.0), dedup="keep")
    found = {Path(s).name: f for s, f in zip(table.frame["source"], table.frame["face"])}
    assert "gray.pgm" in found
    assert found.get("rotated.jpg") == "one face"  # found only if the rotation was applied
