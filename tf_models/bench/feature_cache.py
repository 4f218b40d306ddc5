"""The feature-cache benchmark (``scripts/bench_feature_cache.py``): a frozen-base (transfer) run with
the backbone's features cached vs recomputed every epoch.

The same transfer config (no augmentation, so the frozen backbone sees the same pixels every epoch)
is trained twice on the same images and split: ``cache_features=False`` runs the frozen backbone over
every image every epoch; ``cache_features=True`` runs it once (the extraction, timed apart), then
trains the head on the cached feature vectors. Reported: head seconds per epoch of each, the
extraction, the speed-up, and the test accuracy of both (the cache must not change quality).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tf_models.benchmarking import machine_info
from tf_models.config import TrainConfig, load_table
from tf_models.data.tables import ImageTable
from tf_models.runs import HISTORY_FILE
from tf_models.train.training import train


@dataclass(frozen=True)
class FeatureCacheSettings:
    """The transfer run both variants train."""

    data_dir: Path  # CelebA-style folder
    n: int  # images (stratified subset)
    backbone: str
    weights: str  # imagenet | none | PATH
    input_size: tuple[int, int]
    epochs: int
    batch_size: int
    seed: int


@dataclass(frozen=True)
class FeatureCacheResult:
    """Both rows (recomputed, then cached), where the tables went, and the headline."""

    frame: pd.DataFrame
    csv_path: Path
    md_path: Path
    headline: str


def bench_feature_cache(settings: FeatureCacheSettings, runs_dir: Path, out_dir: Path,
                        command: str) -> FeatureCacheResult:
    """Trains both variants into ``runs_dir`` (replaced); writes bench_feature_cache.{csv,md} under
    ``out_dir`` (``command`` is what the Markdown says made it)."""
    machine = machine_info()  # before anything runs, so the load average is the neighbours'
    base = TrainConfig(task="gender", data_dir=str(settings.data_dir), subset=settings.n, backbone=settings.backbone,
                       mode="transfer", weights=settings.weights, input_size=tuple(settings.input_size),
                       epochs=settings.epochs, batch_size=settings.batch_size, augment="none",
                       patience=settings.epochs, seed=settings.seed).validate()
    table = load_table(base)  # one split for both runs
    frame = pd.DataFrame([train_variant(base, table, cached, runs_dir) for cached in (False, True)])
    recomputed, cached = frame.iloc[0], frame.iloc[1]
    ratio = recomputed.head_s_per_epoch / cached.head_s_per_epoch
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "bench_feature_cache.csv", out_dir / "bench_feature_cache.md"
    frame.round(4).to_csv(csv_path, index=False)
    md_path.write_text(markdown(frame, machine, settings, base, command), encoding="utf-8")
    headline = (f"feature cache: head epoch {recomputed.head_s_per_epoch:.2f} s -> {cached.head_s_per_epoch:.3f} s = "
                f"{ratio:.0f}x faster; test accuracy {recomputed.test_accuracy:.4f} vs {cached.test_accuracy:.4f}")
    return FeatureCacheResult(frame, csv_path, md_path, headline)


def train_variant(base: TrainConfig, table: ImageTable, cached: bool, runs_dir: Path) -> dict:
    """Trains the frozen-base run with features cached or recomputed; its timing and accuracy row."""
    name = "cached" if cached else "recomputed"
    run_dir = runs_dir / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never resumed from an earlier benchmark
    print(f"[bench] {name}: {base.backbone} transfer, features {name} -> {run_dir}", flush=True)
    metrics = train(dataclasses.replace(base, cache_features=cached, out=str(run_dir)), table=table,
                    verbose=2).metrics
    if metrics["feature_cache"] != cached:
        raise RuntimeError(f"expected feature_cache={cached}, the run reports {metrics['feature_cache']}")
    epoch_seconds = pd.read_csv(run_dir / HISTORY_FILE)["epoch_seconds"]
    extraction = metrics["feature_extraction_seconds"]
    return {"variant": name, "feature_cache": cached, "epochs_run": len(epoch_seconds),
            "head_s_per_epoch": epoch_seconds.iloc[1:].median() if len(epoch_seconds) > 1 else epoch_seconds.iloc[0],
            "first_epoch_s": epoch_seconds.iloc[0], "extraction_s": extraction,
            "total_train_s": epoch_seconds.sum() + extraction,
            "test_accuracy": metrics["accuracy"], "test_balanced_accuracy": metrics["balanced_accuracy"],
            "test_n": metrics["n"], "train_images": len(table.split("train")), "val_images": len(table.split("val"))}


def markdown(frame: pd.DataFrame, machine: dict[str, str], settings: FeatureCacheSettings, base: TrainConfig,
             command: str) -> str:
    """bench_feature_cache.md: the machine, the setup, both rows, and the ratios."""
    recomputed, cached = frame.iloc[0], frame.iloc[1]
    ratio = recomputed.head_s_per_epoch / cached.head_s_per_epoch
    total_ratio = recomputed.total_train_s / cached.total_train_s
    accuracy_gap = abs(recomputed.test_accuracy - cached.test_accuracy)
    lines = [
        "# Frozen-base training: cached backbone features vs recomputed every epoch",
        "",
        f"Written by `{command}`.",
        "",
        *(f"- {k}: {v}" for k, v in machine.items()),
        (f"- data: {settings.n}-image stratified subset of the CelebA folder, identity-disjoint split: "
         f"{recomputed.train_images} train, {recomputed.val_images} val, {recomputed.test_n} test"),
        (f"- model: {settings.backbone} (weights {settings.weights}, frozen) + head {list(base.head_units)}, "
         f"input {settings.input_size[0]}x{settings.input_size[1]}, batch {settings.batch_size}, "
         f"{settings.epochs} epochs, no augmentation, same seed and split for both runs"),
        ("- head s / epoch: median wall time of the epochs after the first (validation included); the first "
         "epoch also traces the graph (and, recomputed, decodes the images into the tf.data cache) and is shown "
         "apart. Cached: the head epochs only; the one-off backbone pass over train + val is the extraction "
         "column, and the total includes it"),
        "",
        ("| variant | head s / epoch | first epoch s | extraction s | total train s | epochs | test accuracy "
         "| test balanced acc. |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {r.variant} | {r.head_s_per_epoch:.3f} | {r.first_epoch_s:.2f} | {r.extraction_s:.1f} | "
          f"{r.total_train_s:.1f} | "
          f"{r.epochs_run} | {r.test_accuracy:.4f} | {r.test_balanced_accuracy:.4f} |" for r in frame.itertuples()),
        "",
        f"- epoch time: **{ratio:.0f}x** faster with the cache (target: at least 20x)",
        (f"- whole phase, extraction included: {total_ratio:.1f}x faster over {settings.epochs} epochs (the gap "
         "grows with the number of epochs)"),
        (f"- test accuracy: {recomputed.test_accuracy:.4f} recomputed vs {cached.test_accuracy:.4f} cached "
         f"(difference {accuracy_gap:.4f} on {recomputed.test_n} images; the shuffling order differs)"),
        "",
    ]
    if max(recomputed.test_balanced_accuracy, cached.test_balanced_accuracy) < 0.55:
        lines[-1:-1] = [("- both heads are near chance (balanced accuracy ~0.5): a random frozen base carries little "
                         "gender signal, so equal accuracy says little here; for a quality comparison that means "
                         "something pass `--weights PATH` (a trained backbone, e.g. a run's `backbone.weights.h5`)")]
    return "\n".join(lines)
