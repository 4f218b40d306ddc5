"""Face pretraining: a registry backbone becomes a face embedder (what ``weights="faces"`` ships).

Recipe (``configs/pretrain_faces.yaml``, ``scripts/pretrain_faces.py``):

1. Every shared face photo (``faces/`` + CelebA identities, :mod:`tf_models.data.face_sets`) is
   framed by the project's own detector and crop, as serving frames faces, once, cached
   (:mod:`tf_models.train.face_data`). Whole people are held out for evaluation.
2. Augmentation covers what separates web photos from phone and classroom photos: down-scaling
   (small, far faces), JPEG re-compression, colour, pose (rotation, crop, flip).
3. Loss, by ``loss``:
   - ``distill``: the student's embedding matches dlib's 128-D embedding of the same face, centred
     on the training photos' mean (1 - cosine). dlib's network saw ~3 million faces; its embedding carries that to every photo
     here, including the thousands of people with only 2-4 photos a margin softmax learns little from.
   - ``arcface`` / ``cosface``: a margin softmax over the training identities (no teacher).
   - ``distill+arcface``: both, weighted by ``margin_weight``.
4. Resumable: ``backup/`` (Keras BackupAndRestore) restarts an interrupted run at its last epoch.

The run folder holds ``embedder.keras`` (the whole float32 model), ``face_weights.npz`` (float16;
``scripts/pack_face_weights.py`` packs it into the shipped format), ``history.csv``, ``metrics.json`` (held-out verification after training).
"""

from __future__ import annotations

import json
import math
import time
import weakref
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
import yaml

from tf_models.data.augment import AugmentConfig, build_augmenter
from tf_models.data.face_sets import identity_disjoint_split, load_face_identities, unit_hash
from tf_models.faces.crop import CropSettings
from tf_models.faces.verification import pair_accuracy
from tf_models.images import resize_images
from tf_models.models.backbones import load_face_arrays
from tf_models.models.classifier import BACKBONE_LAYER, inference_function
from tf_models.models.face_embedder import (PROJECTION_BN_LAYER, PROJECTION_LAYER, MarginLogits,
                                            assign_embedder_arrays, build_face_embedder, save_face_weights)
from tf_models.train.face_data import FramedFaces, prepare_faces
from tf_models.train.face_recipe import (BATCHNORM_MOMENTUM, FACE_WEIGHTS_FILE, LOSSES, PRETRAIN_CONFIG_FILE,
                                         PretrainConfig)

EMBEDDER_FILE = "embedder.keras"


# Pose and colour: the suite's own augmenter (fused geometry, stateless), applied per batch.
FACE_AUGMENT = AugmentConfig(
    random_resized_crop_scale=(0.8, 1.0),
    random_resized_crop_ratio=(0.9, 1.1),
    horizontal_flip=True,
    rotation_range=10.0,
    color_jitter=(0.3, 0.3, 0.3, 0.05),
    fill_mode="reflect",
)


def _degrade(image: tf.Tensor, seed: tf.Tensor, config: PretrainConfig) -> tf.Tensor:
    """One uint8 crop -> a lower-quality copy: down-scaled and re-encoded as JPEG at random."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    size = tf.shape(image)[:2]
    draw = tf.random.stateless_uniform([2], seeds[0])
    side = tf.cast(tf.random.stateless_uniform([], seeds[1], 24.0, tf.cast(size[0], tf.float32)), tf.int32)

    def shrink():
        small = tf.image.resize(image, [side, side], antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(tf.image.resize(small, size)), 0, 255), tf.uint8)

    image = tf.cond(draw[0] < config.downscale_probability, shrink, lambda: image)
    quality = tf.random.stateless_uniform([], seeds[2], 30, 96, dtype=tf.int32)
    image = tf.cond(draw[1] < config.jpeg_probability,
                    lambda: tf.image.adjust_jpeg_quality(image, quality), lambda: image)
    image.set_shape([None, None, 3])
    return image


def training_dataset(crops: np.ndarray, labels: np.ndarray, teacher: np.ndarray | None,
                     config: PretrainConfig) -> tf.data.Dataset:
    """Shuffled, degraded, resized and augmented batches: ({image, label}, targets)."""
    augment = build_augmenter(FACE_AUGMENT)
    elements = {"crop": crops, "label": labels.astype(np.int32)}
    if teacher is not None:
        elements["teacher"] = teacher.astype(np.float32)
    seeds = tf.data.Dataset.random(seed=config.seed).batch(2)
    dataset = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(elements), seeds)
    dataset = dataset.shuffle(len(crops), seed=config.seed, reshuffle_each_iteration=True)

    def per_image(element, seed):
        element = dict(element)
        element["crop"] = _degrade(element["crop"], seed, config)
        element["seed"] = seed
        return element

    def per_batch(batch):
        images = augment(resize_images(batch["crop"], config.input_size), batch["seed"][0])
        inputs = {"image": images, "label": batch["label"]}
        targets = {}
        if config.uses_teacher:
            targets["embedding"] = batch["teacher"]
        if config.margin_loss:
            targets["logits"] = batch["label"]
        return inputs, targets

    return (dataset.map(per_image, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(config.batch_size, drop_remainder=True)
            .map(per_batch, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


@keras.saving.register_keras_serializable(package="tf_models")
class CosineDistance(keras.losses.Loss):
    """1 - cosine similarity between unit embeddings and (unit) teacher embeddings."""

    def call(self, y_true, y_pred):
        y_true = keras.ops.normalize(keras.ops.cast(y_true, "float32"), axis=-1)
        return 1.0 - keras.ops.sum(y_true * keras.ops.cast(y_pred, "float32"), axis=-1)


def build_training_model(config: PretrainConfig, num_classes: int) -> tuple[keras.Model, keras.Model]:
    """(training model: {image, label} -> {embedding[, logits]}, the embedder inside it)."""
    embedder = build_face_embedder(config.backbone, config.input_size, embedding_dim=config.embedding_dim,
                                   weights=None, dropout=config.dropout)
    for layer in embedder.get_layer(BACKBONE_LAYER).layers:
        # Keras's ImageNet builders keep BatchNorm statistics with momentum 0.999: a 1,000-step memory,
        # longer than an epoch here, so a model trained from scratch is judged with stale statistics.
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, BATCHNORM_MOMENTUM)
    image = keras.Input(shape=(*config.input_size, 3), name="image")
    label = keras.Input(shape=(), dtype="int32", name="label")
    embedding = embedder(image)
    outputs = {}
    if config.uses_teacher:
        outputs["embedding"] = keras.layers.Identity(name="embedding")(embedding)
    if config.margin_loss:
        outputs["logits"] = MarginLogits(num_classes, config.margin_loss, config.scale, config.margin,
                                         name="logits")([embedding, label])
    return keras.Model({"image": image, "label": label}, outputs, name="face_pretraining"), embedder


def load_embedder_weights(embedder: keras.Model, path: str | Path) -> None:
    """Copies an earlier run's embedder into ``embedder``: backbone and projection.

    ``path``: its ``embedder.keras`` (float32), or a ``face_weights.npz`` (float16 or packed, the shipped
    format: a run folder's, or the package's). The architectures must match (same backbone, input
    and embedding size); anything else is an error, never a partial load.
    """
    if Path(path).suffix == ".npz":
        assign_embedder_arrays(embedder, load_face_arrays(path), embedder.name)
        return
    source = keras.saving.load_model(path, compile=False)
    for name in (BACKBONE_LAYER, PROJECTION_LAYER, PROJECTION_BN_LAYER):
        mine, theirs = embedder.get_layer(name).weights, source.get_layer(name).weights
        shapes = [tuple(v.shape) for v in mine], [tuple(v.shape) for v in theirs]
        if shapes[0] != shapes[1]:
            raise ValueError(f"{path} does not fit this embedder: layer {name!r} differs "
                             f"(its weights {shapes[1][:3]}..., ours {shapes[0][:3]}...). Received: init_from={path}")
        for variable, value in zip(mine, theirs):
            variable.assign(value.numpy())


def embed_crops(embedder: keras.Model, crops: np.ndarray, input_size: tuple[int, int],
                batch_size: int = 128) -> np.ndarray:
    """Unit embeddings of uint8 crops, resized exactly as serving resizes them."""
    call = _inference(embedder, input_size)
    out = [call(resize_images(crops[i:i + batch_size], input_size)).numpy()
           for i in range(0, len(crops), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, embedder.output_shape[-1]), np.float32)


_INFERENCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inference(embedder: keras.Model, input_size: tuple[int, int]):
    """The embedder's traced inference call, built once per model (tracing costs seconds; the progress
    callback embeds every epoch). Held weakly: a model that is gone takes its function with it."""
    if embedder not in _INFERENCE:
        _INFERENCE[embedder] = inference_function(embedder, input_size)
    return _INFERENCE[embedder]


class _Progress(keras.callbacks.Callback):
    """Each epoch: teacher agreement and pair accuracy on held-back training people; wall time."""

    def __init__(self, embedder: keras.Model, crops: np.ndarray, people: np.ndarray,
                 teacher: np.ndarray | None, config: PretrainConfig) -> None:
        super().__init__()
        self.embedder, self.crops, self.people, self.teacher, self.config = embedder, crops, people, teacher, config
        self.started = time.time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None or not len(self.crops):
            return
        vectors = embed_crops(self.embedder, self.crops, self.config.input_size)
        figures = pair_accuracy(vectors, self.people)
        logs["val_pair_accuracy"] = figures["pair_accuracy"]
        if self.teacher is not None:
            logs["val_teacher_cosine"] = float(np.mean(np.sum(vectors * self.teacher, 1)))
        logs["minutes"] = (time.time() - self.started) / 60.0
        print(f"\nepoch {epoch + 1}: held-back people pair accuracy {figures['pair_accuracy']:.4f}"
              + (f", teacher cosine {logs['val_teacher_cosine']:.3f}" if self.teacher is not None else ""))


def _lr_schedule(config: PretrainConfig):
    def schedule(epoch: int, _lr: float) -> float:
        if epoch < config.warmup_epochs:
            return config.lr * (epoch + 1) / (config.warmup_epochs + 1)
        progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return schedule


def load_pretraining_faces(config: PretrainConfig) -> tuple[pd.DataFrame, FramedFaces]:
    """The shared face photos with their split, framed (and embedded by the teacher when the loss needs it)."""
    rows = load_face_identities(config.data_root, include_celeba=config.include_celeba)
    rows["split"] = identity_disjoint_split(rows)
    faces = prepare_faces(rows, config.cache_dir, CropSettings(align=config.crop_align), with_teacher=True,
                          workers=config.workers)
    return rows, faces


def training_people(rows: pd.DataFrame, config: PretrainConfig) -> tuple[pd.Series, pd.Series]:
    """(trained on, held back to watch progress): boolean masks over ``rows``. Both come from the
    ``train`` split (the benchmark's people are apart); a person is held back by a hash of their name."""
    train_people = rows.loc[rows["split"] == "train", "person"]
    held_back = {p for p in train_people.unique() if (unit_hash(p + "#val") < config.val_people_fraction)}
    is_train = (rows["split"] == "train") & ~rows["person"].isin(held_back)
    return is_train, rows["person"].isin(held_back)


def centred_teacher(teacher: np.ndarray, is_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit targets, the mean taken off): the teacher's embeddings minus their mean over the training photos.

    dlib's embeddings all lie in a narrow cone (their mean has length ~0.9; two strangers score ~0.85
    cosine). Matching them as they are, a student scores 0.82 by outputting the mean direction and
    learns nothing that tells people apart (measured: 50% pair accuracy after an epoch)."""
    mean = teacher[is_train].mean(axis=0)
    centred = teacher - mean
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12), mean


def pretrain(config: PretrainConfig, faces: FramedFaces | None = None, verbose: int | str = 2,
             extra_callbacks: list[keras.callbacks.Callback] = ()) -> Path:
    """Trains (or resumes) the face embedder of ``config``; returns the run folder.

    ``faces``: prepared faces (default: :func:`load_pretraining_faces`); ``extra_callbacks`` run after ours.
    """
    keras.utils.set_random_seed(config.seed)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PRETRAIN_CONFIG_FILE).write_text(yaml.safe_dump(
        {**asdict(config), "input_size": list(config.input_size)}, sort_keys=False))
    if faces is None:
        _, faces = load_pretraining_faces(config)
    rows = faces.rows
    is_train, is_val = training_people(rows, config)
    held_back = rows.loc[is_val, "person"].unique()
    classes = sorted(rows.loc[is_train, "person"].unique())
    index = {name: k for k, name in enumerate(classes)}
    labels = rows.loc[is_train, "person"].map(index).to_numpy()
    teacher = faces.teacher
    if teacher is not None:
        teacher, teacher_mean = centred_teacher(teacher, is_train.to_numpy())
        (run_dir / "teacher_mean.json").write_text(json.dumps([round(float(v), 7) for v in teacher_mean]))
    train_crops = faces.crops[is_train.to_numpy()]
    dataset = training_dataset(train_crops, labels, teacher[is_train.to_numpy()] if teacher is not None else None,
                               config)

    model, embedder = build_training_model(config, len(classes))
    if config.init_from:
        load_embedder_weights(embedder, config.init_from)
    losses, weights = {}, {}
    if config.uses_teacher:
        losses["embedding"], weights["embedding"] = CosineDistance(), 1.0
    if config.margin_loss:
        losses["logits"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        weights["logits"] = config.margin_weight if config.uses_teacher else 1.0
    model.compile(optimizer=keras.optimizers.AdamW(config.lr, weight_decay=config.weight_decay),
                  loss=losses, loss_weights=weights)
    val_teacher = teacher[is_val.to_numpy()] if teacher is not None and config.uses_teacher else None
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.LearningRateScheduler(_lr_schedule(config)),
        _Progress(embedder, faces.crops[is_val.to_numpy()], rows.loc[is_val, "person"].to_numpy(), val_teacher, config),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        *extra_callbacks,
    ]
    print(f"face pretraining: {len(train_crops)} photos of {len(classes)} people, {len(classes)} classes; "
          f"held back {int(is_val.sum())} photos of {len(held_back)} people; loss {config.loss}")
    model.fit(dataset, epochs=config.epochs, callbacks=callbacks, verbose=verbose, shuffle=False)
    embedder.save(run_dir / EMBEDDER_FILE)
    digest = save_face_weights(embedder, run_dir / FACE_WEIGHTS_FILE)
    (run_dir / "face_weights.sha256").write_text(digest + "\n")
    (run_dir / "training_people.json").write_text(json.dumps({"classes": len(classes),
                                                              "photos": int(len(train_crops))}))
    return run_dir


__all__ = ["LOSSES", "PretrainConfig", "build_training_model", "centred_teacher", "embed_crops", "load_embedder_weights", "load_pretraining_faces",
           "pair_accuracy", "pretrain", "training_dataset", "training_people"]
