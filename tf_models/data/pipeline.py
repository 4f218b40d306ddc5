"""One tf.data builder for every dataset: files + integer labels in, (images, labels) batches out.

Images come out as float32 RGB in 0..255 at the requested size: the model does its own
preprocessing, so nothing here rescales. Labels are int32 class indices (the suite's one output
convention is a softmax over K >= 2 classes with sparse labels). The loaders have already checked
every file, so decoding here cannot meet a corrupt one; it knows nothing about models.

Decoded images are cached in memory, in files on disk (for datasets larger than memory) or not at all;
:mod:`tf_models.data.cache` chooses which and keys the disk files on the inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_models.data.augment import AugmentConfig, build_augmenter
from tf_models.data.cache import claim_cache_folder, inputs_key, is_complete, warn_busy
from tf_models.images import resize_images

# Bump when decode_and_resize (or resize_images) computes other pixels: disk caches are keyed on it.
PIXELS_VERSION = 1
# Disk cache layout. A training set is stored in a fixed random order, in shard files of SHARD_CHUNKS
# tf.data cache records of about CHUNK_BYTES of images each (a record has a fixed cost to read back:
# the whole pass took 10.7 CPU-us per 64x64 image with 64-image records, 9.4 with 4 MB ones). Each
# epoch reads the shards in a new order, SHARD_CYCLE at a time, and shuffles windows of about
# WINDOW_BYTES: every image once per epoch, in a different neighbourhood each epoch, with memory bounded
# by the window instead of the dataset. The pipeline holds a few windows and shards in flight: at 100,000
# 64x64 images, 4 shards and 64 MB windows peaked at 1.55 GB RSS, 2 shards and 16 MB at 1.11 GB (pass 1,
# which writes the files; TensorFlow alone is 0.75); training img/s stayed within 10% of the memory
# cache's either way (scripts/bench_cache.py, results/cache/).
CHUNK_BYTES = 4 << 20
SHARD_CHUNKS = 16
SHARD_CYCLE = 2
WINDOW_BYTES = 16 << 20
_DISK_ORDER_SEED = 0  # the stored order: fixed, so runs with other seeds read the same files
# Without a cache every image is decoded while the model trains, and on a small CPU both want every core:
# the decoder runs in bursts between training steps. Decoding further ahead rides them out: side by side
# with the memory cache (mobilenetv2 at 64x64, batch 32, 100,000 files, 2 cores, median of per-round ratios
# over 8 and 12 rounds), 4 images decoding per core and 8 batches held ahead trained at 98% of memory's
# img/s in both runs, against 93-94% with the usual 2 per core and 2 batches (ad hoc runs; the committed
# figure: scripts/bench_cache.py). At 224x224 the 8 batches of 32 hold 38 MB.
NO_CACHE_DECODES_PER_CORE = 4
NO_CACHE_BATCHES_AHEAD = 8


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
        cache: False (decode every epoch), True (in memory) or a folder (on disk, in a subfolder keyed
            by the inputs: reused by any later dataset of the same files, labels, size and order; see
            :mod:`tf_models.data.cache`). Caching happens after resize and before augmentation, so every
            epoch sees fresh augmentations of cached pixels.
        shuffle_buffer: default: the whole dataset (an exact shuffle). Without a cache the file
            names are shuffled before decoding; in memory, the decoded images coming out of it; on disk,
            windows of this many images (default: about ``WINDOW_BYTES`` of them) from shards read in a
            new order each epoch.
        drop_remainder: drop a last partial batch (needed by some distribution strategies).
    """
    if len(paths) != len(labels):
        raise ValueError(f"paths and labels differ in length: {len(paths)} vs {len(labels)}")
    if len(paths) == 0:
        raise ValueError("No images to build a dataset from (every file was skipped? see the data report).")
    image_size = (int(image_size[0]), int(image_size[1]))
    if isinstance(cache, (str, os.PathLike)):
        if not os.fspath(cache):
            raise ValueError(f"cache must be a bool or a folder for the disk cache. Received: cache={cache!r}")
        batches = _disk_cached_batches(paths, labels, image_size, batch_size, Path(cache), training=training,
                                       seed=seed, window=shuffle_buffer, drop_remainder=drop_remainder)
        if batches is not None:
            return _finish(batches, augment if training else None, seed)
        cache = False  # another process is writing that cache: decode every epoch (warned)
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
        num_parallel_calls=_parallel_calls(NO_CACHE_DECODES_PER_CORE) if not cache else _parallel_calls(),
        deterministic=True,
    )
    if cache:  # in memory
        dataset = dataset.cache()
        if training:  # the cache replays one order: shuffle what comes out of it
            dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if not cache:  # decoded every pass: keep ahead of the model (see NO_CACHE_BATCHES_AHEAD)
        dataset = dataset.prefetch(NO_CACHE_BATCHES_AHEAD)
    return _finish(dataset, augment if training else None, seed)


def _finish(batches: tf.data.Dataset, augment: AugmentConfig | None, seed: int) -> tf.data.Dataset:
    """uint8 batches -> float32 (augmented) batches, prefetched."""
    dataset = _to_float(batches, augment, seed)
    # Every stage is sized above, so the autotuner has nothing to tune; left on, it throttled some
    # whole passes well below the others with the same CPU work per image.
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(2).with_options(options)


def _disk_cached_batches(
    paths: Sequence[str | Path],
    labels: Sequence[int],
    image_size: tuple[int, int],
    batch_size: int,
    folder: Path,
    *,
    training: bool,
    seed: int,
    window: int | None,
    drop_remainder: bool,
) -> tf.data.Dataset | None:
    """uint8 batches through a disk cache under ``folder`` (layout: see ``CHUNK_BYTES``).

    The first pass decodes and writes the shard files, later passes (and later datasets of the same
    inputs) read them. Training batches come from shuffled windows of shards read in a new order
    each epoch; otherwise batches keep file order. None when another live process is writing this
    cache (warned): the caller decodes every epoch.
    """
    n = len(paths)
    image_bytes = image_size[0] * image_size[1] * 3
    chunk = max(1, CHUNK_BYTES // image_bytes)
    shard_images = chunk * SHARD_CHUNKS
    # Training reads a fixed random order (so a shard is a sample of the whole dataset, not one
    # class or person of a sorted table); evaluation keeps file order.
    order = np.random.default_rng(_DISK_ORDER_SEED).permutation(n) if training else np.arange(n)
    layout = ("pixels", PIXELS_VERSION, tf.__version__, image_size, "shuffled" if training else "in order",
              shard_images, chunk)
    directory = folder / inputs_key([paths[i] for i in order], [labels[i] for i in order], layout)[:24]
    shards = -(-n // shard_images)
    prefixes = [directory / f"shard-{s:05d}-of-{shards:05d}" for s in range(shards)]
    if not claim_cache_folder(directory, prefixes) and not all(map(is_complete, prefixes)):
        warn_busy(directory)
        return None

    ordered_paths = tf.constant(np.asarray([str(paths[i]) for i in order]))
    ordered_labels = tf.constant(np.asarray(labels, dtype="int32")[order])
    bounds = tf.constant(np.minimum(np.arange(shards + 1) * shard_images, n), dtype=tf.int64)
    head, tail = f"{directory}{os.sep}shard-", f"-of-{shards:05d}"  # the names in `prefixes`

    def shard(index: tf.Tensor) -> tf.data.Dataset:
        # Once a shard's file is complete it is read back and the decoding map above it never runs.
        start, stop = bounds[index], bounds[index + 1]
        images = tf.data.Dataset.from_tensor_slices((ordered_paths[start:stop], ordered_labels[start:stop]))
        images = images.map(lambda path, label: (decode_and_resize(path, image_size), label),
                            num_parallel_calls=_parallel_calls(), deterministic=True)
        name = tf.strings.join([head, tf.strings.as_string(index, width=5, fill="0"), tail])
        return images.batch(chunk).cache(name)

    shard_ids = tf.data.Dataset.range(shards)
    if training:
        shard_ids = shard_ids.shuffle(shards, seed=seed, reshuffle_each_iteration=True)
    cycle = SHARD_CYCLE if training else 1  # one at a time keeps file order
    chunks = shard_ids.interleave(shard, cycle_length=cycle, block_length=1, num_parallel_calls=cycle,
                                  deterministic=True)
    if training:
        size = window or max(batch_size, WINDOW_BYTES // image_bytes)
        # One stateless seed pair per window, new each epoch (as the augmentation draws its seeds).
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        # One gather permutes a whole window: unbatching into a per-image shuffle buffer instead took
        # ~40% more CPU per image. One window in flight keeps up with the batches and holds less memory.
        chunks = tf.data.Dataset.zip((chunks.rebatch(size), seeds)).map(
            lambda window_, pair: _permuted(*window_, pair), num_parallel_calls=1, deterministic=True)
    batches = chunks.rebatch(batch_size, drop_remainder=drop_remainder)
    steps = n // batch_size if drop_remainder else -(-n // batch_size)
    return batches.apply(tf.data.experimental.assert_cardinality(steps))  # Keras shows progress, sizes epochs


def _permuted(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Images and labels in one random order drawn from ``seed`` (a stateless seed pair)."""
    order = tf.argsort(tf.random.stateless_uniform(tf.shape(labels), seed))
    return tf.gather(images, order), tf.gather(labels, order)


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


def _parallel_calls(per_core: int = 2) -> int:
    """Elements in flight per map: ``per_core`` times the cores this process may use.

    One per core leaves cores idle while a call waits; for the pipeline alone more than two per core gains
    nothing (``scripts/bench_pipeline.py`` measures the pipeline).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return per_core * max(1, cores)
