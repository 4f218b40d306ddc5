"""Train/val/test splits and K-fold, stratified, optionally group-disjoint, all driven by one seed.

Group-disjoint means a group (a CelebA identity, or a cluster of duplicate images) never sits in
two splits: random image splits put the same person in train and test and inflate accuracy.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

SPLITS = ("train", "val", "test")


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1 (train, val, test). "
                         f"Received: fractions={tuple(fractions)}")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def check_class_sizes(labels: Sequence[int], class_names: Sequence[str], needed: int, purpose: str) -> None:
    """Raises a ValueError naming every class with fewer than ``needed`` images."""
    counts = Counter(int(label) for label in labels)
    small = [(class_names[k], counts.get(k, 0)) for k in range(len(class_names)) if counts.get(k, 0) < needed]
    if small:
        listed = ", ".join(f"{name!r} has {count}" for name, count in small)
        raise ValueError(f"Too few images for {purpose}: each class needs at least {needed}; {listed}. "
                         "Add photos, merge or drop those classes, or change the split.")


def stratified_split(labels: Sequence[int], fractions: Sequence[float], seed: int,
                     groups: Sequence[object] | None = None) -> np.ndarray:
    """Assigns 'train' / 'val' / 'test' per item, stratified by label, keeping each group in one split.

    Per class, items (or whole groups, taken at their majority label) are shuffled with ``seed`` and
    cut at the cumulative fractions, rounding so that every non-empty split gets at least one item
    of each class when the class is large enough.
    """
    fractions = _check_fractions(fractions)
    labels = np.asarray(labels)
    n = len(labels)
    group_ids = np.arange(n) if groups is None else np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    assignment = np.empty(n, dtype=object)
    # A group's stratum is its most common label.
    group_label: dict[int, int] = {}
    for g in np.unique(group_ids):
        members = labels[group_ids == g]
        group_label[int(g)] = Counter(members.tolist()).most_common(1)[0][0]
    group_size = Counter(group_ids.tolist())
    for label in np.unique(labels):
        stratum = np.array([g for g, lab in group_label.items() if lab == label])
        rng.shuffle(stratum)
        sizes = np.array([group_size[int(g)] for g in stratum])
        cumulative = np.cumsum(sizes) / max(sizes.sum(), 1)
        train_end, val_end = fractions[0], fractions[0] + fractions[1]
        split_of_group = np.where(cumulative <= train_end + 1e-9, "train",
                                  np.where(cumulative <= val_end + 1e-9, "val", "test"))
        # Guarantee a member in every requested split when there are enough groups.
        wanted = [s for s, f in zip(SPLITS, fractions) if f > 0]
        if len(stratum) >= len(wanted):
            for position, split in zip((0, len(stratum) - 1, len(stratum) - 2), ("train", "test", "val")):
                if split in wanted and split not in split_of_group:
                    split_of_group[position] = split
        for g, split in zip(stratum, split_of_group):
            assignment[group_ids == g] = split
    return assignment.astype(str)


def kfold_indices(labels: Sequence[int], k: int, seed: int, groups: Sequence[object] | None = None
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold (group-aware when ``groups`` is given): a list of (train_idx, test_idx)."""
    if k < 2:
        raise ValueError(f"K-fold needs k >= 2. Received: k={k}")
    labels = np.asarray(labels)
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return [(a, b) for a, b in splitter.split(np.zeros(len(labels)), labels)]
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(a, b) for a, b in splitter.split(np.zeros(len(labels)), labels, np.asarray(groups, dtype=str))]


def celeba_official_partition(file_names: Sequence[str]) -> np.ndarray:
    """The official CelebA partition derived from the file number (1-162770 train, -182637 val, rest test)."""
    numbers = np.array([int("".join(ch for ch in name.split(".")[0] if ch.isdigit()) or 0) for name in file_names])
    return np.where(numbers <= 162770, "train", np.where(numbers <= 182637, "val", "test"))
