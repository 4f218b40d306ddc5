"""CelebA (or any attribute-labelled folder of images) as an :class:`~tf_models.data.tables.ImageTable`.

Reads the official attribute file (``list_attr_celeba.txt``: a count line, a header line, rows of
1/-1), Kaggle's CSV (``list_attr_celeba.csv``) and generic labels CSVs (``--x-col/--y-col``, as
``flow_from_dataframe`` took them). Splits by identity when ``identity_CelebA.txt`` is there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tf_models.data.tables import DataReport, ImageTable, apply_duplicates, finish_table, take_subset
from tf_models.data.filescan import NEAR_DUPLICATE_BITS, default_cache_dir, scan_files
from tf_models.images import read_image
from tf_models.data.splits import celeba_official_partition, stratified_split

SPLIT_MODES = ("auto", "identity", "official", "random")
_PARTITION_NAMES = {0: "train", 1: "val", 2: "test"}


def find_images_dir(root: Path) -> Path:
    """``img_align_celeba/``, Kaggle's double ``img_align_celeba/img_align_celeba/``, or ``root`` itself."""
    for candidate in (root / "img_align_celeba" / "img_align_celeba", root / "img_align_celeba", root):
        if candidate.is_dir() and any(p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in _first(candidate)):
            return candidate
    raise FileNotFoundError(f"No images found in {root}, {root / 'img_align_celeba'} or "
                            f"{root / 'img_align_celeba' / 'img_align_celeba'}. See datasets/celeba/README.md.")


def _first(folder: Path, n: int = 50) -> list[Path]:
    out = []
    for path in folder.iterdir():
        out.append(path)
        if len(out) >= n:
            break
    return out


def read_attribute_file(path: Path) -> pd.DataFrame:
    """Official ``list_attr_celeba.txt`` or Kaggle ``list_attr_celeba.csv`` -> image_id + 40 int columns."""
    if path.suffix.lower() == ".csv":
        frame = pd.read_csv(path)
        first = frame.columns[0]
        return frame.rename(columns={first: "image_id"})
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    try:
        header = lines[1].split()
        rows = [line.split() for line in lines[2:] if line.strip()]
    except IndexError as err:
        raise ValueError(f"{path} is not in the official CelebA format (count line, header line, rows)") from err
    bad = [i + 3 for i, row in enumerate(rows) if len(row) != len(header) + 1]
    if bad:
        raise ValueError(f"{path}: lines {bad[:5]} do not have {len(header) + 1} fields (file name + {len(header)} attributes)")
    frame = pd.DataFrame(rows, columns=["image_id", *header])
    frame[header] = frame[header].astype(int)
    return frame


def _read_two_columns(path: Path, value_name: str) -> pd.DataFrame:
    """``name value`` text files (identity, partition) or their CSV forms."""
    if path.suffix.lower() == ".csv":
        frame = pd.read_csv(path)
        frame.columns = ["image_id", value_name]
        return frame
    return pd.read_csv(path, sep=r"\s+", header=None, names=["image_id", value_name], dtype={0: str})


def _binary_class_names(attribute: str) -> list[str]:
    return ["Female", "Male"] if attribute == "Male" else [f"not {attribute}", attribute]


def _labels_from_values(values: pd.Series, attribute: str) -> tuple[pd.Series, list[str]]:
    """1/-1 or 1/0 -> 0/1 with names; anything else -> categorical indices over sorted values."""
    present = set(values.dropna().unique().tolist())
    if present <= {1, -1, 0, "1", "-1", "0"}:
        numeric = pd.to_numeric(values, errors="coerce")
        return (numeric == 1).astype(int).where(values.notna()), _binary_class_names(attribute)
    names = sorted(str(v) for v in present)
    index = {name: k for k, name in enumerate(names)}
    return values.map(lambda v: index.get(str(v)) if pd.notna(v) else np.nan), names


def _converted_copy(path: str, cache_dir: Path) -> str:
    """A PNG copy TensorFlow can decode (HEIC, 16-bit, EXIF-rotated...), keyed by content."""
    data = Path(path).read_bytes()
    target = cache_dir / "converted" / f"{hashlib.sha1(data).hexdigest()}.png"
    if not target.exists():
        from PIL import Image

        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(read_image(path)).save(target)
    return str(target)


def load_celeba(
    data_dir: str | Path,
    *,
    labels_csv: str | Path | None = None,
    x_col: str = "image_id",
    y_col: str | None = None,
    attribute: str = "Male",
    split: str = "auto",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    subset: int | None = None,
    balance: str = "none",
    dedup: str = "group",
    near_bits: int = NEAR_DUPLICATE_BITS,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> ImageTable:
    """Loads a CelebA-style folder: labels, checks, duplicates, split, balance. See the module docstring.

    Args:
        data_dir: the folder holding ``img_align_celeba/`` and the label files.
        labels_csv: a generic labels CSV (relative to ``data_dir`` or absolute) instead of the attribute file.
        x_col / y_col: the CSV's file-name and label columns (``y_col`` defaults to ``attribute``).
        attribute: the CelebA attribute to predict (default 'Male': classes Female / Male).
        split: 'auto' (identity-disjoint if identities are known, else stratified random),
            'identity', 'official' (list_eval_partition or file numbers) or 'random'.
        fractions: train / val / test fractions for the random and identity splits.
        subset: use a stratified random subset of this many images.
        balance: 'none', 'undersample' (training split) or 'weights' (reported; the trainer applies them).
        dedup: 'group' (duplicates kept together in one split), 'drop' (keep one) or 'keep'.
        seed: drives subset, split and undersampling.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"CelebA folder not found: {root}. See datasets/celeba/README.md for the layout.")
    if split not in SPLIT_MODES:
        raise ValueError(f"split must be one of {SPLIT_MODES}. Received: split={split!r}")
    images_dir = find_images_dir(root)
    target = y_col or attribute
    labels, attributes = _read_labels(root, labels_csv, x_col, target)
    label, class_names = _labels_from_values(labels[target], target)
    frame = labels.assign(label=label)
    report = DataReport("celeba", str(data_dir), class_names)
    for name in frame.loc[frame["label"].isna(), "image_id"]:
        report.skip(name, f"no {target} label")
    frame = frame[frame["label"].notna()].astype({"label": int}).drop_duplicates("image_id")
    frame, mode = _with_identities(frame, root, split)
    frame = _usable_files(frame, images_dir, subset, seed, Path(cache_dir) if cache_dir else default_cache_dir(),
                          report)
    frame["group"] = frame["identity"].astype(str) if mode == "identity" else frame["image_id"]
    frame = apply_duplicates(frame, report, dedup, near_bits)
    frame["split"] = _splits(frame, root, mode, fractions, seed, report)
    if mode != "official":
        report.notes.append(f"split: {mode} ({'identity-disjoint' if mode == 'identity' else 'stratified random'}"
                            f"{', duplicate clusters kept together' if dedup == 'group' else ''}), "
                            f"fractions {tuple(fractions)}, seed {seed}")
    keep = ["path", "image_id", "label", "group", "split", *([c for c in attributes if c != target] if attributes else [])]
    if "identity" in frame.columns:
        keep.insert(4, "identity")
    return finish_table(frame[keep], class_names, report, balance, seed)


def _read_labels(root: Path, labels_csv: str | Path | None, x_col: str,
                 target: str) -> tuple[pd.DataFrame, list[str] | None]:
    """(labels with an ``image_id`` column, the attribute names when read from the attribute file)."""
    if labels_csv is not None:
        # A bare name lives in the data folder; a path that exists as given (absolute, or relative
        # to the working directory as a shell user types it) is taken as is.
        given = Path(labels_csv)
        csv_path = given if given.is_absolute() or given.is_file() else root / labels_csv
        if not csv_path.is_file():
            raise FileNotFoundError(f"Labels CSV not found: {labels_csv!r} (looked in the working directory and in "
                                    f"{root}). Received: labels_csv={labels_csv!r}")
        labels = pd.read_csv(csv_path)
        for column in (x_col, target):
            if column not in labels.columns:
                raise ValueError(f"{csv_path.name} has no column {column!r}; its columns: {list(labels.columns)}. "
                                 f"Received: x_col={x_col!r}, y_col={target!r}")
        labels = labels.rename(columns={x_col: "image_id"})
        attributes = None
    else:
        found = [p for p in (root / "list_attr_celeba.txt", root / "list_attr_celeba.csv") if p.is_file()]
        if not found:
            raise FileNotFoundError(f"No list_attr_celeba.txt / .csv in {root}; pass labels_csv (--labels-csv) "
                                    "with x_col/y_col for another labels file.")
        labels = read_attribute_file(found[0])
        attributes = [c for c in labels.columns if c != "image_id"]
        if target not in labels.columns:
            raise ValueError(f"Unknown CelebA attribute {target!r}. Valid: {', '.join(attributes)}. "
                             f"Received: attribute={target!r}")
    labels["image_id"] = labels["image_id"].astype(str)
    return labels, attributes


def _with_identities(frame: pd.DataFrame, root: Path, split: str) -> tuple[pd.DataFrame, str]:
    """The frame with its ``identity`` column (from identity_CelebA.txt when present), and the split mode."""
    identity_file = root / "identity_CelebA.txt"
    if "identity" not in frame.columns and identity_file.is_file():
        frame = frame.merge(_read_two_columns(identity_file, "identity"), on="image_id", how="left")
    has_identity = "identity" in frame.columns and frame["identity"].notna().any()
    mode = ("identity" if has_identity else "random") if split == "auto" else split
    if mode == "identity" and not has_identity:
        raise ValueError(f"split='identity' needs identity_CelebA.txt in {root} (or an 'identity' column). "
                         "Use split='random' or 'official'.")
    return frame, mode


def _usable_files(frame: pd.DataFrame, images_dir: Path, subset: int | None, seed: int, cache: Path,
                  report: DataReport) -> pd.DataFrame:
    """Rows whose file exists and decodes (subset drawn first); odd formats get a converted copy."""
    frame = frame.assign(path=[str(images_dir / name) for name in frame["image_id"]])
    exists = frame["path"].map(lambda p: Path(p).is_file())
    for name in frame.loc[~exists, "image_id"]:
        report.skip(name, "image file missing")
    if (~exists).any():
        report.notes.append(f"{int((~exists).sum())} labelled images have no file in {images_dir}")
    frame = take_subset(frame[exists], subset, seed)
    if subset is not None:
        report.notes.append(f"subset: {len(frame)} images drawn (stratified, seed {seed})")
    cache_key = hashlib.sha1(str(images_dir.resolve()).encode()).hexdigest()[:12]
    scan = scan_files(frame["path"].tolist(), cache / "scans" / f"celeba-{cache_key}.csv")
    for row in scan[~scan["ok"]].itertuples():
        report.skip(row.path, row.reason)
    frame = frame.reset_index(drop=True).join(scan.drop(columns=["path"]))
    frame = frame[frame["ok"]].copy()
    needs_copy = ~frame["tf_ok"].astype(bool)
    frame.loc[needs_copy, "path"] = [_converted_copy(p, cache) for p in frame.loc[needs_copy, "path"]]
    return frame


def _splits(frame: pd.DataFrame, root: Path, mode: str, fractions: Sequence[float], seed: int,
            report: DataReport) -> list[str] | np.ndarray:
    """train / val / test per row: the official partition, or stratified by group (identity or image)."""
    if mode != "official":
        return stratified_split(frame["label"].to_numpy(), fractions, seed, groups=frame["group"].to_numpy())
    partition_file = next((p for p in (root / "list_eval_partition.txt", root / "list_eval_partition.csv")
                           if p.is_file()), None)
    if partition_file is None:
        report.notes.append("split: official partition derived from file numbers (no list_eval_partition file)")
        return celeba_official_partition(frame["image_id"].tolist())
    partition = _read_two_columns(partition_file, "partition")
    lookup = dict(zip(partition["image_id"].astype(str), partition["partition"].astype(int)))
    report.notes.append(f"split: official partition from {partition_file.name}")
    return [_PARTITION_NAMES.get(lookup.get(name, -1), "train") for name in frame["image_id"]]
