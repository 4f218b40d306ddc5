"""One tf.data builder for every dataset: files + integer labels in, (images, labels) batches out.

Images come out as float32 RGB in 0..255 at the requested size: the model does its own
preprocessing, so nothing here rescales. Labels are int32 class indices (the suite's one output
convention is a softmax over K >= 2 classes with sparse labels). The loaders have already checked
every file, so decoding here cannot meet a corrupt one; it knows nothing about models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_models.data.augment import AugmentConfig, build_augmenter
from tf_models.images import resize_images


def decode_and_resize(path: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Reads one JPEG/PNG/BMP/GIF/WEBP file to uint8 RGB of ``image_size`` (H, W)."""
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    target = tf.constant(image_size, dtype=tf.int32)

    # Files already at the model's size (CelebA at 218x178, cached face crops) skip the resize:
    # it is the most expensive step of the pipeline and would be a no-op.
    same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], target))
    image = tf.cond(same_size, lambda: image, lambda: tf.cast(resize_images(image, image_size), tf.uint8))
    image.set_shape([image_size[0], image_size[1], 3])
    return image


def make_dataset(
    paths: Sequence[str | Path],
    labels: Sequence[int],
    image_size: tuple[int, int],
    batch_size: int,
    *,
    training: bool,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    cache: bool | str | Path = False,
    shuffle_buffer: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Builds the input pipeline: parallel decode, resize, cache, seeded shuffle, batch, augment, prefetch.

    Args:
        paths: image files (already validated by a loader).
        labels: integer class index per file.
        image_size: (height, width) the backbone takes.
        batch_size: images per batch.
        training: shuffle (seeded, reshuffled each epoch) and augment; otherwise keep file order.
        augment: augmentation applied to training batches; None or an identity config skips it.
        seed: drives the shuffle order and the augmentation draws.
        cache: False, True (in memory) or a file path prefix (on disk). Caching happens after resize and
            before augmentation, so every epoch sees fresh augmentations of cached pixels.
        shuffle_buffer: default: the whole dataset (an exact shuffle). Without a cache the file
            names are shuffled before decoding; with one, the decoded images coming out of it.
        drop_remainder: drop a last partial batch (needed by some distribution strategies).
    """
    if len(paths) != len(labels):
        raise ValueError(f"paths and labels differ in length: {len(paths)} vs {len(labels)}")
    if len(paths) == 0:
        raise ValueError("No images to build a dataset from (every file was skipped? see the data report).")
    image_size = (int(image_size[0]), int(image_size[1]))
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.asarray([str(p) for p in paths]), np.asarray(labels, dtype="int32"))
    )
    buffer = shuffle_buffer or len(paths)
    if training and not cache:
        # Shuffle file names, not pixels: an exact shuffle for a few bytes per image, and decoding
        # streams into batches at once (a shuffle buffer of decoded images would hold the whole
        # dataset in RAM and decode all of it before the first batch of every epoch).
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    # Images stay uint8 up to the batch (and in the cache): a quarter of float32's bytes to move.
    # Parallelism is fixed (see _parallel_calls), not AUTOTUNE: with these large elements the
    # autotuner settled on about one core of two (the decode_only row of scripts/bench_pipeline.py
    # doubled when this changed).
    dataset = dataset.map(
        lambda path, label: (decode_and_resize(path, image_size), label),
        num_parallel_calls=_parallel_calls(),
        deterministic=True,
    )
    if cache:
        dataset = dataset.cache("" if cache is True else str(cache))
        if training:  # the cache replays one order: shuffle what comes out of it
            dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = _to_float(dataset, augment if training else None, seed)
    # Every stage is sized above, so the autotuner has nothing to tune; left on, it throttled some
    # whole passes well below the others with the same CPU work per image.
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(2).with_options(options)


def _to_float(batches: tf.data.Dataset, augment: AugmentConfig | None, seed: int) -> tf.data.Dataset:
    """uint8 batches -> float32 batches, augmented when ``augment`` does anything."""
    if augment is None or augment.is_identity:
        return batches.map(lambda images, labels: (tf.cast(images, tf.float32), labels),
                           num_parallel_calls=_parallel_calls(), deterministic=True)
    augmenter = build_augmenter(augment)
    # One stateless seed pair per batch, drawn afresh each epoch, so augmentation is
    # reproducible for a given seed yet differs between epochs.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((batches, seeds)).map(
        lambda batch, pair: (augmenter(batch[0], pair), batch[1]),  # float32 out
        num_parallel_calls=_parallel_calls(),
        deterministic=True,
    )


def _parallel_calls() -> int:
    """Elements in flight per map: twice the cores this process may use.

    One per core leaves cores idle while a call waits; more than two per core gains nothing
    (``scripts/bench_pipeline.py`` measures the pipeline).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 * max(1, cores)
