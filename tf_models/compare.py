"""The comparison suite: backbones x modes on one dataset, one config, one split; tables and plots.

Finished runs (a ``metrics.json`` in their folder) are reused, so a half-finished suite resumes
where it stopped. The best run per task is recorded in ``results/best/<task>.json`` for the app.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tensorflow as tf

from tf_models.config import TrainConfig
from tf_models.training import load_table, train

TABLE_COLUMNS = ["backbone", "mode", "accuracy", "balanced_accuracy", "macro_f1", "params", "trainable_params",
                 "seconds_per_epoch", "inference_ms", "epochs_run", "input_size", "run_dir"]


def inference_ms(model: keras.Model, repeats: int = 20) -> float:
    """Median single-image latency of a compiled call, after warm-up (not model.predict per image)."""
    shape = (1, *model.input_shape[1:])
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, shape).astype("float32"))
    call = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)])
    for _ in range(3):
        call(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(image).numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def run_suite(base: TrainConfig, backbones: Sequence[str], modes: Sequence[str], results_dir: str | Path,
              runs_dir: str | Path, dataset_name: str | None = None, verbose: int | str = 2) -> pd.DataFrame:
    """Trains every (backbone, mode) not yet finished, then writes the comparison table and plots."""
    results_dir, runs_dir = Path(results_dir), Path(runs_dir)
    dataset_name = dataset_name or Path(base.data_dir).name
    out_dir = results_dir / dataset_name
    out_dir.mkdir(parents=True, exist_ok=True)
    table = None
    rows = []
    for backbone in backbones:
        for mode in modes:
            run_dir = runs_dir / f"{base.task}_{backbone}_{mode}"
            metrics_file = run_dir / "metrics.json"
            if metrics_file.is_file():
                print(f"[compare] {backbone} {mode}: finished earlier, reusing {run_dir}")
                metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
            else:
                table = table or load_table(base)  # one split for every run of the suite
                config = dataclasses.replace(base, backbone=backbone, mode=mode, out=str(run_dir),
                                             weights="none" if mode == "scratch" else base.weights)
                print(f"[compare] training {backbone} {mode} -> {run_dir}")
                metrics = train(config, table=table, verbose=verbose).metrics
                model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
                metrics["inference_ms"] = inference_ms(model)
                metrics_file.write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
            rows.append({**{k: metrics.get(k) for k in TABLE_COLUMNS}, "backbone": backbone, "mode": mode,
                         "input_size": "x".join(map(str, metrics.get("input_size", []))), "run_dir": str(run_dir)})
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS).sort_values("accuracy", ascending=False)
    stem = f"comparison_{base.task}"
    frame.to_csv(out_dir / f"{stem}.csv", index=False)
    (out_dir / f"{stem}.md").write_text(comparison_markdown(frame, base, dataset_name), encoding="utf-8")
    plot_bars(frame, out_dir / f"{stem}_accuracy.png")
    plot_learning_curves(frame, out_dir / f"{stem}_learning_curves.png")
    record_best(frame, base, results_dir)
    return frame


def comparison_markdown(frame: pd.DataFrame, base: TrainConfig, dataset_name: str) -> str:
    shown = frame.drop(columns=["run_dir"]).copy()
    for column in ("accuracy", "balanced_accuracy", "macro_f1"):
        shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    for column in ("seconds_per_epoch", "inference_ms"):
        shown[column] = shown[column].map(lambda v: f"{v:.1f}" if v is not None else "")
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in shown.itertuples(index=False))
    return (f"# {base.task} on {dataset_name}\n\n"
            f"Made by `scripts/compare.py` (epochs {base.epochs}, batch {base.batch_size}, lr {base.lr}, "
            f"augment {base.augment}, seed {base.seed}); accuracy on the run's own test split; inference: median "
            "single-image compiled call after warm-up.\n\n" + header + body)


def plot_bars(frame: pd.DataFrame, path: Path) -> None:
    labels = [f"{b}\n{m}" for b, m in zip(frame["backbone"], frame["mode"])]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.3 * len(frame)) * 2, 4))
    for ax, column, title in ((axes[0], "accuracy", "test accuracy"), (axes[1], "inference_ms", "inference ms / image")):
        ax.bar(labels, frame[column].astype(float), color="tab:blue" if column == "accuracy" else "tab:orange")
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curves(frame: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in frame.itertuples():
        history_file = Path(row.run_dir) / "history.csv"
        if not history_file.is_file():
            continue
        history = pd.read_csv(history_file)
        for ax, column in zip(axes, ("val_accuracy", "val_loss")):
            if column in history.columns:
                ax.plot(np.arange(1, len(history) + 1), history[column], label=f"{row.backbone} {row.mode}")
    for ax, title in zip(axes, ("validation accuracy", "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def record_best(frame: pd.DataFrame, base: TrainConfig, results_dir: Path) -> Path:
    """Writes ``results/best/<task>.json``: the run the app serves by default."""
    best = frame.sort_values(["accuracy", "balanced_accuracy"], ascending=False).iloc[0]
    path = results_dir / "best" / f"{base.task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {k: (v.item() if hasattr(v, "item") else v) for k, v in best.to_dict().items()}
    record["data_dir"] = base.data_dir
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    return path
