"""The comparison suite: backbones x modes on one dataset, one config, one split; tables and plots.
Sweeps: one backbone and mode trained at several epochs, dataset sizes or batch sizes.

Finished runs (a ``metrics.json`` in their folder) are reused when they were made with the same
config from the same starting weights, so a half-finished suite resumes where it stopped and a
changed recipe (or new shipped face weights) is trained again. The best run per task is recorded in
``results/best/<task>.json`` for the app.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tensorflow as tf

from tf_models.config import TrainConfig, load_table
from tf_models.data.tables import ImageTable
from tf_models.models.backbones import backbones_with_face_weights, get_backbone, start_weights_id
from tf_models.models.classifier import inference_function
from tf_models.runs import (CONFIG_FILE, HISTORY_FILE, METRICS_FILE, load_run_model, read_data_report, read_metrics,
                            write_metrics)
from tf_models.train.training import train

TABLE_COLUMNS = ["backbone", "mode", "weights", "accuracy", "balanced_accuracy", "macro_f1", "params",
                 "trainable_params", "seconds_per_epoch", "inference_ms", "epochs_run", "input_size", "note", "run_dir"]
# A row within this many points of guessing (1 / classes) is called "at chance" in the table's note,
# so nobody reads a run that learnt nothing as "this backbone does not work".
CHANCE_MARGIN = 0.05


def inference_ms(model: keras.Model, repeats: int = 20) -> float:
    """Median single-image latency of a compiled call, after warm-up (not model.predict per image)."""
    shape = (1, *model.input_shape[1:])
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, shape).astype("float32"))
    call = inference_function(model, shape[1:3])
    for _ in range(3):
        call(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(image).numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def train_or_reuse(config: TrainConfig, table: Callable[[], ImageTable], verbose: int | str = 2) -> dict:
    """The metrics of the run in ``config.out``: read back when it finished earlier with this config
    and the same starting weights (:func:`reuse_blocker`), else trained now.

    ``table`` is called only when a run must be trained, so a fully finished suite loads no data.
    The inference latency is measured once and stored in the run's ``metrics.json``.
    """
    run_dir = Path(config.out)
    finished = read_metrics(run_dir)
    if finished is not None:
        blocker = reuse_blocker(config, finished)
        if blocker is None:
            print(f"[compare] {config.backbone} {config.mode}: finished earlier, reusing {run_dir}")
            return finished
        print(f"[compare] {config.backbone} {config.mode}: {run_dir} was made differently ({blocker}): "
              "training again")
        # Gone before training: a run that stops half-way must not leave the old figures under the new config.
        (run_dir / METRICS_FILE).unlink()
    else:
        print(f"[compare] training {config.backbone} {config.mode} -> {run_dir}")
    metrics = train(config, table=table(), verbose=verbose).metrics
    metrics["inference_ms"] = inference_ms(load_run_model(run_dir))
    write_metrics(run_dir, metrics)
    return metrics


def reuse_blocker(config: TrainConfig, metrics: dict) -> str | None:
    """Why the finished run in ``config.out`` (its ``metrics``) is not what ``config`` would make now:
    settings that differ from its saved config, or other starting weights. None: it can be reused."""
    run_dir = Path(config.out)
    try:
        saved = TrainConfig.load(run_dir / CONFIG_FILE).to_dict()
    except (OSError, ValueError) as err:
        return f"its {CONFIG_FILE} is unreadable: {err}"
    wanted = config.to_dict()
    changed = sorted(key for key in wanted if saved.get(key) != wanted[key])
    if changed:
        return "settings " + ", ".join(f"{k}: {saved.get(k)!r} -> {wanted[k]!r}" for k in changed[:4])
    weights = config.weights if config.mode != "scratch" else "none"
    start = start_weights_id(config.backbone, weights)
    if metrics.get("start_weights") != start:
        return f"it started from {metrics.get('start_weights', 'unrecorded weights')}, not {start}"
    return None


def _run_config(base: TrainConfig, run_dir: Path, **changes) -> TrainConfig:
    config = dataclasses.replace(base, out=str(run_dir), **changes)
    if config.mode == "scratch":
        config = dataclasses.replace(config, weights="none")
    elif config.weights == "faces":
        # The face weights were trained at one size on faces cut one way; a suite-wide --input-size
        # (the scratch rows') would throw that away, so face-pretrained rows run as their weights saw faces.
        faces = get_backbone(config.backbone).faces
        config = dataclasses.replace(config, input_size=faces.input_size, crop_align=faces.aligned)
    return config


def run_name(task: str, backbone: str, mode: str, weights: str) -> str:
    """The run folder's name: how it was made (the default ImageNet start is left unsaid)."""
    name = f"{task}_{backbone}_{mode}"
    return name if mode == "scratch" or weights == "imagenet" else f"{name}_{Path(str(weights)).stem}"


def skip_reason(backbone: str, mode: str, weights: str) -> str | None:
    """Why a (backbone, mode) row of the suite cannot run with ``weights`` (None: it can)."""
    if mode != "scratch" and weights == "faces" and backbone not in backbones_with_face_weights():
        return f"skipped: no faces weights for {backbone} (they exist for {', '.join(backbones_with_face_weights())})"
    return None


def chance_note(metrics: dict) -> str:
    """'at chance' when a row's accuracy is within CHANCE_MARGIN of guessing: said, not left to be misread.

    Guessing = the better of a uniform guess and always answering the test split's largest class.
    """
    accuracy, confusion = metrics.get("accuracy"), np.asarray(metrics.get("confusion_matrix") or [[1]], float)
    guessing = max(1.0 / len(confusion), confusion.sum(axis=1).max() / max(confusion.sum(), 1.0))
    if accuracy is None or accuracy > guessing + CHANCE_MARGIN:
        return ""
    how = "from scratch" if metrics.get("mode") == "scratch" else "with these settings"
    return f"at chance (guessing scores {guessing:.3f}): too few photos to learn {how}"


def run_suite(base: TrainConfig, backbones: Sequence[str], modes: Sequence[str], results_dir: str | Path,
              runs_dir: str | Path, dataset_name: str | None = None, verbose: int | str = 2) -> pd.DataFrame:
    """Trains every (backbone, mode) not yet finished, then writes the comparison table and plots.

    Transfer and finetune rows start from ``base.weights``; a backbone that has no such weights
    (``faces`` exists for a few) gets a row saying so instead of a run.
    """
    results_dir, runs_dir = Path(results_dir), Path(runs_dir)
    dataset_name = dataset_name or Path(base.data_dir).name
    out_dir = results_dir / dataset_name
    out_dir.mkdir(parents=True, exist_ok=True)
    shared = _lazy_table(base)  # one split for every run of the suite
    rows = []
    for backbone in backbones:
        for mode in modes:
            weights = "none" if mode == "scratch" else base.weights
            run_dir = runs_dir / run_name(base.task, backbone, mode, weights)
            row = {"backbone": backbone, "mode": mode, "weights": Path(str(weights)).name, "run_dir": str(run_dir)}
            reason = skip_reason(backbone, mode, weights)
            if reason:
                print(f"[compare] {backbone} {mode}: {reason}")
                rows.append({**row, "note": reason})
                continue
            metrics = train_or_reuse(_run_config(base, run_dir, backbone=backbone, mode=mode), shared, verbose)
            rows.append({**{k: metrics.get(k) for k in TABLE_COLUMNS}, **row,
                         "input_size": "x".join(map(str, metrics.get("input_size", []))),
                         "note": chance_note(metrics)})
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS).sort_values("accuracy", ascending=False)
    stem = f"comparison_{base.task}"
    frame.to_csv(out_dir / f"{stem}.csv", index=False)
    (out_dir / f"{stem}.md").write_text(comparison_markdown(frame, base, dataset_name), encoding="utf-8")
    plot_bars(frame, out_dir / f"{stem}_accuracy.png")
    plot_learning_curves(frame, out_dir / f"{stem}_learning_curves.png")
    record_best(frame, base, results_dir)
    return frame


def _lazy_table(config: TrainConfig) -> Callable[[], ImageTable]:
    """Loads the table on first call and returns the same one after."""
    loaded: list[ImageTable] = []

    def get() -> ImageTable:
        if not loaded:
            loaded.append(load_table(config))
        return loaded[0]

    return get


# ---- sweeps --------------------------------------------------------------------------------------

SWEEP_PARAMETERS = ("epochs", "subset", "batch_size")
SWEEP_COLUMNS = ["parameter", "value", "backbone", "mode", "accuracy", "balanced_accuracy", "macro_f1", "images",
                 "train_images", "epochs_run", "seconds_per_epoch", "run_dir"]


def parse_sweep(text: str) -> tuple[str, list[int | None]]:
    """``'epochs=2,4,8'`` -> ``('epochs', [2, 4, 8])``; for subset, ``all`` (or ``none``) means every image."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not values.strip():
        raise ValueError(f"A sweep is PARAM=V1,V2,... with PARAM one of {SWEEP_PARAMETERS}. Received: {text!r}")
    check_sweep_parameter(name)
    parsed: list[int | None] = []
    for value in values.split(","):
        value = value.strip()
        if name == "subset" and value.lower() in ("all", "none"):
            parsed.append(None)
            continue
        try:
            parsed.append(int(value))
        except ValueError:
            raise ValueError(f"Sweep values must be integers{' or all' if name == 'subset' else ''}. "
                             f"Received: {name}={value!r}") from None
    return name, parsed


def check_sweep_parameter(parameter: str) -> None:
    if parameter not in SWEEP_PARAMETERS:
        raise ValueError(f"Unknown sweep parameter; valid ones: {', '.join(SWEEP_PARAMETERS)}. "
                         f"Received: parameter={parameter!r}")


def run_sweep(base: TrainConfig, parameter: str, values: Sequence[int | None], results_dir: str | Path,
              runs_dir: str | Path, dataset_name: str | None = None, verbose: int | str = 2) -> pd.DataFrame:
    """Trains ``base`` once per value of ``parameter`` (epochs, subset or batch_size), then writes
    ``results/<dataset>/sweep_<parameter>.{csv,md,png}``: accuracy and balanced accuracy against the value.

    Runs go to ``<runs_dir>/<task>_<backbone>_<mode>_<parameter><value>`` and are reused when
    finished, as in :func:`run_suite`. Epoch and batch-size sweeps share one split; each subset size
    loads its own stratified subset, so its test split is a subset of the same data and shrinks with it.
    """
    check_sweep_parameter(parameter)
    if not values:
        raise ValueError(f"A sweep needs at least one value. Received: {parameter}={list(values)}")
    results_dir, runs_dir = Path(results_dir), Path(runs_dir)
    dataset_name = dataset_name or Path(base.data_dir).name
    out_dir = results_dir / dataset_name
    out_dir.mkdir(parents=True, exist_ok=True)
    shared = _lazy_table(base)
    rows = []
    for value in values:
        label = "all" if value is None else str(value)
        run_dir = runs_dir / f"{base.task}_{base.backbone}_{base.mode}_{parameter}{label}"
        config = _run_config(base, run_dir, **{parameter: value}).validate()
        metrics = train_or_reuse(config, _lazy_table(config) if parameter == "subset" else shared, verbose)
        counts = _split_counts(run_dir)
        rows.append({"parameter": parameter, "value": label, "backbone": base.backbone, "mode": base.mode,
                     **{k: metrics.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "epochs_run",
                                                    "seconds_per_epoch")},
                     "images": sum(counts.values()), "train_images": counts.get("train", 0), "run_dir": str(run_dir)})
    frame = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    stem = out_dir / f"sweep_{parameter}"
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".md").write_text(sweep_markdown(frame, base, parameter, dataset_name), encoding="utf-8")
    plot_sweep(frame, parameter, stem.with_suffix(".png"))
    return frame


def _split_counts(run_dir: Path) -> dict[str, int]:
    """Images per split of a run, from its data report."""
    report = read_data_report(run_dir)
    return {split: int(sum(classes.values())) for split, classes in report.get("counts", {}).items()}


def sweep_markdown(frame: pd.DataFrame, base: TrainConfig, parameter: str, dataset_name: str) -> str:
    shown = frame.drop(columns=["run_dir", "parameter"]).copy()
    for column in ("accuracy", "balanced_accuracy", "macro_f1"):
        shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    shown["seconds_per_epoch"] = shown["seconds_per_epoch"].map(lambda v: f"{v:.1f}")
    shown = shown.rename(columns={"value": parameter})
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in shown.itertuples(index=False))
    fixed = {"epochs": base.epochs, "batch": base.batch_size, "subset": base.subset or "all"}
    fixed.pop({"batch_size": "batch"}.get(parameter, parameter))
    return (f"# {base.task} on {dataset_name}: accuracy against {parameter}\n\n"
            f"Made by `scripts/compare.py --sweep {parameter}=...` ({base.backbone} {base.mode}, "
            + ", ".join(f"{k} {v}" for k, v in fixed.items())
            + f", lr {base.lr}, augment {base.augment}, seed {base.seed}); accuracy on each run's own test split "
            "(early stopping may end a run before its epochs: see epochs_run).\n\n" + header + body)


def plot_sweep(frame: pd.DataFrame, parameter: str, path: Path) -> None:
    """Accuracy and balanced accuracy against the swept value (dataset size: images used)."""
    x = frame["images"] if parameter == "subset" else frame["value"].astype(int)
    fig, ax = plt.subplots(figsize=(6, 4))
    for column, marker in (("accuracy", "o"), ("balanced_accuracy", "s")):
        ax.plot(x, frame[column].astype(float), marker=marker, label=column.replace("_", " "))
    ax.set_xlabel("images (subset)" if parameter == "subset" else parameter.replace("_", " "))
    if parameter != "epochs":  # sizes grow geometrically: a log axis, labelled at the values tried
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(list(x), [str(v) for v in x])
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{frame['backbone'].iloc[0]} {frame['mode'].iloc[0]}: accuracy against {parameter}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def comparison_markdown(frame: pd.DataFrame, base: TrainConfig, dataset_name: str) -> str:
    shown = frame.drop(columns=["run_dir"]).copy()
    for column in ("accuracy", "balanced_accuracy", "macro_f1"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    for column in ("seconds_per_epoch", "inference_ms"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    for column in ("params", "trainable_params", "epochs_run"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else str(int(v)))
    shown = shown.fillna("")
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in shown.itertuples(index=False))
    return (f"# {base.task} on {dataset_name}\n\n"
            f"Made by `scripts/compare.py` (epochs {base.epochs}, batch {base.batch_size}, lr {base.lr}, "
            f"augment {base.augment}, seed {base.seed}); accuracy on the run's own test split; inference: median "
            "single-image compiled call after warm-up.\n\n" + header + body)


def plot_bars(frame: pd.DataFrame, path: Path) -> None:
    frame = frame[frame["accuracy"].notna()]  # skipped rows have no bar
    labels = [f"{b}\n{m}" + ("" if w in ("none", "imagenet") else f" ({w})")
              for b, m, w in zip(frame["backbone"], frame["mode"], frame["weights"])]
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
        history_file = Path(row.run_dir) / HISTORY_FILE
        if not history_file.is_file():
            continue
        history = pd.read_csv(history_file)
        for ax, column in zip(axes, ("val_accuracy", "val_loss")):
            if column in history.columns:
                label = f"{row.backbone} {row.mode}" + ("" if row.weights in ("none", "imagenet") else f" ({row.weights})")
                ax.plot(np.arange(1, len(history) + 1), history[column], label=label)
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
