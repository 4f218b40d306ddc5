"""Training a run end to end: data -> model -> (cached-feature) head phase -> fine-tuning -> run folder.

The run folder holds everything needed to use, judge and repeat the run: ``config.yaml``,
``class_names.json``, ``crop.json`` (identity), ``model.keras``, ``backbone.weights.h5``, ``history.csv``, ``metrics.json``,
``data_report.{json,md}``, plots, ``tensorboard/``. Re-running the same command after a crash
resumes from ``backup/`` (BackupAndRestore), which is what a Colab disconnect needs.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tf_models.data.augment import AugmentConfig
from tf_models.models.classifier import (
    BACKBONE_LAYER,
    FEATURES_LAYER,
    HeadConfig,
    build_classifier,
    head_layers,
    unfreeze_top,
)
from tf_models.config import TrainConfig, load_table
from tf_models.data.tables import ImageTable
from tf_models.runs import (
    BACKBONE_WEIGHTS_FILE,
    DATA_REPORT_STEM,
    HISTORY_FILE,
    MODEL_FILE,
    write_config,
    write_metrics,
    write_run_start,
)
from tf_models.train.evaluation import (
    classification_metrics,
    misclassified_grid,
    plot_confusion,
    plot_history,
    predict_probabilities,
)
from tf_models.models.losses import SparseCrossentropy
from tf_models.data.pipeline import make_dataset



# ---- devices -------------------------------------------------------------------------------------

def select_strategy() -> tf.distribute.Strategy:
    """TPU -> TPUStrategy; TF_CONFIG -> MultiWorkerMirroredStrategy; several GPUs (or logical CPUs
    configured by the caller) -> MirroredStrategy; otherwise the default strategy."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        pass
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    cpus = tf.config.list_logical_devices("CPU")
    if not gpus and len(cpus) > 1:  # logical CPU devices: how the multi-device path is tested
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    return tf.distribute.get_strategy()


def select_precision(setting: str, strategy: tf.distribute.Strategy) -> str:
    """The Keras dtype policy: float16 on GPUs with tensor cores, bfloat16 on TPU, float32 otherwise."""
    if setting == "off":
        return "float32"
    if setting in ("float16", "bfloat16"):
        return f"mixed_{setting}"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if capability >= (7, 0):
            return "mixed_float16"
    return "float32"


# ---- training ------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """What a finished run reports back (also written to the run folder)."""

    run_dir: Path
    metrics: dict
    seconds_per_epoch: float
    params: int
    trainable_params: int


def _callbacks(config: TrainConfig, run_dir: Path, phase: str, epochs: int, lr: float) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(str(run_dir / f"best_{phase}.weights.h5"), monitor="val_loss",
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.CSVLogger(str(run_dir / f"history_{phase}.csv"), append=True),
        keras.callbacks.BackupAndRestore(str(run_dir / "backup" / phase)),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard" / phase), profile_batch=0),
    ]
    if config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=max(1, config.patience // 2)))
    elif config.schedule == "cosine":
        warmup = min(config.warmup_epochs, max(epochs - 1, 0))

        def cosine(epoch: int, _lr: float) -> float:
            if epoch < warmup:
                return lr * (epoch + 1) / (warmup + 1)
            progress = (epoch - warmup) / max(1, epochs - warmup)
            return 0.5 * lr * (1 + math.cos(math.pi * progress))

        callbacks.append(keras.callbacks.LearningRateScheduler(cosine))
    return callbacks


def _compile(model: keras.Model, config: TrainConfig, num_classes: int, lr: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr, clipnorm=config.clipnorm),
        loss=SparseCrossentropy(num_classes, config.label_smoothing),
        metrics=["accuracy"],
    )


def _features(extractor: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    features, labels = [], []
    for images, batch_labels in dataset:
        features.append(extractor(images, training=False).numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(features), np.concatenate(labels)


def train(config: TrainConfig, table: ImageTable | None = None, verbose: int | str = "auto") -> RunResult:
    """Trains the run described by ``config`` and writes its folder. See the module docstring."""
    config.validate()
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = select_strategy()
    policy = select_precision(config.mixed_precision, strategy)
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        return _train(config, run_dir, strategy, policy, table, verbose)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def _train(config: TrainConfig, run_dir: Path, strategy, policy: str, table: ImageTable | None, verbose) -> RunResult:
    write_config(run_dir, config)
    table = table or load_table(config)
    class_names = table.class_names
    write_run_start(run_dir, class_names, config.crop_settings() if config.task == "identity" else None)
    table.report.save(run_dir, DATA_REPORT_STEM)
    num_classes = len(class_names)

    first_mode = "transfer" if config.mode == "finetune" else config.mode
    weights = config.weights if config.mode != "scratch" else "none"
    with strategy.scope():
        model = build_classifier(config.backbone, num_classes, config.input_size, mode=first_mode, weights=weights,
                                 head=HeadConfig(units=tuple(config.head_units), dropout=config.head_dropout))
    image_size = model.input_shape[1:3]
    augment = AugmentConfig.preset(config.augment)
    # Any augmentation (photometric too) changes the pixels each epoch, so only an identity config can cache.
    use_feature_cache = config.cache_features and first_mode == "transfer" and augment.is_identity
    histories, epoch_seconds, extract_seconds = _fit_phases(model, config, run_dir, table, augment, first_mode,
                                                            use_feature_cache, strategy, verbose)

    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    history.index.name = "epoch"
    history.to_csv(run_dir / HISTORY_FILE)
    if len(history):
        plot_history(history, run_dir / "learning_curves.png", title=f"{config.backbone} {config.mode}")
    model.save(run_dir / MODEL_FILE)
    # The headless backbone alone: `--weights RUN/backbone.weights.h5` starts another task from it
    # (e.g. identity on top of a backbone trained on CelebA gender, with no download needed).
    model.get_layer(BACKBONE_LAYER).save_weights(run_dir / BACKBONE_WEIGHTS_FILE)

    metrics = _test_metrics(model, table, run_dir, config)
    params = int(model.count_params())
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    seconds_per_epoch = float(np.mean(epoch_seconds)) if epoch_seconds else 0.0
    metrics.update({"backbone": config.backbone, "mode": config.mode, "params": params, "trainable_params": trainable,
                    "seconds_per_epoch": seconds_per_epoch, "epochs_run": len(history),
                    "dtype_policy": policy, "strategy": type(strategy).__name__,
                    "input_size": list(image_size), "feature_cache": bool(use_feature_cache),
                    "feature_extraction_seconds": extract_seconds})
    write_metrics(run_dir, metrics)
    return RunResult(run_dir, metrics, seconds_per_epoch, params, trainable)


def _fit_phases(model: keras.Model, config: TrainConfig, run_dir: Path, table: ImageTable, augment: AugmentConfig,
                first_mode: str, use_feature_cache: bool, strategy, verbose) -> tuple[list[pd.DataFrame], list[float], float]:
    """Phase 1: the head on a frozen base (transfer, and finetune's first phase) or everything (scratch).
    Phase 2 (finetune): unfreeze the top block, recompile, fine-tune at a low learning rate.

    Returns (history per phase, seconds per epoch per phase, feature-extraction seconds).
    """
    num_classes = len(table.class_names)
    image_size = model.input_shape[1:3]
    train_paths, train_labels = table.paths_labels("train")
    val_paths, val_labels = table.paths_labels("val")
    if not val_paths:  # tiny datasets: validate on the training images rather than not at all
        val_paths, val_labels = train_paths, train_labels
    class_weight = table.class_weights() if config.balance == "weights" else None
    train_ds = make_dataset(train_paths, train_labels, image_size, config.batch_size, training=True, augment=augment,
                            seed=config.seed, cache=True)
    val_ds = make_dataset(val_paths, val_labels, image_size, config.batch_size, training=False, cache=True)
    histories: list[pd.DataFrame] = []
    epoch_seconds: list[float] = []
    extract_seconds = 0.0
    if config.epochs > 0:
        if use_feature_cache:
            history, seconds, extract_seconds = _fit_head_on_cached_features(
                model, config, run_dir, train_paths, train_labels, val_paths, val_labels, image_size, class_weight,
                strategy, verbose)
        else:
            with strategy.scope():
                _compile(model, config, num_classes, config.lr)
            history, seconds = _fit(model, train_ds, val_ds, config, run_dir, "phase1", config.epochs, config.lr,
                                    class_weight, verbose)
        histories.append(history.assign(phase="head" if first_mode == "transfer" else config.mode))
        epoch_seconds.append(seconds)
    if config.mode == "finetune":
        epochs = config.finetune_epochs or config.epochs
        with strategy.scope():
            unfreeze_top(model, config.backbone, config.finetune_layers, config.finetune_from)
            _compile(model, config, num_classes, config.finetune_lr)
        history, seconds = _fit(model, train_ds, val_ds, config, run_dir, "phase2", epochs, config.finetune_lr,
                                class_weight, verbose)
        histories.append(history.assign(phase="finetune"))
        epoch_seconds.append(seconds)
    return histories, epoch_seconds, extract_seconds


def _test_metrics(model: keras.Model, table: ImageTable, run_dir: Path, config: TrainConfig) -> dict:
    """Metrics on the test split (val when there is none), with the confusion matrix and error grid."""
    test_split = "test" if len(table.split("test")) else "val"
    test_paths, test_labels = table.paths_labels(test_split)
    probabilities = predict_probabilities(model, test_paths, model.input_shape[1:3], config.batch_size)
    metrics = classification_metrics(test_labels, probabilities, table.class_names)
    metrics["split"] = test_split
    plot_confusion(metrics["confusion_matrix"], table.class_names, run_dir / "confusion_matrix.png",
                   title=f"{config.backbone} {test_split}")
    misclassified_grid(test_paths, test_labels, probabilities, table.class_names, run_dir / "misclassified.png")
    return metrics


def _fit(model, train_ds, val_ds, config: TrainConfig, run_dir: Path, phase: str, epochs: int, lr: float,
         class_weight, verbose) -> tuple[pd.DataFrame, float]:
    start = time.perf_counter()
    timer = _EpochTimer()
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, class_weight=class_weight, verbose=verbose,
                        shuffle=False,  # the tf.data pipeline shuffles, seeded
                        callbacks=[*_callbacks(config, run_dir, phase, epochs, lr), timer])
    ran = max(1, len(history.epoch))
    frame = pd.DataFrame(history.history)
    if len(timer.seconds) == len(frame):
        frame["epoch_seconds"] = timer.seconds  # wall time of each epoch, validation included
    return frame, (time.perf_counter() - start) / ran


class _EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each epoch: the first one also pays for tracing, so benchmarks can leave it out."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def _fit_head_on_cached_features(model, config, run_dir, train_paths, train_labels, val_paths, val_labels, image_size,
                                 class_weight, strategy, verbose) -> tuple[pd.DataFrame, float, float]:
    """Frozen base, no augmentation: run the backbone once over the data, then train the head on the cache.

    The head model is built from the classifier's own head layers, so training it trains the classifier.
    Returns the history, seconds per epoch (extraction included) and the extraction's seconds.
    """
    extractor = keras.Model(model.input, model.get_layer(FEATURES_LAYER).output)
    plain_train = make_dataset(train_paths, train_labels, image_size, config.batch_size, training=False)
    plain_val = make_dataset(val_paths, val_labels, image_size, config.batch_size, training=False)
    start = time.perf_counter()
    x_train, y_train = _features(extractor, plain_train)
    x_val, y_val = _features(extractor, plain_val)
    extract_seconds = time.perf_counter() - start
    with strategy.scope():
        inputs = keras.Input(shape=(x_train.shape[1],), name="features")
        x = inputs
        for layer in head_layers(model):
            x = layer(x)
        head = keras.Model(inputs, x, name="head")
        _compile(head, config, model.output_shape[-1], config.lr)
    train_features = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
        len(x_train), seed=config.seed).batch(config.batch_size)
    val_features = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(config.batch_size)
    history, seconds = _fit(head, train_features, val_features, config, run_dir, "phase1", config.epochs, config.lr,
                            class_weight, verbose)
    # Report the real cost per epoch: the one-off extraction spread over the epochs run.
    epochs_run = max(1, len(history))
    return history, seconds + extract_seconds / epochs_run, extract_seconds
