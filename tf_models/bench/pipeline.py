"""The input-pipeline benchmark (``scripts/bench_pipeline.py``): legacy ``ImageDataGenerator`` vs the
tf.data pipeline with fused augmentation, on the same CelebA images and the reference notebook settings.

Every variant is timed over full passes of N images after a warm-up pass (tf.data: the warm-up
traces the functions and, for the cached variant, fills the cache); variants are interleaved
round-robin and the median of the passes is reported, because other jobs share the machine. CPU
time per image is reported too: it measures the work and barely moves with the load.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from tf_models.benchmarking import cpu_seconds, display_path, machine_info
from tf_models.data.augment import (
    REFERENCE_GENERATOR_ARGS,
    AugmentConfig,
    RescaleIgnoredWarning,
    build_augmenter,
)
from tf_models.data.pipeline import make_dataset

IMAGE_SIZE = (218, 178)  # (height, width): CelebA's aligned crops, no resizing needed
PACKAGES = ("tensorflow", "keras", "tf_keras")

Timing = tuple[float, float]  # (wall seconds, CPU seconds) of one pass
PassFactory = Callable[[], Iterable]  # a new full pass over the images at each call
Variant = tuple[str, str, Callable[[], PassFactory]]  # (key, description, pass factory maker)


@dataclass(frozen=True)
class PipelineSettings:
    """Which images, how many, in what batches, how many timed passes."""

    data_dir: Path  # folder with img_align_celeba/ and the labels CSV
    labels_csv: Path | None  # None: data_dir/gender_labels.csv
    x_col: str  # file-name column
    y_col: str  # label column, 0/1
    n: int  # images per pass
    batch_size: int
    repeats: int  # timed passes per variant; the median is reported


@dataclass(frozen=True)
class PipelineResult:
    """One row per variant (legacy first, then ours), where the tables went, and the two headline lines."""

    rows: list[dict]
    csv_path: Path
    md_path: Path
    ceiling: str  # the idle-machine ceiling ratio
    headline: str  # the wall-clock ratio: the last line printed


def load_files(data_dir: Path, labels_csv: Path | None, x_col: str, y_col: str, n: int) -> pd.DataFrame:
    """The first ``n`` labelled images that exist on disk, with absolute paths.

    FileNotFoundError when the labels or the image folder are missing, or fewer than ``n`` images exist.
    """
    labels_csv = labels_csv or data_dir / "gender_labels.csv"
    image_dir = data_dir / "img_align_celeba"
    if not labels_csv.is_file() or not image_dir.is_dir():
        raise FileNotFoundError(f"Expected {labels_csv} and {image_dir}/ (see datasets/celeba/README.md).")
    frame = pd.read_csv(labels_csv, usecols=[x_col, y_col])
    frame = frame[[(image_dir / name).is_file() for name in frame[x_col]]].head(n).reset_index(drop=True)
    if len(frame) < n:
        raise FileNotFoundError(f"Only {len(frame)} of the requested {n} images exist under {image_dir}.")
    frame["path"] = [str(image_dir / name) for name in frame[x_col]]
    frame["label"] = frame[y_col].astype("int32")
    return frame


def timed_pass(label: str, make_pass: PassFactory, n: int) -> Timing:
    """(wall seconds, CPU seconds) for one full pass of ``n`` images."""
    seen = 0
    start, cpu_start = time.perf_counter(), cpu_seconds()
    with tqdm(total=n, desc=label, unit="img", leave=False, file=sys.stderr) as bar:
        for batch in make_pass():
            size = len(batch)
            seen += size
            bar.update(size)
    elapsed, cpu_used = time.perf_counter() - start, cpu_seconds() - cpu_start
    if seen != n:
        raise RuntimeError(f"{label}: a pass yielded {seen} images, expected {n}")
    return elapsed, cpu_used


def run_round_robin(passes: dict[str, PassFactory], n: int, repeats: int) -> dict[str, list[Timing]]:
    """One untimed warm-up pass per variant, then ``repeats`` rounds of one timed pass each.

    Interleaving the variants spreads slow drifts in the neighbours' load over all of them alike.
    """
    for key, make_pass in passes.items():
        timed_pass(f"{key} (warm-up)", make_pass, n)
    timings: dict[str, list[Timing]] = {key: [] for key in passes}
    for round_index in range(1, repeats + 1):
        for key, make_pass in passes.items():
            timings[key].append(timed_pass(f"{key} ({round_index}/{repeats})", make_pass, n))
    return timings


def legacy_variant(frame: pd.DataFrame, data_dir: Path, x_col: str, batch_size: int) -> PassFactory:
    """ImageDataGenerator.flow_from_dataframe exactly as the reference notebooks used it."""
    from tf_keras.preprocessing.image import ImageDataGenerator

    frame = frame.assign(label_str=frame["label"].astype(str))  # class_mode='binary' wants strings
    generator = ImageDataGenerator(**REFERENCE_GENERATOR_ARGS)
    iterator = generator.flow_from_dataframe(
        frame,
        directory=str(data_dir / "img_align_celeba"),
        x_col=x_col,
        y_col="label_str",
        target_size=IMAGE_SIZE,
        batch_size=batch_size,
        class_mode="binary",
        seed=0,
    )
    batches = math.ceil(len(frame) / batch_size)

    def one_pass():
        # A Keras Sequence: index it, so each pass is exactly one epoch of len(frame) images.
        for index in range(batches):
            images, _ = iterator[index]
            yield images
        iterator.on_epoch_end()

    return one_pass


def dataset_pass(dataset: tf.data.Dataset) -> PassFactory:
    """A pass over ``dataset``'s image batches (labels dropped)."""
    def one_pass():
        for images, _ in dataset:
            yield images

    return one_pass


def augment_only_pass(config: AugmentConfig, n: int, batch_size: int, *, kernel: bool = False) -> PassFactory:
    """Augmentation alone on an in-memory batch: the ceiling the pipeline could reach if decode were free.

    ``kernel=True`` traces the augmenter for images of unknown height and width, the case where it
    resamples with TensorFlow's ``ImageProjectiveTransformV3`` instead of the XLA sampler (which
    needs static sizes): the same augmentation through the kernel, for comparison.
    """
    size = [None, None] if kernel else list(IMAGE_SIZE)
    augment = tf.function(build_augmenter(config),
                          input_signature=[tf.TensorSpec([None, *size, 3]), tf.TensorSpec([2], tf.int64)])
    batch = tf.random.stateless_uniform([batch_size, *IMAGE_SIZE, 3], seed=[0, 0], maxval=255.0)
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])

    def one_pass():
        for step, size in enumerate(sizes):
            yield augment(batch[:size], tf.constant([step, 0], tf.int64)).numpy()

    return one_pass


def pipeline_variants(frame: pd.DataFrame, settings: PipelineSettings) -> list[Variant]:
    """(key, description, pass factory) of every variant, legacy first, then the tf.data pipeline's."""
    paths, labels = frame["path"].tolist(), frame["label"].tolist()
    n, batch_size = settings.n, settings.batch_size
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", RescaleIgnoredWarning
        )  # by design: rescale is pasted in, never applied
        config = AugmentConfig.from_dict(REFERENCE_GENERATOR_ARGS)
    nearest = AugmentConfig.from_dict({**REFERENCE_GENERATOR_ARGS, "rescale": None, "interpolation_order": 0})
    source = "tf_models.data.pipeline.make_dataset"

    def pipeline(augment: AugmentConfig | None, training: bool = True, cache: bool = False):
        kwargs = {"cache": True} if cache else {}
        return dataset_pass(
            make_dataset(
                paths, labels, IMAGE_SIZE, batch_size, training=training, augment=augment, seed=0, **kwargs
            )
        )

    variants = [  # (key, description, pass factory)
        (
            "legacy",
            "tf_keras ImageDataGenerator.flow_from_dataframe (PIL + scipy, bilinear)",
            lambda: legacy_variant(frame, settings.data_dir, settings.x_col, batch_size),
        ),
        ("ours", f"{source}, fused augmentation (bilinear), no cache", lambda: pipeline(config)),
        (
            "ours_nearest",
            f"{source}, fused augmentation, interpolation_order=0 (nearest), no cache",
            lambda: pipeline(nearest),
        ),
        (
            "ours_cached",
            f"{source}, fused augmentation (bilinear), decoded images cached in memory (what every epoch after the first costs in training)",
            lambda: pipeline(config, cache=True),
        ),
        (
            "ours_cached_nearest",
            f"{source}, fused augmentation, interpolation_order=0 (nearest), decoded images cached in memory",
            lambda: pipeline(nearest, cache=True),
        ),
        (
            "decode_only",
            f"{source}, training=False: read + decode (+ resize if sizes differ) + batch, no augmentation",
            lambda: pipeline(None, training=False),
        ),
        (
            "augment_only",
            "build_augmenter on an in-memory batch (bilinear), no I/O",
            lambda: augment_only_pass(config, n, batch_size),
        ),
        (
            "augment_only_kernel",
            "the same, resampled by TensorFlow's ImageProjectiveTransformV3 kernel instead of the XLA sampler",
            lambda: augment_only_pass(config, n, batch_size, kernel=True),
        ),
    ]
    return variants


def summary_rows(variants: list[Variant], timings: dict[str, list[Timing]], n: int,
                 batch_size: int, cores: int) -> list[dict]:
    """One row per variant: median img/s, CPU-ms per image, idle-machine ceiling, ratios to legacy."""
    repeats = len(next(iter(timings.values())))
    rows = []
    for key, description, _ in variants:
        seconds = [wall for wall, _ in timings[key]]
        median = statistics.median(seconds)
        cpu_ms = 1e3 * statistics.median(cpu for _, cpu in timings[key]) / n
        rows.append(
            {
                "variant": key,
                "description": description,
                "images": n,
                "batch_size": batch_size,
                "median_s": round(median, 3),
                "img_per_s": round(n / median, 1),
                "cpu_ms_per_img": round(cpu_ms, 3),
                "runs_s": " ".join(f"{s:.3f}" for s in seconds),
            }
        )
        print(
            f"{key:>24}: {n / median:8.1f} img/s  (median of {repeats} passes: {median:.2f} s; "
            f"{cpu_ms:.2f} CPU-ms/img)",
            flush=True,
        )
    # What each variant would reach with every core free: the legacy iterator runs in one Python
    # thread, tf.data spreads over all cores. An upper bound, but one the neighbours cannot move.
    for row in rows:
        usable = 1 if row["variant"] == "legacy" else cores
        row["idle_ceiling_img_per_s"] = round(1e3 * usable / row["cpu_ms_per_img"], 1)
    legacy_rate, legacy_ceiling = rows[0]["img_per_s"], rows[0]["idle_ceiling_img_per_s"]
    for row in rows:
        row["vs_legacy"] = round(row["img_per_s"] / legacy_rate, 2)
        row["ceiling_vs_legacy"] = round(row["idle_ceiling_img_per_s"] / legacy_ceiling, 2)

    return rows


def write_results(rows: list[dict], machine: dict[str, str], settings: PipelineSettings, out_dir: Path,
                  command: str) -> tuple[Path, Path]:
    """bench_pipeline.csv and bench_pipeline.md under ``out_dir`` (``command``: what the Markdown says made it)."""
    n, batch_size, repeats = settings.n, settings.batch_size, settings.repeats
    cores = int(machine["cores"])
    load_end = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "bench_pipeline.csv", out_dir / "bench_pipeline.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    generator_settings = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in REFERENCE_GENERATOR_ARGS.items()
    )
    labels_csv = settings.labels_csv or settings.data_dir / "gender_labels.csv"
    lines = [
        "# Input pipeline: legacy ImageDataGenerator vs tf.data + fused augmentation",
        "",
        f"Written by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        *(f"- {k}: {v}" for k, v in machine.items()),
        (f"- images: first {n} of `{display_path(labels_csv)}` "
         f"({IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG), batch {batch_size}"),
        f"- augmentation (both pipelines): {generator_settings} (rescale is ignored by ours: models preprocess inside)",
        (f"- timing: median of {repeats} full passes of {n} images after one warm-up pass, variants "
         "interleaved round-robin"),
        (f"- load average at end (1/5/15 min): {load_end} (this machine is shared: wall-clock img/s "
         "depends on how many cores the neighbours left free)"),
        "",
        ("| variant | img/s | vs legacy | median s / pass | CPU-ms / img | idle-machine ceiling img/s "
         "| ceiling vs legacy | what |"),
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {r['variant']} | {r['img_per_s']:.0f} | {r['vs_legacy']:.2f}x | {r['median_s']:.2f} | "
            f"{r['cpu_ms_per_img']:.2f} | {r['idle_ceiling_img_per_s']:.0f} | "
            f"{r['ceiling_vs_legacy']:.2f}x | {r['description']} |"
            for r in rows
        ),
        "",
        ("CPU-ms / img is the process's CPU time (all threads) per image: the work each variant does, "
         "which other jobs on the machine hardly change, while img/s depends on how many cores were free. "
         f"The idle-machine ceiling is {cores} cores / CPU-ms for the tf.data variants and 1 core / CPU-ms "
         "for legacy (its iterator runs in one Python thread): an upper bound on this machine when idle."),
        "",
    ]
    md_path.write_text("\n".join(lines))
    return csv_path, md_path


def bench_pipeline(settings: PipelineSettings, out_dir: Path, command: str) -> PipelineResult:
    """Times every variant round-robin on the same images; writes bench_pipeline.{csv,md} under ``out_dir``.

    FileNotFoundError (from :func:`load_files`) when the images are not there.
    """
    machine = machine_info(PACKAGES)  # before anything runs, so the load average is the neighbours'
    frame = load_files(settings.data_dir, settings.labels_csv, settings.x_col, settings.y_col, settings.n)
    variants = pipeline_variants(frame, settings)
    timings = run_round_robin({key: factory() for key, _, factory in variants}, settings.n, settings.repeats)
    rows = summary_rows(variants, timings, settings.n, settings.batch_size, int(machine["cores"]))
    csv_path, md_path = write_results(rows, machine, settings, out_dir, command)
    legacy_rate, legacy_ceiling = rows[0]["img_per_s"], rows[0]["idle_ceiling_img_per_s"]
    ours = rows[1]
    ceiling = ("idle-machine ceiling (cores / CPU-ms): augmented pipeline "
               f"{ours['idle_ceiling_img_per_s']:.0f} img/s vs legacy {legacy_ceiling:.0f} img/s "
               f"= {ours['ceiling_vs_legacy']:.1f}x")
    headline = (f"augmented pipeline: {ours['img_per_s']:.0f} img/s vs legacy ImageDataGenerator "
                f"{legacy_rate:.0f} img/s = {ours['vs_legacy']:.1f}x")
    return PipelineResult(rows, csv_path, md_path, ceiling, headline)
