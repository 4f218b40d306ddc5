"""Metrics and plots for a trained classifier: scikit-learn numbers, confusion matrices, error grids."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from tf_models.data.pipeline import make_dataset
from tf_models.models.classifier import inference_function

if TYPE_CHECKING:
    import keras
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                             precision_recall_fscore_support, roc_auc_score)


def classification_metrics(y_true: Sequence[int], probabilities: np.ndarray, class_names: Sequence[str]) -> dict:
    """accuracy, balanced_accuracy, macro_f1, per-class precision/recall/F1/support, confusion matrix, ROC-AUC (binary)."""
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    metrics = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }
    if len(class_names) == 2:
        metrics["roc_auc"] = float(roc_auc_score(y_true, probabilities[:, 1])) if len(set(y_true)) == 2 else None
    return metrics


def subgroup_accuracy(frame: pd.DataFrame, y_pred: np.ndarray, attributes: Sequence[str]) -> dict:
    """Accuracy among images with and without each attribute (CelebA 1/-1 columns)."""
    correct = frame["label"].to_numpy() == y_pred
    result = {}
    for attribute in attributes:
        if attribute not in frame.columns:
            continue
        has = frame[attribute].to_numpy() == 1
        result[attribute] = {
            "with": {"n": int(has.sum()), "accuracy": float(correct[has].mean()) if has.any() else None},
            "without": {"n": int((~has).sum()), "accuracy": float(correct[~has].mean()) if (~has).any() else None},
        }
    return result


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str = "") -> None:
    """Counts and row-normalised confusion matrices side by side."""
    counts = np.asarray(matrix, dtype=float)
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.35 * len(class_names) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, data, fmt, label in ((axes[0], counts, "{:.0f}", "counts"), (axes[1], normalised, "{:.2f}", "normalised by true class")):
        ax.imshow(data, cmap="Blues")
        ax.set_title(f"{title} ({label})" if title else label)
        ax.set_xticks(range(len(class_names)), class_names, rotation=90 if len(class_names) > 4 else 0, fontsize=8)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if len(class_names) <= 12:
            for i in range(len(class_names)):
                for j in range(len(class_names)):
                    ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center",
                            color="white" if data[i, j] > data.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(history: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train and validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for column, style in ((metric, "-"), (f"val_{metric}", "--")):
            if column in history.columns:
                ax.plot(np.arange(1, len(history) + 1), history[column], style, label=column)
        ax.set_xlabel("epoch")
        ax.set_title(f"{title} {metric}".strip())
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def misclassified_grid(paths: Sequence[str], y_true: Sequence[int], probabilities: np.ndarray,
                       class_names: Sequence[str], path: str | Path, per_class: int = 8) -> int:
    """A grid of the most confidently wrong images per true class ("Male predicted as Female"). Returns count shown."""
    y_true = np.asarray(y_true)
    y_pred = probabilities.argmax(axis=1)
    rows = []
    for k, name in enumerate(class_names):
        wrong = np.flatnonzero((y_true == k) & (y_pred != k))
        wrong = wrong[np.argsort(-probabilities[wrong, y_pred[wrong]])][:per_class]
        if len(wrong):
            rows.append((name, wrong))
    if not rows:
        return 0
    fig, axes = plt.subplots(len(rows), per_class, figsize=(1.6 * per_class, 1.9 * len(rows)), squeeze=False)
    for r, (name, indices) in enumerate(rows):
        for c in range(per_class):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(indices):
                i = indices[c]
                with Image.open(paths[i]) as image:
                    ax.imshow(image.convert("RGB"))
                ax.set_title(f"{name}→{class_names[y_pred[i]]}\n{probabilities[i, y_pred[i]]:.2f}", fontsize=7)
    fig.suptitle("misclassified, by true class (true→predicted, confidence)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return int(sum(len(i) for _, i in rows))


SUBGROUP_ATTRIBUTES = ("Young", "Eyeglasses", "Pale_Skin", "Heavy_Makeup", "Wearing_Hat", "Bald")


def evaluate_run(run_dir: str | Path, data_dir: str | Path, *, split: str = "test", labels_csv: str | None = None,
                 x_col: str | None = None, y_col: str | None = None, out: str | Path | None = None) -> dict:
    """Evaluates a trained run on a dataset in the same layout; writes JSON, plots and an error grid.

    ``split='all'`` uses every usable image (a held-out dataset); ``'test'`` the split the run's
    seed and fractions give on that data. Classes are matched by name: images of a class the model
    does not know are reported and left out.
    """
    import dataclasses
    import json

    from tf_models.config import load_table
    from tf_models.runs import load_run_model, read_run

    run = read_run(run_dir)
    run_dir, config, class_names = run.run_dir, run.config, run.class_names
    overrides = {"data_dir": str(data_dir), "subset": None, "balance": "none"}
    if labels_csv is not None:
        overrides.update(labels_csv=labels_csv, x_col=x_col or config.x_col, y_col=y_col)
    config = dataclasses.replace(config, **overrides)
    table = load_table(config)
    frame = table.frame if split == "all" else table.split(split)
    names = [table.class_names[k] for k in frame["label"]]
    known = np.array([name in class_names for name in names], dtype=bool)
    frame = frame[known].assign(label=[class_names.index(n) for n, k in zip(names, known) if k])
    model = load_run_model(run_dir)
    image_size = tuple(model.input_shape[1:3])
    probabilities = predict_probabilities(model, frame["path"].tolist(), image_size, config.batch_size)
    metrics = classification_metrics(frame["label"].tolist(), probabilities, class_names)
    metrics.update({"run": str(run_dir), "data_dir": str(data_dir), "split": split,
                    "unknown_class_images": int((~known).sum()), "skipped_files": len(table.report.skipped)})
    attributes = [a for a in SUBGROUP_ATTRIBUTES if a in frame.columns]
    if attributes:
        metrics["subgroups"] = subgroup_accuracy(frame, probabilities.argmax(axis=1), attributes)
    out = Path(out) if out else run_dir / f"eval_{split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    plot_confusion(metrics["confusion_matrix"], class_names, out.with_suffix(".confusion.png"), title=split)
    misclassified_grid(frame["path"].tolist(), frame["label"].tolist(), probabilities, class_names,
                       out.with_suffix(".misclassified.png"))
    return metrics


def predict_probabilities(model: keras.Model, paths, image_size, batch_size: int) -> np.ndarray:
    """Class probabilities for image files, in order, through a compiled call (not predict per image)."""
    if not len(paths):
        return np.zeros((0, model.output_shape[-1]), dtype="float32")
    dataset = make_dataset(paths, [0] * len(paths), image_size, batch_size, training=False)
    infer = inference_function(model)
    return np.concatenate([infer(images).numpy() for images, _ in dataset]).astype("float32")
