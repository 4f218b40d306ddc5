"""One pass over a dataset's files: validate, hash, find duplicates. Cached, parallel, with progress.

Every loader runs its files through :func:`scan_files` before anything else, so corrupt,
truncated, empty and non-image files are skipped with a reason long before training, and exact
(content hash) and near duplicates (perceptual hash) are known before the split.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import imagehash
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tf_models.files import atomic_write
from tf_models.images import ImageReadError, check_image, to_rgb

# Bump when a column is computed differently, so old cache files are not mixed with new rows.
SCAN_VERSION = 2
SCAN_COLUMNS = ["path", "size", "mtime", "ok", "reason", "sha1", "phash", "tf_ok"]
# Perceptual hashes within this Hamming distance (of 64 bits) count as near-duplicates: re-encoded
# or resized copies land at 0-2; different photos of one person rarely fall under 10.
NEAR_DUPLICATE_BITS = 3


def default_cache_dir() -> Path:
    """``$TF_MODELS_CACHE``, else ``~/.cache/tf_models``: data folders may be read-only."""
    return Path(os.environ.get("TF_MODELS_CACHE") or Path.home() / ".cache" / "tf_models")


def _scan_one(path: str) -> dict:
    stat = os.stat(path) if os.path.exists(path) else None
    row = {"path": path, "size": stat.st_size if stat else -1, "mtime": stat.st_mtime if stat else -1.0,
           "ok": False, "reason": "", "sha1": "", "phash": "", "tf_ok": False}
    try:
        tf_ok, image = check_image(path)  # the one full decode of this file
        with image:
            row["phash"] = str(imagehash.phash(to_rgb(image).convert("L")))
        row["sha1"] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
        row.update(ok=True, tf_ok=tf_ok)
    except ImageReadError as err:
        row["reason"] = err.reason
    except OSError as err:  # permission denied and the like
        row["reason"] = f"unreadable ({err.strerror or err})"
    return row


def scan_files(paths: Sequence[str | Path], cache_file: Path | None = None, workers: int | None = None,
               desc: str = "checking images") -> pd.DataFrame:
    """Validates and hashes ``paths``; one row per path, in order. Results are cached by (path, size, mtime)."""
    paths = [str(p) for p in paths]
    if cache_file is not None:
        cache_file = cache_file.with_name(f"{cache_file.stem}-v{SCAN_VERSION}{cache_file.suffix}")
    cached = pd.DataFrame(columns=SCAN_COLUMNS)
    if cache_file is not None and cache_file.is_file():
        cached = pd.read_csv(cache_file, dtype={"sha1": str, "phash": str, "reason": str},
                             keep_default_na=False)
    known = {(r.path, int(r.size), float(r.mtime)): r._asdict() for r in cached.itertuples(index=False)}
    rows: dict[str, dict] = {}
    todo = []
    for path in paths:
        try:
            stat = os.stat(path)
            key = (path, stat.st_size, stat.st_mtime)
        except OSError:
            key = None
        if key in known and known[key]["ok"] in (True, "True", 1):
            row = dict(known[key])
            row["ok"] = True
            row["tf_ok"] = row["tf_ok"] in (True, "True", 1)
            rows[path] = row
        else:
            todo.append(path)
    if todo:
        workers = workers or min(8, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(workers) as pool:
            for row in tqdm(pool.map(_scan_one, todo), total=len(todo), desc=desc, unit="img",
                            disable=len(todo) < 200, leave=False):
                rows[row["path"]] = row
    frame = pd.DataFrame([rows[p] for p in paths], columns=SCAN_COLUMNS)
    if cache_file is not None and todo:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        merged = pd.concat([cached[~cached["path"].isin(frame["path"])], frame[frame["ok"]]], ignore_index=True)
        atomic_write(cache_file, merged.to_csv(index=False))  # a killed or parallel run never leaves half a file
    return frame


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving): duplicate clusters, merged split groups."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicate_clusters(sha1: Sequence[str], phash: Sequence[str], near_bits: int = NEAR_DUPLICATE_BITS
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Clusters exact (same sha1) and near (phash within ``near_bits``) duplicates.

    Returns (cluster id per item, is_exact_duplicate per item). Near matches are found with a
    multi-index: 64 bits split in ``near_bits + 1`` chunks, two hashes within ``near_bits`` share at
    least one chunk exactly (pigeonhole), so only items sharing a chunk are compared. Linear-ish in n.
    """
    n = len(sha1)
    uf = UnionFind(n)
    first_by_sha: dict[str, int] = {}
    exact = np.zeros(n, dtype=bool)
    for i, digest in enumerate(sha1):
        if digest in first_by_sha:
            uf.union(first_by_sha[digest], i)
            exact[i] = True
        else:
            first_by_sha[digest] = i
    if near_bits > 0 and n > 1:
        values = np.array([int(h, 16) for h in phash], dtype=np.uint64)
        chunks = near_bits + 1
        width = 64 // chunks
        for c in range(chunks):
            shift = np.uint64(c * width)
            mask = np.uint64((1 << width) - 1) if c < chunks - 1 else np.uint64((1 << (64 - c * width)) - 1)
            keys = (values >> shift) & mask
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
            for bucket in np.split(order, boundaries):
                if len(bucket) < 2:
                    continue
                bucket_values = values[bucket]
                for j, i in enumerate(bucket[:-1]):
                    distance = np.bitwise_count(bucket_values[j + 1:] ^ values[i])
                    for k in np.flatnonzero(distance <= near_bits):
                        uf.union(int(i), int(bucket[j + 1 + k]))
    roots = np.array([uf.find(i) for i in range(n)])
    return roots, exact


def list_files(root: Path) -> Iterable[Path]:
    """Every regular file under ``root``, sorted, following no symlinked folders."""
    return sorted(p for p in root.rglob("*") if p.is_file())
