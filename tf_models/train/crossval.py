"""Stratified K-fold cross-validation: a fresh model per fold, mean ± std per metric.

The folds cover the run's train + val pool; the run's own test split (from its seed and fractions)
stays out of every fold, untouched, for a final check. Folds are group-disjoint (a CelebA identity,
or a cluster of duplicates, never sits in two folds) and stratified by class. In fold k:

- the images of fold k are the fold's ``test`` split: its metrics are computed on them;
- the other images keep their original role: ``train``, or ``val`` (early stopping and the
  learning-rate schedule watch it, so it never overlaps fold k).

Writes ``<out>/folds.csv`` (which fold holds each image), ``<out>/fold_<k>/`` (ordinary run folders)
and ``<out>/cv_summary.{csv,md,json}``. A fold whose folder already has ``metrics.json`` is reused,
so re-running the same command resumes an interrupted cross-validation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tf_models.config import TrainConfig
from tf_models.data.tables import ImageTable
from tf_models.data.splits import check_class_sizes, kfold_indices
from tf_models.config import load_table
from tf_models.runs import read_metrics
from tf_models.train.training import train

CV_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")


def fold_tables(table: ImageTable, folds: int, seed: int) -> tuple[list[ImageTable], pd.DataFrame]:
    """One ImageTable per fold over the train + val pool, and the fold of each pool image.

    Raises ValueError when a class has fewer pool images than ``folds``.
    """
    pool = table.frame[table.frame["split"] != "test"].reset_index(drop=True)
    check_class_sizes(pool["label"].tolist(), table.class_names, folds, f"{folds}-fold cross-validation")
    fold_of = np.full(len(pool), -1)
    for k, (_, held_out) in enumerate(kfold_indices(pool["label"].to_numpy(), folds, seed,
                                                    groups=pool["group"].to_numpy())):
        fold_of[held_out] = k
    tables = []
    for k in range(folds):
        frame = pool.assign(split=np.where(fold_of == k, "test", pool["split"]))
        report = copy.deepcopy(table.report)
        report.notes.append(f"cross-validation fold {k} of {folds}: the fold's images are the test split; "
                            "the run's own test split is left out")
        fold_table = ImageTable(frame, list(table.class_names), report)
        fold_table.update_counts()
        tables.append(fold_table)
    assignment = pool[["path", "label", "group", "split"]].assign(fold=fold_of)
    return tables, assignment


def cross_validate(config: TrainConfig, folds: int, table: ImageTable | None = None,
                   verbose: int | str = 2) -> pd.DataFrame:
    """Trains one fresh model per fold in ``<config.out>/fold_<k>/`` and writes the summary.

    Returns one row per fold plus a ``mean`` and a ``std`` row (sample standard deviation, ddof=1),
    columns: fold, n_train, n_val, n_test, accuracy, balanced_accuracy, macro_f1, [roc_auc],
    epochs_run, run_dir. ``roc_auc`` only for binary tasks.
    """
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    table = table or load_table(config)
    tables, assignment = fold_tables(table, folds, config.seed)
    assignment.assign(label=[table.class_names[k] for k in assignment["label"]]).to_csv(out / "folds.csv", index=False)
    binary = len(table.class_names) == 2
    metric_names = [m for m in CV_METRICS if binary or m != "roc_auc"]
    rows = []
    for k, fold_table in enumerate(tables):
        run_dir = out / f"fold_{k}"
        metrics = read_metrics(run_dir)
        if metrics is not None:
            print(f"[crossval] fold {k}: finished earlier, reusing {run_dir}")
        else:
            print(f"[crossval] fold {k + 1}/{folds} -> {run_dir}")
            metrics = train(dataclasses.replace(config, out=str(run_dir)), table=fold_table, verbose=verbose).metrics
        counts = {s: len(fold_table.split(s)) for s in ("train", "val", "test")}
        rows.append({"fold": str(k), **{f"n_{s}": n for s, n in counts.items()},
                     **{m: metrics.get(m) for m in metric_names}, "epochs_run": metrics.get("epochs_run"),
                     "run_dir": str(run_dir)})
    frame = pd.DataFrame(rows)
    values = frame[metric_names].astype(float)
    summary = pd.DataFrame([{"fold": "mean", **values.mean().to_dict()}, {"fold": "std", **values.std().to_dict()}])
    result = pd.concat([frame, summary], ignore_index=True)
    counts = ["n_train", "n_val", "n_test", "epochs_run"]
    result[counts] = result[counts].astype("Int64")  # whole numbers, blank in the mean and std rows
    _write_summary(result, metric_names, config, folds, table, out)
    return result


def _write_summary(result: pd.DataFrame, metric_names: list[str], config: TrainConfig, folds: int,
                   table: ImageTable, out: Path) -> None:
    result.to_csv(out / "cv_summary.csv", index=False)
    per_fold = result[~result["fold"].isin(["mean", "std"])]
    mean, std = result.set_index("fold").loc["mean"], result.set_index("fold").loc["std"]
    summary = {
        "folds": folds,
        "task": config.task,
        "backbone": config.backbone,
        "mode": config.mode,
        "data_dir": config.data_dir,
        "pool_images": int((table.frame["split"] != "test").sum()),
        "left_out_test_images": int((table.frame["split"] == "test").sum()),
        "metrics": {m: {"mean": float(mean[m]), "std": float(std[m]),
                        "values": [None if pd.isna(v) else float(v) for v in per_fold[m]]} for m in metric_names},
        "per_fold": json.loads(per_fold.to_json(orient="records")),
    }
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    columns = ["fold", "n_train", "n_val", "n_test", *metric_names, "epochs_run"]
    lines = [f"# {folds}-fold cross-validation: {config.task}, {config.backbone} {config.mode}", "",
             (f"Made by `scripts/crossval.py` (data `{config.data_dir}`, epochs {config.epochs}, batch "
              f"{config.batch_size}, lr {config.lr}, seed {config.seed}). Stratified, group-disjoint folds over the "
              f"train + val pool ({summary['pool_images']} images); the run's own test split "
              f"({summary['left_out_test_images']} images) is left out. Metrics on each fold's held-out images; "
              "std is the sample standard deviation."), "",
             *(f"- **{m}**: {mean[m]:.3f} ± {std[m]:.3f}" for m in metric_names), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in per_fold.itertuples(index=False):
        cells = [f"{getattr(row, c):.3f}" if c in metric_names and not pd.isna(getattr(row, c)) else str(getattr(row, c))
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| mean ± std | | | | " + " | ".join(f"{mean[m]:.3f} ± {std[m]:.3f}" for m in metric_names) + " | |")
    (out / "cv_summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
