"""Input-pipeline benchmark: legacy ``ImageDataGenerator`` vs the tf.data pipeline with fused augmentation.

One run, the same N CelebA images, typical notebook settings (rotation 15, width/height shift
0.1, shear 0.1, zoom 0.2, horizontal flip, rescale 1/255, 218x178, batch 128):

1. legacy: ``tf_keras`` ``ImageDataGenerator.flow_from_dataframe`` (PIL + scipy, one image at a time);
2. ours: ``tf_models.data.pipeline.make_dataset(..., augment=AugmentConfig.from_dict(same settings))``;
3. context: decode-only, the cached pipeline, nearest interpolation, and augmentation alone.

Every variant is timed over full passes of N images after a warm-up pass (tf.data: the warm-up
traces the functions and, for the cached variant, fills the cache); variants are interleaved
round-robin and the median of ``--repeats`` passes is reported, because other jobs share the
machine. CPU time per image is reported too: it measures the work and barely moves with the load. Writes
``results/pipeline/bench_pipeline.{csv,md}``; the last line printed is the headline ratio.

    python scripts/bench_pipeline.py --n 2048
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]

import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from tf_models.data.augment import REFERENCE_GENERATOR_ARGS, AugmentConfig, RescaleIgnoredWarning, build_augmenter
from tf_models.benchmarking import cpu_seconds, display_path, machine_info
from tf_models.data.pipeline import make_dataset

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "celeba"
IMAGE_SIZE = (218, 178)  # (height, width): CelebA's aligned crops, no resizing needed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder with img_align_celeba/ and the labels CSV (default: %(default)s)",
    )
    parser.add_argument(
        "--labels-csv", type=Path, default=None, help="labels CSV (default: DATA_DIR/gender_labels.csv)"
    )
    parser.add_argument("--x-col", default="image_id", help="file-name column (default: %(default)s)")
    parser.add_argument("--y-col", default="Male", help="label column, 0/1 (default: %(default)s)")
    parser.add_argument("--n", type=int, default=2048, help="images per pass (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per variant; median reported")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "pipeline")
    return parser.parse_args(argv)


def load_files(data_dir: Path, labels_csv: Path | None, x_col: str, y_col: str, n: int) -> pd.DataFrame:
    """The first ``n`` labelled images that exist on disk, with absolute paths."""
    labels_csv = labels_csv or data_dir / "gender_labels.csv"
    image_dir = data_dir / "img_align_celeba"
    if not labels_csv.is_file() or not image_dir.is_dir():
        raise SystemExit(f"Expected {labels_csv} and {image_dir}/ (see datasets/celeba/README.md).")
    frame = pd.read_csv(labels_csv, usecols=[x_col, y_col])
    frame = frame[[(image_dir / name).is_file() for name in frame[x_col]]].head(n).reset_index(drop=True)
    if len(frame) < n:
        raise SystemExit(f"Only {len(frame)} of the requested {n} images exist under {image_dir}.")
    frame["path"] = [str(image_dir / name) for name in frame[x_col]]
    frame["label"] = frame[y_col].astype("int32")
    return frame


def timed_pass(label: str, make_pass: Callable[[], Iterable], n: int) -> tuple[float, float]:
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


def run_round_robin(
    passes: dict[str, Callable[[], Iterable]], n: int, repeats: int
) -> dict[str, list[tuple]]:
    """One untimed warm-up pass per variant, then ``repeats`` rounds of one timed pass each.

    Interleaving the variants spreads slow drifts in the neighbours' load over all of them alike.
    """
    for key, make_pass in passes.items():
        timed_pass(f"{key} (warm-up)", make_pass, n)
    timings: dict[str, list[tuple]] = {key: [] for key in passes}
    for round_index in range(1, repeats + 1):
        for key, make_pass in passes.items():
            timings[key].append(timed_pass(f"{key} ({round_index}/{repeats})", make_pass, n))
    return timings


def legacy_variant(frame: pd.DataFrame, data_dir: Path, x_col: str, batch_size: int):
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


def dataset_pass(dataset: tf.data.Dataset) -> Callable[[], Iterable]:
    def one_pass():
        for images, _ in dataset:
            yield images

    return one_pass


def augment_only_pass(config: AugmentConfig, n: int, batch_size: int, *, kernel: bool = False
                      ) -> Callable[[], Iterable]:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info(("tensorflow", "keras", "tf_keras"))  # before anything runs, so the load average is the neighbours'
    frame = load_files(args.data_dir, args.labels_csv, args.x_col, args.y_col, args.n)
    variants = pipeline_variants(frame, args)
    timings = run_round_robin({key: factory() for key, _, factory in variants}, args.n, args.repeats)
    rows = summary_rows(variants, timings, args.n, args.batch_size, int(machine["cores"]))
    csv_path, md_path = write_results(rows, machine, args)
    print(f"wrote {display_path(csv_path)} and {md_path.name}")
    legacy_rate, legacy_ceiling = rows[0]["img_per_s"], rows[0]["idle_ceiling_img_per_s"]
    ours = rows[1]
    print(
        "idle-machine ceiling (cores / CPU-ms): augmented pipeline "
        f"{ours['idle_ceiling_img_per_s']:.0f} img/s vs legacy {legacy_ceiling:.0f} img/s "
        f"= {ours['ceiling_vs_legacy']:.1f}x"
    )
    print(
        f"augmented pipeline: {ours['img_per_s']:.0f} img/s vs legacy ImageDataGenerator "
        f"{legacy_rate:.0f} img/s = {ours['vs_legacy']:.1f}x"
    )
    return 0


def pipeline_variants(frame: pd.DataFrame, args: argparse.Namespace) -> list[tuple[str, str, Callable]]:
    """(key, description, pass factory) of every variant, legacy first, then the tf.data pipeline's."""
    paths, labels = frame["path"].tolist(), frame["label"].tolist()
    n, batch_size = args.n, args.batch_size
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
            lambda: legacy_variant(frame, args.data_dir, args.x_col, batch_size),
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


def summary_rows(variants: list[tuple[str, str, Callable]], timings: dict[str, list[tuple]], n: int,
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


def write_results(rows: list[dict], machine: dict[str, str], args: argparse.Namespace) -> tuple[Path, Path]:
    """bench_pipeline.csv and bench_pipeline.md under ``args.out_dir``."""
    n, batch_size, repeats = args.n, args.batch_size, args.repeats
    cores = int(machine["cores"])
    load_end = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = args.out_dir / "bench_pipeline.csv", args.out_dir / "bench_pipeline.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in REFERENCE_GENERATOR_ARGS.items()
    )
    lines = [
        "# Input pipeline: legacy ImageDataGenerator vs tf.data + fused augmentation",
        "",
        f"Written by `scripts/bench_pipeline.py --n {n} --batch-size {batch_size} --repeats {repeats}` "
        f"on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        *(f"- {k}: {v}" for k, v in machine.items()),
        f"- images: first {n} of `{display_path(args.labels_csv or args.data_dir / 'gender_labels.csv')}` "
        f"({IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG), batch {batch_size}",
        f"- augmentation (both pipelines): {settings} (rescale is ignored by ours: models preprocess inside)",
        f"- timing: median of {repeats} full passes of {n} images after one warm-up pass, variants "
        "interleaved round-robin",
        f"- load average at end (1/5/15 min): {load_end} (this machine is shared: wall-clock img/s "
        "depends on how many cores the neighbours left free)",
        "",
        "| variant | img/s | vs legacy | median s / pass | CPU-ms / img | idle-machine ceiling img/s "
        "| ceiling vs legacy | what |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {r['variant']} | {r['img_per_s']:.0f} | {r['vs_legacy']:.2f}x | {r['median_s']:.2f} | "
            f"{r['cpu_ms_per_img']:.2f} | {r['idle_ceiling_img_per_s']:.0f} | "
            f"{r['ceiling_vs_legacy']:.2f}x | {r['description']} |"
            for r in rows
        ),
        "",
        "CPU-ms / img is the process's CPU time (all threads) per image: the work each variant does, "
        "which other jobs on the machine hardly change, while img/s depends on how many cores were free. "
        f"The idle-machine ceiling is {cores} cores / CPU-ms for the tf.data variants and 1 core / CPU-ms "
        "for legacy (its iterator runs in one Python thread): an upper bound on this machine when idle.",
        "",
    ]
    md_path.write_text("\n".join(lines))
    return csv_path, md_path


if __name__ == "__main__":
    sys.exit(main())
