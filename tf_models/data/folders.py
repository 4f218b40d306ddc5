"""Student photos (one folder per person) as an :class:`~tf_models.data.tables.ImageTable` of face crops.

Faces are found with MTCNN (one detector per process), cropped with a margin, resized and cached
on disk keyed by file content and crop settings, so a second run skips detection. A photo with no
face or several faces is reported and skipped by default: a face is never filed under the wrong
person. Exact duplicates filed under two different people are removed and reported.
"""

from __future__ import annotations


import io
import json
import unicodedata

from pathlib import Path
from typing import Sequence

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from tf_models.data.tables import DataReport, ImageTable, apply_duplicates, finish_table
from tf_models.data.filescan import NEAR_DUPLICATE_BITS, default_cache_dir, scan_files
from tf_models.files import atomic_write
from tf_models.images import ImageReadError, is_image_path, read_image
from tf_models.data.splits import check_class_sizes, stratified_split
from tf_models.faces.crop import CropSettings

def _person_name(folder: Path) -> str:
    # macOS writes folder names decomposed (NFD); Windows/Linux composed. One person, one name.
    return unicodedata.normalize("NFC", folder.name).strip()


def _crop_one(path: str, sha1: str, crop: CropSettings, cache: Path) -> tuple[str | None, str]:
    """Returns (cached crop path or None, outcome). The outcome is cached too: no re-detection."""
    stem = cache / f"{sha1}-{crop.key()}"
    meta_path, png_path = stem.with_suffix(".json"), stem.with_suffix(".png")
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta["kept"] and png_path.is_file():
            return str(png_path), meta["outcome"]
        if not meta["kept"]:
            return None, meta["outcome"]
    from tf_models.faces.crop import cut_face
    from tf_models.faces.detector import get_face_detector

    image = read_image(path)
    detector = get_face_detector(crop.detect_max_side, crop.min_face_size, crop.min_confidence)
    faces = detector.detect(image)
    box = keypoints = None
    if len(faces) == 1:
        box, keypoints, outcome = faces[0].box, faces[0].landmarks, "one face"
    elif len(faces) > 1 and crop.multiple_faces == "largest":
        box, keypoints, outcome = faces[0].box, faces[0].landmarks, f"{len(faces)} faces, kept the largest"
    elif len(faces) > 1:
        outcome = f"{len(faces)} faces found (use multiple_faces='largest' to keep the largest)"
    elif crop.keep_whole_if_no_face:
        box, outcome = (0, 0, image.shape[1], image.shape[0]), "no face found, kept whole"
    else:
        outcome = "no face found (use keep_whole_if_no_face for already-cropped photos)"
    kept = box is not None
    cache.mkdir(parents=True, exist_ok=True)
    if kept:  # the crop first, then the outcome that points at it; each whole or not at all
        margin = 0.0 if outcome.endswith("kept whole") else crop.margin
        png = io.BytesIO()
        Image.fromarray(cut_face(image, box, keypoints, crop, margin=margin)).save(png, format="PNG")
        atomic_write(png_path, png.getvalue())
    atomic_write(meta_path, json.dumps({"kept": kept, "outcome": outcome, "box": list(box) if kept else None,
                                        "source": path}))
    return (str(png_path) if kept else None), outcome


def find_person_files(root: Path, report: DataReport) -> pd.DataFrame:
    """Every image under ``root/<person>/``; everything else goes to the report with a reason."""
    rows = []
    for entry in sorted(root.iterdir()):
        if entry.is_file():
            report.skip(entry, "not inside a person folder")
            continue
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            next(entry.iterdir(), None)  # rglob silently skips what it cannot read; iterdir raises
            files = sorted(p for p in entry.rglob("*") if p.is_file())
        except OSError as err:
            report.skip(entry, f"unreadable folder ({err.strerror or err})")
            continue
        for path in files:
            if not is_image_path(path):
                kind = "system file" if path.name.startswith(".") or path.name.lower() in ("thumbs.db", "desktop.ini") \
                    else f"not an image file ({path.suffix or 'no extension'})"
                report.skip(path, kind)
                continue
            rows.append({"source": str(path), "person": _person_name(entry)})
    return pd.DataFrame(rows, columns=["source", "person"])


def load_students(
    data_dir: str | Path,
    *,
    crop: CropSettings = CropSettings(),
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    balance: str = "none",
    dedup: str = "group",
    near_bits: int = NEAR_DUPLICATE_BITS,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ImageTable:
    """Loads ``root/<Person Name>/*`` photos, crops faces, removes bad files and duplicates, splits.

    ``fractions`` with a zero test share gives train/val only (e.g. for K-fold the caller uses
    ``tf_models.data.splits.kfold_indices`` on the table). The table's ``path`` column points at the
    cached face crops; ``source`` at the original photos.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Students folder not found: {root}. Expected root/<Person Name>/<photos>; "
                                "see datasets/students/README.md.")
    report = DataReport("students", str(data_dir), [])
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    files = find_person_files(root, report)
    if files.empty:
        raise ValueError(f"No photos found under {root}/<Person Name>/. See datasets/students/README.md.")

    scan = scan_files(files["source"].tolist(), cache / "scans" / "students.csv")
    for row in scan[~scan["ok"]].itertuples():
        report.skip(row.path, row.reason)
    files = files.join(scan.drop(columns=["path"]))
    files = files[files["ok"]].reset_index(drop=True)

    class_names = sorted(files["person"].unique().tolist())
    report.class_names = class_names
    index = {name: k for k, name in enumerate(class_names)}
    files = files.assign(label=files["person"].map(index), group=files["source"], path=files["source"])
    files = apply_duplicates(files, report, dedup, near_bits)

    crops, outcomes = [], []
    faces_dir = cache / "faces"
    for row in tqdm(files.itertuples(), total=len(files), desc="finding faces", unit="photo",
                    disable=not progress or len(files) < 20, leave=False):
        try:
            crop_path, outcome = _crop_one(row.source, row.sha1, crop, faces_dir)
        except ImageReadError as err:
            crop_path, outcome = None, err.reason
        crops.append(crop_path)
        outcomes.append(outcome)
        if crop_path is None:
            report.skip(row.source, outcome)
    files = files.assign(path=crops, face=outcomes)
    files = files[files["path"].notna()].reset_index(drop=True)
    kept_counts = files["face"].value_counts().to_dict()
    report.notes.append("faces: " + ", ".join(f"{k}: {v}" for k, v in kept_counts.items()))
    framing = "turned upright on 5 keypoints" if crop.align else "box squared"
    report.notes.append(f"crops: {framing}, margin {crop.margin}, size {crop.size[0]}x{crop.size[1]}, cached in {faces_dir}")

    # Class indices stay those of the folders; a person left with no usable photo is an error below.
    needed = sum(1 for f in fractions if f > 0)
    check_class_sizes(files["label"].tolist(), class_names, needed, f"a {'/'.join(s for s, f in zip(('train', 'val', 'test'), fractions) if f > 0)} split")
    files["split"] = stratified_split(files["label"].to_numpy(), fractions, seed, groups=files["group"].to_numpy())
    report.notes.append(f"split: stratified by person, duplicate clusters kept together, fractions {tuple(fractions)}, seed {seed}")
    return finish_table(files[["path", "source", "person", "label", "group", "split", "face"]], class_names, report,
                        balance, seed)
