"""Training a run end to end: data -> model -> (cached-feature) head phase -> fine-tuning -> run folder.

The run folder holds everything needed to use, judge and repeat the run: ``config.yaml``,
``class_names.json``, ``crop.json`` (identity), ``model.keras``, ``backbone.weights.h5``, ``history.csv``, ``metrics.json``,
``data_report.{json,md}``, plots, ``tensorboard/``. Re-running the same command after a crash
resumes from ``backup/`` (BackupAndRestore), which is what a Colab disconnect needs, and ends with the
numbers an uninterrupted run would have (see ``_ResumeState``).

With ``TF_CONFIG`` set, the same command on every machine trains one model with TensorFlow's
MultiWorkerMirroredStrategy: each worker reads its own share of the files, every step all-reduces the
gradients, and only the chief writes the run folder (the others write to a private temporary folder).
``TF_MODELS_WORKER_LOG=folder`` makes each worker record its files, steps and final weights there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
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
    mirror_averaged,
    unfreeze_top,
)
from tf_models.config import TrainConfig, load_table
from tf_models.files import atomic_write
from tf_models.data.tables import ImageTable
from tf_models.runs import (
    BACKBONE_WEIGHTS_FILE,
    DATA_REPORT_STEM,
    HISTORY_FILE,
    MODEL_FILE,
    image_cache_folder,
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
from tf_models.models.backbones import start_weights_id
from tf_models.data.cache import CacheChoice, choose_cache
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


# ---- several workers (MultiWorkerMirroredStrategy) -----------------------------------------------

WORKER_LOG_ENV = "TF_MODELS_WORKER_LOG"
_BACKUP_DIR = "backup"  # in the run folder: BackupAndRestore's folder and _ResumeState's file per phase


@dataclass(frozen=True)
class WorkerRole:
    """This process's place among the workers training one model: ``index`` of ``count``; 0 is the chief."""

    index: int = 0
    count: int = 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def worker_role(strategy: tf.distribute.Strategy) -> WorkerRole:
    """The role ``TF_CONFIG`` gives this process under MultiWorkerMirroredStrategy; one worker otherwise.

    Numbered as tf.distribute numbers its input pipelines: the ``chief`` task first when there is one
    (else ``worker`` 0 is the chief), then the workers.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return WorkerRole()
    jobs = resolver.cluster_spec().as_dict()
    chiefs = len(jobs.get("chief", []))
    count = chiefs + len(jobs.get("worker", []))
    if count <= 1:
        return WorkerRole()
    index = resolver.task_id + (chiefs if resolver.task_type == "worker" else 0)
    return WorkerRole(index, count)


def _worker_files(paths: list[str], labels: list[int], role: WorkerRole) -> tuple[list[str], list[int]]:
    """This worker's share of the files: every ``count``-th one from its index (sharding by file).

    Each worker then decodes only its own images. The last ``len % count`` files are left out so every
    worker holds as many as the others: they must all take the same number of steps, since a step's
    all-reduce waits for every worker.
    """
    if role.count == 1:
        return paths, labels
    end = len(paths) - len(paths) % role.count
    return paths[role.index:end:role.count], labels[role.index:end:role.count]


def _pipeline_batch_size(batch_size: int, strategy: tf.distribute.Strategy, role: WorkerRole) -> int:
    """Images per batch of this worker's pipeline: the global batch on one worker (Keras splits it over
    the local replicas), one replica's share of it when each worker feeds its own replicas."""
    if role.count == 1:
        return batch_size
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"batch_size (the global batch) must be a multiple of the {replicas} replicas of all "
                         f"workers. Received: batch_size={batch_size}")
    return batch_size // replicas


def _distribute(dataset: tf.data.Dataset, strategy: tf.distribute.Strategy, role: WorkerRole,
                class_weight: dict[int, float] | None = None):
    """What ``fit`` gets: ``dataset`` itself on one worker; with several, this worker's own pipeline
    (its files, per-replica batches) handed to tf.distribute as it is, so it neither shards nor rebatches it.

    Keras cannot add class weights to a distributed dataset, so they become sample weights here.
    """
    if role.count == 1:
        return dataset
    if class_weight:
        weights = tf.constant([class_weight.get(k, 1.0) for k in range(max(class_weight) + 1)], tf.float32)
        dataset = dataset.map(lambda images, labels: (images, labels, tf.gather(weights, labels)))
    return strategy.distribute_datasets_from_function(lambda _context: dataset)


def _synchronize_batch_norm(model: keras.Model) -> None:
    """Several workers: BatchNormalization normalises with the statistics of the global batch.

    Keras 3 updates each worker's moving mean and variance from that worker's images only, so the
    workers' models would drift apart and the chief would save statistics of its share of the data.
    Synchronised, each step all-reduces the batch statistics (a few numbers per channel): every worker
    keeps the same model, the one a single device would train on the global batch. The saved model keeps
    the flag; it only acts in training mode, and without a strategy it reduces over the one replica.
    """
    pending = [model]
    while pending:
        layer = pending.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
        pending.extend(getattr(layer, "layers", []))


@contextlib.contextmanager
def _keras_multi_worker_fit(model: keras.Model, strategy: tf.distribute.Strategy) -> Iterator[None]:
    """Lets Keras 3 ``fit`` under MultiWorkerMirroredStrategy with several workers, which it cannot do alone.

    Keras 3.15's TensorFlow trainer fails there in two places (keras-team/keras#20585, open): before the
    first step it all-reduces a whole input batch to learn its shapes, and ``strategy.reduce`` takes no
    (images, labels) pair; after each step it averages the per-replica logs over ``axis=0``, and they
    are scalars. For the length of the ``fit``: the model does not hold its strategy, so Keras builds
    what is left to build while tracing the step (its path without a strategy), inside the strategy's
    scope so it still trains under it; and the logs are averaged over all replicas of all workers.
    Written against Keras 3.15; tests/test_multiworker.py fails if a Keras release breaks it.
    """
    from keras.src.backend.tensorflow import trainer as keras_trainer

    keras_reduce, model_strategy = keras_trainer.reduce_per_replica, model._distribute_strategy

    def reduce_per_replica(values, reduce_strategy, reduction):
        if reduction != "auto":
            return keras_reduce(values, reduce_strategy, reduction)
        # Every log, also a plain tensor (one local replica): batch-level callbacks (TerminateOnNaN) must
        # see the same numbers on every worker, or one stops while the others wait for it.
        return tf.nest.map_structure(lambda v: reduce_strategy.reduce("MEAN", v, axis=None), values)

    keras_trainer.reduce_per_replica, model._distribute_strategy = reduce_per_replica, None
    try:
        with strategy.scope():
            yield
    finally:
        keras_trainer.reduce_per_replica, model._distribute_strategy = keras_reduce, model_strategy


def _worker_folder(run_dir: Path, role: WorkerRole) -> Path:
    """Where this worker writes: the run folder on the chief, a private temporary folder elsewhere.

    The other workers still run every callback (early stopping must decide alike everywhere), so they
    write the same files, just where nobody reads them, as tf.distribute's multi-worker guide advises. To
    resume they need the chief's backup: it is copied in, so the run folder must be on storage every
    worker can read (a shared filesystem), as for TensorFlow's own multi-worker checkpoints.
    """
    if role.is_chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    folder = Path(tempfile.mkdtemp(prefix=f"tf_models_worker{role.index}_"))
    if (run_dir / _BACKUP_DIR).is_dir():
        shutil.copytree(run_dir / _BACKUP_DIR, folder / _BACKUP_DIR)
    return folder


def _log_worker(role: WorkerRole, **event) -> None:
    """One JSON line in ``$TF_MODELS_WORKER_LOG/worker<index>.jsonl`` when that variable is set.

    What each worker did (its files, its steps per epoch, its final weights), so tests can compare them.
    """
    folder = os.environ.get(WORKER_LOG_ENV)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    with (Path(folder) / f"worker{role.index}.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"worker": role.index, "time": time.time(), **event}) + "\n")


def weights_checksum(model: keras.Model) -> str:
    """SHA-256 of all the model's weights, in order: equal on two workers only if every bit is."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


class _StepLog(keras.callbacks.Callback):
    """Logs (``_log_worker``) the start of each epoch, and at its end the steps run and the logs."""

    def __init__(self, role: WorkerRole, phase: str):
        super().__init__()
        self._role, self._phase, self._steps = role, phase, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._steps = 0
        _log_worker(self._role, event="epoch_begin", phase=self._phase, epoch=epoch)

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        _log_worker(self._role, event="epoch_end", phase=self._phase, epoch=epoch, steps=self._steps,
                    iterations=int(self.model.optimizer.iterations.numpy()),
                    logs={name: float(value) for name, value in (logs or {}).items()})


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
    """The callbacks of one phase, less the backup ones (``_fit`` puts those last)."""
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(str(run_dir / f"best_{phase}.weights.h5"), monitor="val_loss",
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.CSVLogger(str(run_dir / f"history_{phase}.csv"), append=True),
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
    # Every worker seeds alike: the same split, initial weights and data order on each.
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = select_strategy()
    policy = select_precision(config.mixed_precision, strategy)
    keras.mixed_precision.set_dtype_policy(policy)
    write_dir = _worker_folder(run_dir, worker_role(strategy))
    try:
        result = _train(config, write_dir, strategy, policy, table, verbose)
        return dataclasses.replace(result, run_dir=run_dir)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
        if write_dir != run_dir:
            shutil.rmtree(write_dir, ignore_errors=True)


def _train(config: TrainConfig, run_dir: Path, strategy, policy: str, table: ImageTable | None, verbose) -> RunResult:
    """``run_dir``: where this process writes (the run folder, or a worker's private one: ``_worker_folder``)."""
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
    if worker_role(strategy).count > 1:
        _synchronize_batch_norm(model)
    image_size = model.input_shape[1:3]
    augment = AugmentConfig.preset(config.augment)
    # Any augmentation (photometric too) changes the pixels each epoch, so only an identity config can cache.
    use_feature_cache = config.cache_features and first_mode == "transfer" and augment.is_identity
    histories, epoch_seconds, extract_seconds, image_cache = _fit_phases(model, config, run_dir, table, augment,
                                                                         first_mode, use_feature_cache, strategy,
                                                                         verbose)

    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    history.index.name = "epoch"
    history.to_csv(run_dir / HISTORY_FILE)
    if len(history):
        plot_history(history, run_dir / "learning_curves.png", title=f"{config.backbone} {config.mode}")
    if config.mirror_average:  # trained plain (half the cost); tested and served with the mirror view
        with strategy.scope():
            model = mirror_averaged(model)
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
                    "feature_extraction_seconds": extract_seconds, "image_cache": image_cache.to_dict(),
                    "start_weights": start_weights_id(config.backbone, weights)})
    write_metrics(run_dir, metrics)
    shutil.rmtree(run_dir / _BACKUP_DIR, ignore_errors=True)  # the run is complete: nothing left to resume
    _log_worker(worker_role(strategy), event="end", write_dir=str(run_dir.resolve()),
                weights_sha256=weights_checksum(model),
                metrics={name: metrics[name] for name in ("accuracy", "balanced_accuracy", "confusion_matrix")})
    return RunResult(run_dir, metrics, seconds_per_epoch, params, trainable)


def _fit_phases(model: keras.Model, config: TrainConfig, run_dir: Path, table: ImageTable, augment: AugmentConfig,
                first_mode: str, use_feature_cache: bool, strategy,
                verbose) -> tuple[list[pd.DataFrame], list[float], float, CacheChoice]:
    """Phase 1: the head on a frozen base (transfer, and finetune's first phase) or everything (scratch).
    Phase 2 (finetune): unfreeze the top block, recompile, fine-tune at a low learning rate.

    Returns (history per phase, seconds per epoch per phase, feature-extraction seconds, image cache used).
    """
    num_classes = len(table.class_names)
    image_size = model.input_shape[1:3]
    train_paths, train_labels = table.paths_labels("train")
    val_paths, val_labels = table.paths_labels("val")
    if not val_paths:  # tiny datasets: validate on the training images rather than not at all
        val_paths, val_labels = train_paths, train_labels
    class_weight = table.class_weights() if config.balance == "weights" else None
    role = worker_role(strategy)
    train_paths, train_labels = _worker_files(train_paths, train_labels, role)
    val_paths, val_labels = _worker_files(val_paths, val_labels, role)
    _log_worker(role, event="files", train=train_paths, val=val_paths)
    batch_size = _pipeline_batch_size(config.batch_size, strategy, role)
    # Memory, disk or no cache for the decoded images, chosen from their size and the memory free now.
    cache_folder = image_cache_folder(run_dir, config)
    image_cache = choose_cache(config.cache, len(train_paths) + len(val_paths), image_size, disk_folder=cache_folder)
    print(f"image cache: {image_cache.mode} ({image_cache.reason})", flush=True)
    cache = image_cache.pipeline_cache(cache_folder)
    # Several workers: whole batches only, so every worker takes the same number of steps.
    train_ds = make_dataset(train_paths, train_labels, image_size, batch_size, training=True, augment=augment,
                            seed=config.seed, cache=cache, drop_remainder=role.count > 1)
    val_ds = make_dataset(val_paths, val_labels, image_size, batch_size, training=False, cache=cache)
    train_ds, val_ds = _distribute(train_ds, strategy, role, class_weight), _distribute(val_ds, strategy, role)
    fit_class_weight = None if role.count > 1 else class_weight  # several workers: in train_ds already
    histories: list[pd.DataFrame] = []
    epoch_seconds: list[float] = []
    extract_seconds = 0.0
    if config.epochs > 0:
        def head_phase() -> tuple[pd.DataFrame, float, float]:
            if use_feature_cache:
                return _fit_head_on_cached_features(model, config, run_dir, train_paths, train_labels, val_paths,
                                                    val_labels, image_size, class_weight, strategy, verbose)
            with strategy.scope():
                _compile(model, config, num_classes, config.lr)
            return *_fit(model, train_ds, val_ds, config, run_dir, "phase1", config.epochs, config.lr,
                         fit_class_weight, verbose), 0.0

        # The cached-feature head never iterates train_ds; model.fit does (the data order of later phases).
        history, seconds, extract_seconds = _phase_once(model, config, run_dir, "phase1", head_phase, train_ds,
                                                        iterates_data=not use_feature_cache)
        histories.append(history.assign(phase="head" if first_mode == "transfer" else config.mode))
        epoch_seconds.append(seconds)
    if config.mode == "finetune":
        epochs = config.finetune_epochs or config.epochs
        with strategy.scope():
            unfreeze_top(model, config.backbone, config.finetune_layers, config.finetune_from)
            _compile(model, config, num_classes, config.finetune_lr)
        history, seconds, _ = _phase_once(model, config, run_dir, "phase2", lambda: (*_fit(
            model, train_ds, val_ds, config, run_dir, "phase2", epochs, config.finetune_lr, fit_class_weight,
            verbose), 0.0), train_ds, iterates_data=True)
        histories.append(history.assign(phase="finetune"))
        epoch_seconds.append(seconds)
    return histories, epoch_seconds, extract_seconds, image_cache


def _phase_once(model: keras.Model, config: TrainConfig, run_dir: Path, phase: str,
                run_phase: Callable[[], tuple[pd.DataFrame, float, float]], train_ds, *,
                iterates_data: bool) -> tuple[pd.DataFrame, float, float]:
    """``run_phase()`` (history, seconds per epoch, extraction seconds), or what it gave before this run restarted.

    BackupAndRestore resumes the phase it was in and deletes its backup when the phase ends, so a run
    killed in the fine-tuning phase would train its head phase again from the start. A finished phase
    leaves ``backup/<phase>.done.npz``: its weights, the layers' random state (dropout), its history and
    how many times it opened ``train_ds``. A restart loads them, opens and drops as many iterators (tf.data
    reshuffles and redraws augmentation seeds per iterator: see ``_ResumeState``) and goes on exactly as
    an uninterrupted run. A file from another config or model is ignored (warned): the phase runs again.
    """
    done = run_dir / _BACKUP_DIR / f"{phase}.done.npz"
    stamp = _phase_stamp(model, config)
    if done.is_file():
        with np.load(done, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            if meta.get("stamp") == stamp:
                model.set_weights([saved[f"weight{i}"] for i in range(len(model.weights))])
                for i, variable in enumerate(_seed_states(model)):
                    variable.assign(saved[f"seed{i}"])
                for _ in range(meta["train_iterators"]):
                    iter(train_ds)
                print(f"{phase}: finished before the restart; its weights and history loaded from {done}", flush=True)
                return pd.DataFrame(meta["rows"]), meta["seconds"], meta["extract_seconds"]
        warnings.warn(f"{done} is from another config or model than this run's: not used, {phase} runs again.",
                      stacklevel=2)
    history, seconds, extract_seconds = run_phase()
    iterators = len(history) * _iterators_per_epoch(train_ds) if iterates_data else 0
    meta = {"stamp": stamp, "rows": history.to_dict(orient="records"), "seconds": seconds,
            "extract_seconds": extract_seconds, "train_iterators": iterators}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.asarray(json.dumps(meta, default=_plain)),
             **{f"weight{i}": np.asarray(w) for i, w in enumerate(model.get_weights())},
             **{f"seed{i}": np.asarray(v) for i, v in enumerate(_seed_states(model))})
    atomic_write(done, buffer.getvalue())
    return history, seconds, extract_seconds


def _phase_stamp(model: keras.Model, config: TrainConfig) -> str:
    """What a finished phase's file must match to be reused: the config (less where the run is written and
    how it is served) and the model's weights by path and shape."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("out", "mirror_average")}
    shapes = [(w.path, list(w.shape)) for w in model.weights]
    return hashlib.sha1(json.dumps([settings, shapes], sort_keys=True, default=str).encode()).hexdigest()


def _iterators_per_epoch(dataset) -> int:
    """How many times Keras 3 opens the training data per epoch: twice when it knows the number of
    batches (it opens the next epoch's iterator at the end of each epoch, then opens a fresh one when
    that epoch begins: keras/src/trainers/epoch_iterator.py), else once."""
    cardinality = dataset.cardinality
    known = int(cardinality() if callable(cardinality) else cardinality) >= 0
    return 2 if known else 1


def _seed_states(model: keras.Model) -> list:
    """The random state of the model's layers: what ``model.variables`` holds beyond its weights."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


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
    """One phase's ``model.fit``: its history (every epoch, those before a resume too) and seconds per epoch."""
    start = time.perf_counter()
    strategy = model.distribute_strategy
    role = worker_role(strategy)
    timer = _EpochTimer()
    callbacks = _callbacks(config, run_dir, phase, epochs, lr)
    resume = _ResumeState(run_dir / _BACKUP_DIR / f"{phase}.state.npz", train_ds, callbacks, timer)
    if os.environ.get(WORKER_LOG_ENV):
        callbacks.append(_StepLog(role, phase))
    # The backup callbacks come last, so they save what the others changed at the epoch's end (a plateau's
    # lower learning rate, early stopping's best), and the weights, which mark an epoch as done, last of all.
    backup = keras.callbacks.BackupAndRestore(str(run_dir / _BACKUP_DIR / phase))
    with _keras_multi_worker_fit(model, strategy) if role.count > 1 else contextlib.nullcontext():
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, class_weight=class_weight,
                            verbose=verbose, shuffle=False,  # the tf.data pipeline shuffles, seeded
                            callbacks=[*callbacks, timer, resume, backup])
    ran = max(1, len(history.epoch))
    return pd.DataFrame(resume.rows), (time.perf_counter() - start) / ran


class _ResumeState(keras.callbacks.Callback):
    """What BackupAndRestore leaves out, so that a resumed run ends with an uninterrupted run's numbers.

    BackupAndRestore keeps the weights, the optimizer and the epoch. This keeps, in a file next to its
    folder, the rest that later epochs depend on: the history so far (with each epoch's seconds), the
    counters and best values of early stopping, LR plateau and the best-weights checkpoint (early
    stopping's best weights too), and the layers' random state (dropout masks). It also replays the data
    order: tf.data reshuffles and redraws augmentation seeds each time a dataset is iterated, counting
    from the process start, so a run resumed at epoch k first opens and drops as many iterators as
    epochs 0..k-1 opened (cheap: no pass over the data), and its epoch k then sees epoch k's order.
    """

    _COUNTERS = ("wait", "best", "best_epoch", "stopped_epoch", "cooldown_counter")

    def __init__(self, path: Path, dataset: tf.data.Dataset, callbacks: list[keras.callbacks.Callback],
                 timer: _EpochTimer):
        super().__init__()
        self.path, self._dataset, self._timer = path, dataset, timer
        self._stateful = [c for c in callbacks if isinstance(c, (keras.callbacks.EarlyStopping,
                                                                 keras.callbacks.ReduceLROnPlateau,
                                                                 keras.callbacks.ModelCheckpoint))]
        self.rows: list[dict[str, float]] = []  # the logs of every epoch of the phase, with "epoch_seconds"
        self._began = False

    def on_train_begin(self, logs=None):
        self.rows, self._began = [], False

    def on_epoch_begin(self, epoch, logs=None):
        if self._began:
            return
        self._began = True
        if epoch > 0:  # fit always starts at 0 here: a later first epoch is BackupAndRestore's resume
            self._restore(epoch)
            for _ in range(epoch * _iterators_per_epoch(self._dataset)):
                iter(self._dataset)

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({**{k: float(v) for k, v in (logs or {}).items()}, "epoch_seconds": self._timer.seconds[-1]})
        meta = {"epoch": epoch + 1, "rows": self.rows,
                "callbacks": [{name: _plain(getattr(c, name)) for name in self._COUNTERS if hasattr(c, name)}
                              for c in self._stateful]}
        arrays = {f"seed{i}": np.asarray(v) for i, v in enumerate(_seed_states(self.model))}
        for i, callback in enumerate(self._stateful):
            for j, weight in enumerate(getattr(callback, "best_weights", None) or []):
                arrays[f"best{i}_{j}"] = weight
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.asarray(json.dumps(meta)), **arrays)
        atomic_write(self.path, buffer.getvalue())  # a kill while writing leaves the previous file whole

    def on_train_end(self, logs=None):
        if not self._began and self.path.is_file():  # killed after the last epoch's backup: no epoch left to run
            with np.load(self.path) as saved:
                self.rows = json.loads(str(saved["meta"]))["rows"]
        self.path.unlink(missing_ok=True)  # as BackupAndRestore deletes its backup: the phase is done

    def _restore(self, epoch: int) -> None:
        if not self.path.is_file():
            warnings.warn(f"Resuming at epoch {epoch + 1} without {self.path}: early stopping, LR plateau and "
                          f"dropout start afresh and the history starts here.", stacklevel=2)
            return
        with np.load(self.path) as saved:
            meta = json.loads(str(saved["meta"]))
            if meta["epoch"] != epoch:  # killed between this file and the backup's weights
                warnings.warn(f"{self.path} is from epoch {meta['epoch']}, the backup from epoch {epoch}: "
                              f"not used.", stacklevel=2)
                return
            self.rows = meta["rows"]
            for i, (callback, counters) in enumerate(zip(self._stateful, meta["callbacks"])):
                for name, value in counters.items():
                    setattr(callback, name, value)
                best = [f"best{i}_{j}" for j in range(len(saved.files)) if f"best{i}_{j}" in saved.files]
                if best:
                    callback.best_weights = [saved[k] for k in best]
            for i, variable in enumerate(_seed_states(self.model)):
                variable.assign(saved[f"seed{i}"])


def _plain(value):
    """A callback's counter or best value as JSON takes it (numpy scalars are not JSON)."""
    return value.item() if isinstance(value, (np.generic, np.ndarray)) else value


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
    # The paths are this worker's share already (_fit_phases), so the features are too.
    role = worker_role(strategy)
    batch_size = _pipeline_batch_size(config.batch_size, strategy, role)
    train_features = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
        len(x_train), seed=config.seed).batch(batch_size, drop_remainder=role.count > 1)
    val_features = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(batch_size)
    train_features = _distribute(train_features, strategy, role, class_weight)
    val_features = _distribute(val_features, strategy, role)
    class_weight = None if role.count > 1 else class_weight  # several workers: in train_features already
    history, seconds = _fit(head, train_features, val_features, config, run_dir, "phase1", config.epochs, config.lr,
                            class_weight, verbose)
    # Report the real cost per epoch: the one-off extraction spread over the epochs run.
    epochs_run = max(1, len(history))
    return history, seconds + extract_seconds / epochs_run, extract_seconds
