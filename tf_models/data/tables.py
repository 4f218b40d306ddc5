"""What every loader returns: a table of usable images with labels and splits, plus its report.

Loaders (``celeba.py``, ``students.py``) know file layouts; this module holds what they share:
the :class:`ImageTable`, the :class:`DataReport`, duplicate handling, subsetting and balancing.
Nothing here knows about models.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tf_models.data.filescan import UnionFind, duplicate_clusters
from tf_models.data.splits import SPLITS

DEDUP_MODES = ("group", "drop", "keep")
BALANCE_MODES = ("none", "undersample", "weights")


def class_weights(labels: Sequence[int], num_classes: int | None = None) -> dict[int, float]:
    """Weights inversely proportional to class counts, mean 1 over samples (Keras ``class_weight``).

    ``n_samples / (n_classes * count)``, the scikit-learn "balanced" rule: with 60% Female / 40% Male
    it gives Female 0.833, Male 1.25.
    """
    counts = Counter(int(label) for label in labels)
    num_classes = num_classes or (max(counts) + 1 if counts else 0)
    total = sum(counts.values())
    missing = [k for k in range(num_classes) if counts.get(k, 0) == 0]
    if missing:
        raise ValueError(f"Class indices {missing} have no samples; cannot weight them.")
    return {k: total / (num_classes * counts[k]) for k in range(num_classes)}


@dataclass
class DataReport:
    """Counts, duplicates and skipped files for one dataset as one run used it (JSON + Markdown)."""

    dataset: str  # 'celeba' or 'students'
    root: str  # the data folder as given
    class_names: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class name -> images
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"} per skipped file
    duplicates: dict[str, int | str] = field(default_factory=dict)  # exact / near counts and the action taken
    notes: list[str] = field(default_factory=list)  # anything else a user should know (balancing, subset, ...)

    def skip(self, file: str | Path, reason: str) -> None:
        self.skipped.append({"file": str(file), "reason": reason})

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [f"# Data report: {self.dataset}", "", f"Data folder: `{self.root}`", ""]
        splits = [s for s in SPLITS if s in self.counts] + [s for s in self.counts if s not in SPLITS]
        lines += ["| class | " + " | ".join(splits) + " | total |", "|---" * (len(splits) + 2) + "|"]
        for name in self.class_names:
            row = [self.counts[s].get(name, 0) for s in splits]
            lines.append(f"| {name} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
        totals = [sum(self.counts[s].values()) for s in splits]
        lines.append("| **all** | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |")
        if self.duplicates:
            lines += ["", "## Duplicates", ""] + [f"- {k}: {v}" for k, v in self.duplicates.items()]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {note}" for note in self.notes]
        lines += ["", f"## Skipped files ({len(self.skipped)})", ""]
        if self.skipped:
            by_reason = pd.Series([s["reason"].split(" (")[0] for s in self.skipped]).value_counts()
            lines += [f"- {reason}: {count}" for reason, count in by_reason.items()] + [""]
            lines += ["| file | reason |", "|---|---|"]
            lines += [f"| `{s['file']}` | {s['reason']} |" for s in self.skipped[:500]]
            if len(self.skipped) > 500:
                lines.append(f"| ... | {len(self.skipped) - 500} more in the JSON report |")
        else:
            lines.append("None.")
        return "\n".join(lines) + "\n"

    def save(self, folder: str | Path, stem: str = "data_report") -> tuple[Path, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
        json_path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return json_path, md_path


@dataclass
class ImageTable:
    """Usable images of one dataset: ``frame`` has columns path, label, group, split (+ attributes)."""

    frame: pd.DataFrame
    class_names: list[str]
    report: DataReport

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name]

    def paths_labels(self, split: str | None = None) -> tuple[list[str], list[int]]:
        frame = self.frame if split in (None, "all") else self.split(split)
        return frame["path"].tolist(), frame["label"].astype(int).tolist()

    def class_weights(self) -> dict[int, float]:
        """Class weights from the training split's counts."""
        return class_weights(self.split("train")["label"].tolist(), len(self.class_names))

    def update_counts(self) -> None:
        self.report.counts = {
            split: {self.class_names[k]: int(v) for k, v in
                    self.split(split)["label"].value_counts().sort_index().items()}
            for split in SPLITS if (self.frame["split"] == split).any()
        }


def apply_duplicates(frame: pd.DataFrame, report: DataReport, mode: str, near_bits: int) -> pd.DataFrame:
    """Finds exact and near duplicates; 'group' keeps each cluster in one split, 'drop' keeps one per cluster.

    A cluster whose members carry different labels cannot be right for all of them: it is removed
    whole and reported, in every mode (never a face filed under two people).
    """
    if mode not in DEDUP_MODES:
        raise ValueError(f"dedup must be one of {DEDUP_MODES}. Received: dedup={mode!r}")
    if frame.empty:
        return frame
    frame = frame.reset_index(drop=True)
    cluster, exact = duplicate_clusters(frame["sha1"].tolist(), frame["phash"].tolist(),
                                        near_bits if mode != "keep" else 0)
    frame = frame.assign(dup_cluster=cluster)
    sizes = frame["dup_cluster"].map(frame["dup_cluster"].value_counts())
    in_cluster = sizes > 1
    n_exact = int(exact.sum())
    n_near = int(in_cluster.sum() - frame.loc[in_cluster, "dup_cluster"].nunique() - n_exact)
    conflicting = frame.groupby("dup_cluster")["label"].transform("nunique") > 1
    for row in frame[conflicting].itertuples():
        others = frame.loc[(frame["dup_cluster"] == row.dup_cluster) & (frame.index != row.Index), "path"]
        report.skip(row.path, f"duplicate with a different label ({', '.join(map(str, others[:3]))})")
    frame = frame[~conflicting]
    report.duplicates = {"exact": n_exact, "near": max(n_near, 0), "clusters": int(frame.loc[in_cluster[~conflicting], "dup_cluster"].nunique()),
                         "label_conflicts_removed": int(conflicting.sum()), "action": mode}
    if mode == "drop":
        keep = ~frame.duplicated("dup_cluster", keep="first")
        for path in frame.loc[~keep, "path"]:
            report.skip(path, "duplicate dropped (dedup=drop)")
        frame = frame[keep]
    # In 'group' mode the split unit is the duplicate cluster merged with the identity group.
    if mode == "group":
        frame = frame.assign(group=_merge_groups(frame["group"].astype(str).to_numpy(), frame["dup_cluster"].to_numpy()))
    return frame.drop(columns=["dup_cluster"]).reset_index(drop=True)


def _merge_groups(groups: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Connected components of 'same group' and 'same duplicate cluster'."""
    uf = UnionFind(len(groups))
    for key_column in (groups, clusters):
        first: dict = {}
        for i, key in enumerate(key_column):
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    return np.array([f"g{uf.find(i)}" for i in range(len(groups))])


def take_subset(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A stratified random subset of ``n`` rows (same class proportions as the whole table)."""
    if n is None or n >= len(frame):
        return frame
    if n <= 0:
        raise ValueError(f"subset must be a positive number of images. Received: subset={n}")
    fraction = n / len(frame)
    parts = [part.sample(n=max(1, round(len(part) * fraction)), random_state=seed)
             for _, part in frame.groupby("label")]
    subset = pd.concat(parts)
    return subset.sample(n=min(n, len(subset)), random_state=seed).sort_index()


def undersample(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Drops random rows of larger classes down to the smallest class's count."""
    smallest = int(frame["label"].value_counts().min())
    parts = [part.sample(n=smallest, random_state=seed) for _, part in frame.groupby("label")]
    return pd.concat(parts).sort_index()


def finish_table(frame: pd.DataFrame, class_names: Sequence[str], report: DataReport, balance: str,
                 seed: int) -> ImageTable:
    """Applies balancing to the training split, fills the report counts, returns the table."""
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}. Received: balance={balance!r}")
    if balance == "undersample":
        train = frame[frame["split"] == "train"]
        kept = undersample(train, seed)
        report.notes.append(f"balance=undersample: training split reduced from {len(train)} to {len(kept)} "
                            "images (val/test keep their natural class mix)")
        frame = pd.concat([kept, frame[frame["split"] != "train"]]).sort_index()
    table = ImageTable(frame.reset_index(drop=True), list(class_names), report)
    if balance == "weights":
        weights = table.class_weights()
        report.notes.append("balance=weights: class weights " +
                            ", ".join(f"{class_names[k]} {w:.3f}" for k, w in weights.items()))
    table.update_counts()
    return table
