"""The image-cache benchmark (``scripts/bench_cache.py``): memory, disk and no cache on a dataset of N files.

The dataset is N symlinks to the CelebA images (cycling through them), with a labels CSV, in a folder
that later runs reuse. Each cache mode runs in a fresh Python process, so its peak resident memory
(VmHWM) is its own: the training pipeline (``make_dataset(training=True)``: decode, resize, cache,
shuffle, batch, float32; no model) for E passes; pass 1 fills the cache. Because the machine is
shared, a last process also builds the two cached modes and times them side by side, round-robin after
one untimed pass each (the disk cache is the one the disk process wrote: a second run reuses it). No
cache decodes every pass, some 30x slower: its passes would only stretch the rounds.

Training, which is what a cache is for: after those pipeline passes (pass 1 filled the cache) each mode's
process builds a small registry model (``TRAIN_BACKBONE`` from scratch, compiled as ``train.py`` compiles)
and times its training steps on the mode's dataset from the next pass on (W warm-up steps, then S timed
ones, Keras's own ``train_function`` on the dataset's iterator, as ``fit`` runs it), so that process's peak
RSS includes the model. The side-by-side process then trains one such model on all three modes in turn,
in short rounds (the order reversed every other round), and each ratio to memory is the median of the
per-round ratios: the neighbours' load, which moves between rounds, cannot skew it. A last fresh process
trains the same model on one batch held in memory (no dataset at all): the model's own peak RSS, which every
mode pays whatever the dataset's size, so the table can say what each cache mode adds to it.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tf_models.benchmarking import cpu_seconds, display_path, machine_info, markdown_table

MODES = ("memory", "disk", "none")
SIDE_BY_SIDE = ("memory", "disk")
PACKAGES = ("tensorflow", "keras")
# MobileNetV2: the registry's smallest real backbone that takes the pipeline's 64x64 (alexnet_bn needs 67x67),
# and a light one on purpose: the lighter the step, the more the input pipeline shows in training img/s.
TRAIN_BACKBONE = "mobilenetv2"
TRAIN_CLASSES = 2
RSS_TARGET_GB = 2.0
SPEED_TARGET = 0.9  # training img/s from pass 2 on, vs memory
_LABELS_FILE = "gender_labels.csv"
_IMAGES_DIR = "img_align_celeba"
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CacheBenchSettings:
    """Which images, how many, at what size, for how many passes."""

    source_dir: Path  # CelebA-style folder: img_align_celeba/ and the labels CSV
    labels_csv: Path | None  # None: source_dir/gender_labels.csv
    x_col: str  # file-name column
    y_col: str  # label column, 0/1
    n: int  # files in the benchmark dataset
    image_size: tuple[int, int]  # (height, width) the pipeline decodes to
    batch_size: int
    epochs: int  # passes per mode process; pass 1 fills the cache
    rounds: int  # side-by-side timed passes of memory and disk, after one untimed pass each
    work_dir: Path  # the dataset of links and the disk cache live here (reused)
    # 300 steps in 20 rounds: the side-by-side ratio is a median of per-round ratios, and this shared machine's
    # speed moves by 2x within minutes (results/cache/cache.csv, train_side_by_side_s): short rounds, many of them.
    train_steps: int = 300  # timed training steps per mode, from pass 2 on
    train_warmup: int = 10  # untimed training steps before them (trace, shuffle buffer)
    train_rounds: int = 20  # side by side: the timed steps of each mode split into this many rounds


@dataclass(frozen=True)
class CacheBenchResult:
    """One row per mode, where the tables went, and the headline (the last line printed)."""

    rows: list[dict]
    csv_path: Path
    md_path: Path
    headline: str


def default_work_dir() -> Path:
    """Where the links and caches go unless told: the system's temporary folder."""
    return Path(tempfile.gettempdir()) / "tf_models_bench_cache"


def build_link_dataset(settings: CacheBenchSettings) -> Path:
    """``work_dir/celeba_<n>/``: ``img_align_celeba/`` with n symlinks and ``gender_labels.csv``. Reused when complete.

    Link i points at source image i mod (number of source images), so a source image appears about
    n / len(source) times under different names: the pipeline reads, decodes and caches each link
    as its own file, as it would n distinct photos of that size. FileNotFoundError without the source.
    """
    folder = settings.work_dir / f"celeba_{settings.n}"
    labels_csv = settings.labels_csv or settings.source_dir / _LABELS_FILE
    image_dir = settings.source_dir / _IMAGES_DIR
    if not labels_csv.is_file() or not image_dir.is_dir():
        raise FileNotFoundError(f"Expected {labels_csv} and {image_dir}/ (see datasets/celeba/README.md).")
    manifest = {"n": settings.n, "source": str(image_dir.resolve()), "labels": str(labels_csv.resolve()),
                "x_col": settings.x_col, "y_col": settings.y_col}
    if (folder / _MANIFEST).is_file() and json.loads((folder / _MANIFEST).read_text()) == manifest:
        return folder
    frame = pd.read_csv(labels_csv, usecols=[settings.x_col, settings.y_col])
    frame = frame[[(image_dir / name).is_file() for name in frame[settings.x_col]]].reset_index(drop=True)
    if frame.empty:
        raise FileNotFoundError(f"None of the images listed in {labels_csv} exist under {image_dir}.")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / _IMAGES_DIR).mkdir(parents=True)
    picks = frame.iloc[[i % len(frame) for i in range(settings.n)]]
    names = [f"{i:06d}.jpg" for i in range(settings.n)]
    source_dir = image_dir.resolve()
    for name, source in zip(names, picks[settings.x_col]):
        os.symlink(source_dir / source, folder / _IMAGES_DIR / name)
    pd.DataFrame({"image_id": names, "label": picks[settings.y_col].astype(int).to_numpy()}).to_csv(
        folder / _LABELS_FILE, index=False)
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=1))  # last: marks the folder complete
    return folder


def measure_mode(dataset_dir: str, mode: str, image_size: list[int], batch_size: int, epochs: int,
                 cache_dir: str, train_steps: int = 0, train_warmup: int = 0) -> dict:
    """One process's run of one cache mode: seconds and CPU seconds per pass, peak and starting RSS.

    Called in a fresh process by :func:`bench_cache` (``python -c``), so the peak memory is this mode's.
    """
    import tensorflow as tf  # noqa: F401  imported before the baseline RSS is read

    from tf_models.data.pipeline import make_dataset

    paths, labels = _read_dataset(Path(dataset_dir))
    cache = {"memory": True, "disk": Path(cache_dir), "none": False}[mode]
    dataset = make_dataset(paths, labels, tuple(image_size), batch_size, training=True, seed=0, cache=cache)
    start_rss = _rss_bytes("VmRSS")
    passes = [_timed_pass(dataset, len(paths)) for _ in range(epochs)]
    result = {"mode": mode, "passes": passes, "start_rss": start_rss, "peak_rss": _rss_bytes("VmHWM")}
    if train_steps > 0:  # the cache is full: train from the next pass on
        model = _training_model(image_size)
        iterator = _train_iterator(dataset, train_warmup + train_steps, len(paths), batch_size)
        _timed_steps(model, iterator, train_warmup, batch_size)
        result["train"] = _timed_steps(model, iterator, train_steps, batch_size)
        result["peak_rss_train"] = _rss_bytes("VmHWM")
    return result


def measure_model_alone(image_size: list[int], batch_size: int, train_steps: int, train_warmup: int) -> dict:
    """The training model on one batch of random pixels held in memory, no dataset: its own peak RSS and img/s.

    Called in a fresh process by :func:`bench_cache`: what training costs before any dataset or cache is added."""
    import tensorflow as tf

    model = _training_model(image_size)
    start_rss = _rss_bytes("VmRSS")
    batch = (tf.random.uniform((batch_size, *image_size, 3), 0, 255, seed=0), tf.zeros((batch_size,), tf.int32))
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    _timed_steps(model, iterator, train_warmup, batch_size)
    train = _timed_steps(model, iterator, train_steps, batch_size)
    return {"start_rss": start_rss, "peak_rss": _rss_bytes("VmHWM"), "train": train}


def measure_side_by_side(dataset_dir: str, image_size: list[int], batch_size: int, rounds: int,
                         cache_dir: str, train_steps: int = 0, train_warmup: int = 0, train_rounds: int = 1) -> dict:
    """Memory and disk in one process: one untimed pass each, then ``rounds`` rounds of one timed pass each.

    With ``train_steps``: then one model trains on memory, disk and none in turn (each from its next pass,
    after ``train_warmup`` untimed steps each), ``train_rounds`` rounds of about train_steps / train_rounds
    timed steps per mode; under ``"train"``, per mode, a list of {seconds, cpu_seconds, images}."""
    from tf_models.data.pipeline import make_dataset

    paths, labels = _read_dataset(Path(dataset_dir))
    datasets = {mode: make_dataset(paths, labels, tuple(image_size), batch_size, training=True, seed=0,
                                   cache={"memory": True, "disk": Path(cache_dir)}[mode])
                for mode in SIDE_BY_SIDE}
    for dataset in datasets.values():
        _timed_pass(dataset, len(paths))
    timings: dict[str, list] = {mode: [] for mode in SIDE_BY_SIDE}
    for _ in range(rounds):
        for mode, dataset in datasets.items():
            timings[mode].append(_timed_pass(dataset, len(paths)))
    if train_steps > 0:
        datasets["none"] = make_dataset(paths, labels, tuple(image_size), batch_size, training=True, seed=0,
                                        cache=False)
        chunk = -(-train_steps // train_rounds)
        model = _training_model(image_size)
        iterators = {mode: _train_iterator(dataset, train_warmup + chunk * train_rounds, len(paths), batch_size)
                     for mode, dataset in datasets.items()}
        for iterator in iterators.values():
            _timed_steps(model, iterator, train_warmup, batch_size)
        timings["train"] = {mode: [] for mode in MODES}
        for round_ in range(train_rounds):
            # Forward, then backward (memory disk none, none disk memory, ...): a machine speeding up or
            # slowing down during a pair of rounds favours no mode.
            for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                timings["train"][mode].append(_timed_steps(model, iterators[mode], chunk, batch_size))
    return timings


def bench_cache(settings: CacheBenchSettings, out_dir: Path, command: str) -> CacheBenchResult:
    """Builds (or reuses) the dataset, measures every mode in its own process, then side by side;
    writes cache.{csv,md} under ``out_dir`` (``command``: what the Markdown says made it)."""
    machine = machine_info(PACKAGES)  # before anything runs, so the load average is the neighbours'
    dataset_dir = build_link_dataset(settings)
    cache_dir = settings.work_dir / f"disk_cache_{settings.n}"
    shutil.rmtree(cache_dir, ignore_errors=True)  # pass 1 of the disk process fills it
    common = {"dataset_dir": str(dataset_dir), "image_size": list(settings.image_size),
              "batch_size": settings.batch_size, "cache_dir": str(cache_dir)}
    training = {"train_steps": settings.train_steps, "train_warmup": settings.train_warmup}
    per_mode = {}
    for mode in MODES:
        print(f"[bench_cache] {mode}: {settings.epochs} passes of {settings.n:,} images, then "
              f"{settings.train_warmup}+{settings.train_steps} {TRAIN_BACKBONE} training steps, in a fresh process",
              flush=True)
        per_mode[mode] = _in_fresh_process("measure_mode", {**common, **training, "mode": mode,
                                                            "epochs": settings.epochs})
    disk_bytes = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
    print(f"[bench_cache] memory and disk side by side: {settings.rounds} rounds after one untimed pass each",
          flush=True)
    side = _in_fresh_process("measure_side_by_side", {**common, **training, "rounds": settings.rounds,
                                                      "train_rounds": settings.train_rounds})
    alone = None
    if settings.train_steps > 0:
        print(f"[bench_cache] the {TRAIN_BACKBONE} training model alone (one batch in memory, no dataset), "
              "in a fresh process", flush=True)
        alone = _in_fresh_process("measure_model_alone", {"image_size": list(settings.image_size),
                                                          "batch_size": settings.batch_size, **training})
    rows = summary_rows(per_mode, side, settings.n, disk_bytes, alone)
    csv_path, md_path = write_results(rows, machine, settings, dataset_dir, out_dir, command, alone)
    return CacheBenchResult(rows, csv_path, md_path, headline(rows, settings, alone))


def summary_rows(per_mode: dict[str, dict], side: dict[str, list], n: int, disk_bytes: int,
                 alone: dict | None = None) -> list[dict]:
    """One row per mode: peak RSS, img/s of pass 1 and later passes, side-by-side img/s, ratios to memory;
    with ``alone`` (:func:`measure_model_alone`), how much each mode's training peak lies above the model's own."""
    rows = []
    side_train = side.get("train", {})
    for mode in MODES:
        passes = per_mode[mode]["passes"]
        later = passes[1:]
        timed = side.get(mode, [])
        train = per_mode[mode].get("train")
        train_side = side_train.get(mode, [])
        rows.append({
            "mode": mode,
            "images": n,
            "peak_rss_gb": round(per_mode[mode]["peak_rss"] / 1e9, 2),
            "rss_before_pass1_gb": round(per_mode[mode]["start_rss"] / 1e9, 2),
            "disk_cache_gb": round(disk_bytes / 1e9, 2) if mode == "disk" else 0.0,
            "pass1_img_per_s": round(n / passes[0]["seconds"], 1),
            "later_img_per_s": round(n / statistics.median(p["seconds"] for p in later), 1),
            "later_cpu_us_per_img": round(1e6 * statistics.median(p["cpu_seconds"] for p in later) / n, 1),
            "side_by_side_img_per_s": round(n / statistics.median(p["seconds"] for p in timed), 1) if timed else None,
            "side_by_side_cpu_us_per_img": (round(1e6 * statistics.median(p["cpu_seconds"] for p in timed) / n, 1)
                                            if timed else None),
            "passes_s": " ".join(f"{p['seconds']:.2f}" for p in passes),
            "side_by_side_s": " ".join(f"{p['seconds']:.2f}" for p in timed),
            "train_backbone": TRAIN_BACKBONE if train else None,
            "peak_rss_train_gb": round(per_mode[mode]["peak_rss_train"] / 1e9, 2) if train else None,
            "peak_rss_train_above_model_gb": (round((per_mode[mode]["peak_rss_train"] - alone["peak_rss"]) / 1e9, 2)
                                              if train and alone else None),
            "train_img_per_s": round(train["images"] / train["seconds"], 1) if train else None,
            "train_cpu_us_per_img": round(1e6 * train["cpu_seconds"] / train["images"], 1) if train else None,
            "train_side_by_side_img_per_s": (round(_per_second(train_side), 1) if train_side else None),
            "train_side_by_side_cpu_us_per_img": (round(1e6 * statistics.median(
                p["cpu_seconds"] / p["images"] for p in train_side), 1) if train_side else None),
            "train_side_by_side_s": " ".join(f"{p['seconds']:.2f}" for p in train_side),
        })
    memory = rows[0]
    for row in rows:
        row["later_vs_memory"] = round(row["later_img_per_s"] / memory["later_img_per_s"], 3)
        row["side_by_side_vs_memory"] = (round(row["side_by_side_img_per_s"] / memory["side_by_side_img_per_s"], 3)
                                         if row["side_by_side_img_per_s"] else None)
        row["train_vs_memory"] = (round(row["train_img_per_s"] / memory["train_img_per_s"], 3)
                                  if row["train_img_per_s"] else None)
        row["train_side_by_side_vs_memory"] = (
            round(_paired_ratio(side_train[row["mode"]], side_train["memory"]), 3)
            if row["train_side_by_side_img_per_s"] else None)
    return rows


def _per_second(chunks: list[dict]) -> float:
    """img/s of the median chunk (chunks of equal steps)."""
    return statistics.median(p["images"] / p["seconds"] for p in chunks)


def _paired_ratio(chunks: list[dict], reference: list[dict]) -> float:
    """Median over rounds of a mode's img/s over the reference's img/s in the same round.

    Each round's two figures were measured within seconds of each other, so the machine's drift between rounds
    (2x within minutes on a shared 2-core machine) cancels, where a ratio of two medians keeps it."""
    return statistics.median((a["images"] / a["seconds"]) / (b["images"] / b["seconds"])
                             for a, b in zip(chunks, reference, strict=True))


def headline(rows: list[dict], settings: CacheBenchSettings, alone: dict | None = None) -> str:
    by = {row["mode"]: row for row in rows}
    height, width = settings.image_size
    pipeline = (f"pipeline-only img/s from pass 2 on vs memory: disk {by['disk']['side_by_side_vs_memory']:.0%} "
                f"(side by side), none {by['none']['later_vs_memory']:.0%}")
    if by["memory"]["train_img_per_s"] is None:  # no training steps asked for
        return (f"{settings.n:,} images at {height}x{width}: peak RSS none {by['none']['peak_rss_gb']:.2f} GB, "
                f"disk {by['disk']['peak_rss_gb']:.2f} GB, memory {by['memory']['peak_rss_gb']:.2f} GB; {pipeline}")
    rss = {m: (by[m]["peak_rss_gb"], by[m]["peak_rss_train_gb"]) for m in ("none", "disk")}
    pipeline_rss_met = all(pipe < RSS_TARGET_GB for pipe, _ in rss.values())
    train_rss_met = all(train < RSS_TARGET_GB for _, train in rss.values())
    model_alone = (f" (the model alone, no dataset: {alone['peak_rss'] / 1e9:.2f} GB; none/disk add "
                   f"{by['none']['peak_rss_train_above_model_gb']:.2f}/{by['disk']['peak_rss_train_above_model_gb']:.2f}"
                   f" GB to it, memory {by['memory']['peak_rss_train_above_model_gb']:.2f})" if alone else "")
    ratios = {m: by[m]["train_side_by_side_vs_memory"] for m in ("disk", "none")}
    speed_met = all(r is not None and r >= SPEED_TARGET for r in ratios.values())

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    return (f"{settings.n:,} images at {height}x{width}: peak RSS none {by['none']['peak_rss_train_gb']:.2f} GB, "
            f"disk {by['disk']['peak_rss_train_gb']:.2f} GB, memory {by['memory']['peak_rss_train_gb']:.2f} GB "
            f"with {TRAIN_BACKBONE} training (pipeline only: none {by['none']['peak_rss_gb']:.2f}, disk "
            f"{by['disk']['peak_rss_gb']:.2f}, memory {by['memory']['peak_rss_gb']:.2f} GB); {pipeline}; "
            f"{TRAIN_BACKBONE} training img/s from pass 2 on vs memory: disk {ratios['disk']:.0%}, none "
            f"{ratios['none']:.0%} (side by side); target: none/disk peak RSS < {RSS_TARGET_GB:g} GB "
            f"{verdict(pipeline_rss_met)} for the pipeline, {verdict(train_rss_met)} with training{model_alone}; "
            f"training img/s "
            f"within {1 - SPEED_TARGET:.0%} of memory {verdict(speed_met)}")


def write_results(rows: list[dict], machine: dict[str, str], settings: CacheBenchSettings, dataset_dir: Path,
                  out_dir: Path, command: str, alone: dict | None = None) -> tuple[Path, Path]:
    """cache.csv and cache.md under ``out_dir``; the Markdown ends with the headline."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "cache.csv", out_dir / "cache.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    later = "pass 2 img/s" if settings.epochs == 2 else f"passes 2-{settings.epochs} img/s"
    table = pd.DataFrame([{
        "mode": r["mode"], "peak RSS GB": r["peak_rss_gb"], "RSS before pass 1 GB": r["rss_before_pass1_gb"],
        "disk cache GB": r["disk_cache_gb"] or "", "pass 1 img/s": f"{r['pass1_img_per_s']:.0f}",
        later: f"{r['later_img_per_s']:.0f}", "vs memory": f"{r['later_vs_memory']:.0%}",
        "CPU-us / img (pass 2+)": r["later_cpu_us_per_img"],
        "side by side img/s": _or_dash(r["side_by_side_img_per_s"], "{:.0f}"),
        "side by side vs memory": _or_dash(r["side_by_side_vs_memory"], "{:.0%}"),
        "side by side CPU-us / img": _or_dash(r["side_by_side_cpu_us_per_img"], "{}"),
    } for r in rows])
    train_table = pd.DataFrame([{
        "mode": r["mode"], "peak RSS GB (with model)": _or_dash(r["peak_rss_train_gb"], "{}"),
        "above the model alone GB": _or_dash(r["peak_rss_train_above_model_gb"], "{}"),
        "train img/s": _or_dash(r["train_img_per_s"], "{:.0f}"), "vs memory": _or_dash(r["train_vs_memory"], "{:.0%}"),
        "CPU-us / img": _or_dash(r["train_cpu_us_per_img"], "{}"),
        "side by side train img/s": _or_dash(r["train_side_by_side_img_per_s"], "{:.0f}"),
        "side by side vs memory": _or_dash(r["train_side_by_side_vs_memory"], "{:.0%}"),
        "side by side CPU-us / img": _or_dash(r["train_side_by_side_cpu_us_per_img"], "{}"),
    } for r in rows])
    chunk = -(-settings.train_steps // max(1, settings.train_rounds))
    height, width = settings.image_size
    source = settings.labels_csv or settings.source_dir / _LABELS_FILE
    lines = [
        "# Image cache: memory vs disk vs none",
        "",
        f"Written by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        *(f"- {k}: {v}" for k, v in machine.items()),
        f"- dataset: {settings.n:,} symlinks to the images of `{display_path(source)}` (cycled), "
        f"in `{dataset_dir.name}/` of the work folder",
        f"- pipeline: `make_dataset(training=True)` at {height}x{width}, batch {settings.batch_size}: read, decode, "
        "resize, cache, shuffle, batch, float32; no model, no augmentation",
        f"- per mode: a fresh process, {settings.epochs} passes (pass 1 fills the cache); peak RSS = the "
        "process's VmHWM, TensorFlow included ('RSS before pass 1': after import and build)",
        f"- side by side: one process, memory and disk built, one untimed pass each, then {settings.rounds} "
        "rounds of one pass each (median), so the neighbours' load hits both alike; none decodes every pass",
        "- CPU-us / img: the process's CPU time per image (all threads): the work, which the neighbours hardly move",
        "",
        "## Pipeline only (no model)",
        "",
        markdown_table(table),
        "",
        f"## Training ({TRAIN_BACKBONE}, from scratch, batch {settings.batch_size}, from pass 2 on)",
        "",
        f"- per mode: in the same fresh process, after its pipeline passes (the cache is full), "
        f"`build_classifier('{TRAIN_BACKBONE}', {TRAIN_CLASSES}, ({height}, {width}), mode='scratch', "
        f"weights='none')` compiled as `train.py` compiles (Adam, clipnorm, cross-entropy, accuracy), "
        f"{settings.train_warmup} untimed steps then {settings.train_steps} timed steps on the mode's next pass "
        "(Keras's `train_function` on the dataset's iterator: `fit`'s own loop); peak RSS: that process's VmHWM "
        "with the model; img/s counts full batches",
        f"- side by side: in the side-by-side process, one model trains on memory, disk and none in turn: "
        f"{settings.train_warmup} untimed steps each, then {settings.train_rounds} rounds of {chunk} steps per "
        "mode, the order reversed every other round; img/s: the median round; vs memory: the median over rounds "
        "of the mode's img/s over memory's in the same round (the machine's drift between rounds cancels)",
        *([f"- the model alone: a fresh process trains the same model on one batch of random pixels held in memory "
           f"(no dataset, no cache): peak RSS {alone['peak_rss'] / 1e9:.2f} GB (after build: "
           f"{alone['start_rss'] / 1e9:.2f}), {alone['train']['images'] / alone['train']['seconds']:.0f} img/s. "
           "Every mode pays this whatever the dataset's size; 'above the model alone' is what the mode's "
           "pipeline and cache add to it"] if alone else []),
        f"- target: none/disk peak RSS under {RSS_TARGET_GB:g} GB, and training img/s from pass 2 on within "
        f"{1 - SPEED_TARGET:.0%} of memory's (side by side)",
        "",
        markdown_table(train_table),
        "",
        headline(rows, settings, alone),
        "",
    ]
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return csv_path, md_path


def _or_dash(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def _in_fresh_process(function: str, kwargs: dict) -> dict:
    """Runs ``function(**kwargs)`` of this module in a new Python process; its JSON result."""
    code = (f"import json, sys; from tf_models.bench.cache import {function}; "
            f"print('\\n' + json.dumps({function}(**json.loads(sys.argv[1]))))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    # The package may be run from a checkout without being installed: the child imports the same one.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{function}({kwargs}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _read_dataset(folder: Path) -> tuple[list[str], list[int]]:
    frame = pd.read_csv(folder / _LABELS_FILE)
    return [str(folder / _IMAGES_DIR / name) for name in frame["image_id"]], frame["label"].astype(int).tolist()


def _timed_pass(dataset, n: int) -> dict:
    seen = 0
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for _, labels in dataset:
        seen += int(labels.shape[0])
    if seen != n:
        raise RuntimeError(f"a pass yielded {seen} images, expected {n}")
    return {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu_start}


def _training_model(image_size: list[int]):
    """``TRAIN_BACKBONE`` from scratch, compiled with the optimiser, loss and metric ``train.py`` uses."""
    import keras

    from tf_models.config import TrainConfig
    from tf_models.models.classifier import build_classifier
    from tf_models.models.losses import SparseCrossentropy

    keras.utils.set_random_seed(0)
    defaults = TrainConfig()
    model = build_classifier(TRAIN_BACKBONE, TRAIN_CLASSES, tuple(image_size), mode="scratch", weights="none")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=defaults.lr, clipnorm=defaults.clipnorm),
                  loss=SparseCrossentropy(TRAIN_CLASSES, defaults.label_smoothing), metrics=["accuracy"])
    model.make_train_function()
    return model


def _train_iterator(dataset, steps: int, n: int, batch_size: int):
    """The dataset's next pass as ``fit`` iterates it; repeated only when ``steps`` outrun one pass (tiny n)."""
    return iter(dataset if steps <= n // batch_size else dataset.repeat())


def _timed_steps(model, iterator, steps: int, batch_size: int) -> dict:
    """``steps`` training steps as ``fit`` runs them (``train_function(iterator)``); waits for the last one."""
    start, cpu_start = time.perf_counter(), cpu_seconds()
    logs = None
    for _ in range(steps):
        logs = model.train_function(iterator)
    if logs is not None:
        float(logs["loss"])
    return {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu_start,
            "images": steps * batch_size}


def _rss_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc; elsewhere the peak from getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux kB
