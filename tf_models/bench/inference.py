"""The inference-time benchmark (``scripts/bench_inference.py``): every backbone, every runtime, side by side.

For each backbone at its registry default input size (random weights: timing does not depend on
them; 2 classes, the default head; ``onnx-int8`` calibrates its activation ranges on sample faces
resized to the input, so they are realistic) and each runtime of :mod:`tf_models.serve.runtimes`
(the code the Predictor serves with): parameters, model size on disk, single-image latency p50/p90
after warm-up, and throughput at a batch size. ``keras-predict`` (``model.predict`` on one image) is
the baseline; ``speedup`` is its p50 over the runtime's. Runtimes are timed interleaved, call by
call, so load from other processes hits them alike.
"""

from __future__ import annotations

import csv
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tf_models.benchmarking import machine_info, percentiles
from tf_models.models.backbones import get_backbone
from tf_models.models.classifier import build_classifier, with_embedding
from tf_models.runs import MODEL_FILE
from tf_models.serve.export import MODEL_FILES
from tf_models.serve.runtimes import EXPORTED_RUNTIMES
from tf_models.serve.serving import (
    CANDIDATE_RUNTIMES,
    EMBEDDER_CANDIDATES,
    fastest,
    make_runtime,
    time_runtimes,
)

WARMUP = 3
CALIBRATION_FACES = 32  # onnx-int8 activation ranges; timing does not depend on how many
TARGET_RATIO = 5.0  # the served path must be at least this many times faster than model.predict
FACE_TARGET_MS = 10.0  # a face embedder serves one face (with its mirror view) within this on 2 cores
PACKAGES = ("tensorflow", "keras", "numpy", "onnxruntime", "tf2onnx", "onnx", "ai-edge-litert")
COLUMNS = ("backbone", "input", "params", "keras_mb", "runtime", "file_mb", "p50_ms", "p90_ms",
           "batch", "images_per_s", "speedup", "served", "note")


@dataclass(frozen=True)
class InferenceSettings:
    """What is measured: registry backbones x runtime names, and how often."""

    backbones: list[str]
    runtimes: list[str]
    batch: int  # batch size of the throughput measurement
    repeats: int  # timed single-image calls per runtime
    batch_repeats: int  # timed batches per runtime
    face_embedder: bool = False  # the shipped face embedders (weights="faces") instead of random classifiers


def calibration_faces(sample_dir: Path, input_size: tuple[int, int], count: int = CALIBRATION_FACES) -> np.ndarray:
    """The first ``count`` JPEGs under ``sample_dir`` resized to the model input (float32 0..255): int8 calibration."""
    from tf_models.faces.framing import resize_to_input
    from tf_models.images import read_image

    files = sorted(sample_dir.rglob("*.jpg"))[:count]
    return resize_to_input(np.stack([read_image(f) for f in files]), input_size)


def _without_local_paths(message: str, workdir: Path) -> str:
    """An error message for the committed table: this machine's temporary folders named, not spelled out."""
    for folder, name in ((str(workdir), "WORKDIR"), (tempfile.gettempdir(), "TMPDIR")):
        message = message.replace(folder, name)
    return message


def bench_backbone(name: str, runtimes: list[str], batch: int, repeats: int, batch_repeats: int,
                   workdir: Path, calibration_dir: Path, *, face_embedder: bool = False) -> list[dict]:
    """One row per runtime for backbone ``name`` (int8 calibrated on the faces in ``calibration_dir``).

    ``face_embedder``: the shipped face embedder of ``name`` (``weights="faces"``, the mirror view, as the
    app serves it) instead of a random-weight classifier; "served" is then the fastest of
    :data:`~tf_models.serve.serving.EMBEDDER_CANDIDATES` (float32 only, as for embedders).
    """
    import keras

    keras.backend.clear_session()
    spec = get_backbone(name)
    if face_embedder:
        from tf_models.models.face_embedder import build_face_embedder

        model, candidates = build_face_embedder(name), EMBEDDER_CANDIDATES
    else:
        model, candidates = build_classifier(name, 2, spec.default_input, mode="scratch", weights="none"), CANDIDATE_RUNTIMES
    input_size = tuple(int(v) for v in model.input_shape[1:3])
    serving = with_embedding(model)
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)
    keras_mb = (folder / MODEL_FILE).stat().st_size / 2**20
    representative = calibration_faces(calibration_dir, input_size) if "onnx-int8" in runtimes else None
    engines, failed = {}, {}
    for runtime in runtimes:  # each exported runtime in its own folder: two ONNX files must not collide
        (folder / runtime).mkdir(exist_ok=True)
        try:
            engines[runtime] = make_runtime(runtime, serving, folder / runtime, representative=representative)
        except Exception as err:  # noqa: BLE001  a converter that cannot take this model: reported, not fatal
            failed[runtime] = f"{type(err).__name__}: {_without_local_paths(str(err).splitlines()[0], workdir)[:160]}"
            tqdm.write(f"{name}/{runtime}: could not be built ({failed[runtime]})")
    rng = np.random.default_rng(0)
    one = rng.uniform(0, 255, (1, *input_size, 3)).astype(np.float32)
    many = rng.uniform(0, 255, (batch, *input_size, 3)).astype(np.float32)

    for engine in engines.values():  # the batch path warms up too (ONNX Runtime plans per shape)
        engine(many)
    single = time_runtimes(engines, one, warmup=WARMUP, repeats=repeats)  # what the served choice uses
    batched: dict[str, list[float]] = {r: [] for r in engines}
    for _ in range(batch_repeats):
        for runtime, engine in engines.items():
            start = time.perf_counter()
            engine(many)
            batched[runtime].append(time.perf_counter() - start)

    baseline = statistics.median(single["keras-predict"]) if "keras-predict" in single else None
    medians = {r: statistics.median(single[r]) for r in engines if r in candidates}
    served = fastest(medians) if medians else None  # e.g. --runtimes keras-predict alone
    common = {"backbone": name, "input": "x".join(map(str, input_size)), "params": int(model.count_params()),
              "keras_mb": round(keras_mb, 1), "batch": batch}
    rows = [{**common, "runtime": runtime, "file_mb": "", "p50_ms": "", "p90_ms": "", "images_per_s": "",
             "speedup": "", "served": False, "note": note} for runtime, note in failed.items()]
    for runtime in engines:
        exported = EXPORTED_RUNTIMES.get(runtime)
        file_path = folder / runtime / MODEL_FILES[exported[0]] if exported else folder / MODEL_FILE
        p50 = statistics.median(single[runtime])
        rows.append({
            **common, "runtime": runtime, "file_mb": round(file_path.stat().st_size / 2**20, 1),
            "p50_ms": round(p50, 2), "p90_ms": round(percentiles(single[runtime])["p90_ms"], 2),
            "images_per_s": round(batch / statistics.median(batched[runtime]), 1),
            "speedup": round(baseline / p50, 2) if baseline else "", "served": runtime == served,
            "note": "not served for an embedder" if face_embedder and runtime not in (*candidates, "keras-predict")
            else "",
        })
    return sorted(rows, key=lambda row: runtimes.index(row["runtime"]))


def served_headline(rows: list[dict], info: dict[str, str]) -> str:
    """The served path (per backbone, the fastest candidate runtime) against model.predict, and the worst backbone."""
    served_rows = [r for r in rows if r["served"] and r["speedup"] != ""]
    if not served_rows:
        return "served path or keras-predict not measured: no ratio"
    worst = min(served_rows, key=lambda r: r["speedup"])
    met = sum(r["speedup"] >= TARGET_RATIO for r in served_rows)
    chosen = sorted({f"{r['runtime']} x{sum(s['runtime'] == r['runtime'] for s in served_rows)}" for r in served_rows})
    return (f"served path (fastest runtime per backbone on {info['cpu']} [{info['cpu flags (speed-relevant)']}]: "
            f"{', '.join(chosen)}) single-image p50 vs model.predict: "
            f"{min(r['speedup'] for r in served_rows):.1f}x-{max(r['speedup'] for r in served_rows):.1f}x "
            f"faster; worst {worst['backbone']} ({worst['p50_ms']:.1f} ms vs "
            f"{worst['p50_ms'] * worst['speedup']:.1f} ms); target >= {TARGET_RATIO:.0f}x met for "
            f"{met}/{len(served_rows)} backbones")


def face_embedder_headline(rows: list[dict], info: dict[str, str]) -> str:
    """Per shipped face embedder: the served runtime's milliseconds per face against the target."""
    parts = []
    for row in (r for r in rows if r["served"]):
        compiled = next((r for r in rows if r["backbone"] == row["backbone"] and r["runtime"] == "compiled"), None)
        parts.append(f"{row['backbone']} {row['input']}: {row['runtime']} {row['p50_ms']:.1f} ms a face"
                     + (f" (compiled {compiled['p50_ms']:.1f} ms)" if compiled and compiled is not row else "")
                     + f", target <= {FACE_TARGET_MS:g} ms: {'met' if row['p50_ms'] <= FACE_TARGET_MS else 'not met'}")
    return (f"face embedder served on {info['cpu']} [{info['cpu flags (speed-relevant)']}], one face with its "
            f"mirror view: " + ("; ".join(parts) or "no served runtime measured"))


def write_csv(rows: list[dict], info: dict[str, str], path: Path) -> None:
    """bench_inference.csv: the machine as ``#`` comment lines, then one row per backbone and runtime."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        handle.write("".join(f"# {key}: {value}\n" for key, value in info.items()))
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(rows: list[dict], info: dict[str, str], settings: InferenceSettings,
                   headline: str, path: Path) -> None:
    """bench_inference.md: the setup, the machine, the headline, the side-by-side p50 table and all figures."""
    runtimes = settings.runtimes
    candidates = EMBEDDER_CANDIDATES if settings.face_embedder else CANDIDATE_RUNTIMES
    command = (f"scripts/bench_inference.py{' --face-embedder' if settings.face_embedder else ''} --backbones "
               f"{','.join(settings.backbones)} --runtimes {','.join(runtimes)} --batch {settings.batch} --repeats "
               f"{settings.repeats} --batch-repeats {settings.batch_repeats}")
    what = ("The shipped face embedders (`weights=\"faces\"`) as the app serves them: each face with its mirror "
            "view, the unit embedding out; served path: the fastest float32 runtime (an embedder has no classes "
            "for the int8 parity gate)" if settings.face_embedder else
            "Random weights, 2 classes, default head, each backbone at its default input; both outputs "
            "(probabilities + embedding)")
    lines = [f"# Inference time per {'face embedder' if settings.face_embedder else 'backbone'} and runtime", "",
             (f"Made by `{command}`. {what}. Latency: one image, p50/p90 over "
             f"{settings.repeats} calls after {WARMUP} warm-up calls, runtimes interleaved. Throughput: "
             f"batch {settings.batch}, median of {settings.batch_repeats}. `speedup` = keras-predict p50 / runtime "
             "p50. Served path: per backbone, the runtime the Predictor's default (`auto`) would serve on this "
             f"machine, the fastest of {', '.join(r for r in candidates if r in runtimes)} here"
             + ("." if settings.face_embedder else
                " (the int8 parity gate applies to trained runs; these have random weights).")), "",
             "| machine | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in info.items()]
    lines += ["", f"**{headline}**", "", "## Single-image latency p50 (ms), side by side", ""]
    lines += ["| backbone | input | params | .keras MB | " + " | ".join(runtimes) + " | served | served speedup |",
              "|---|---|---|---|" + "---|" * (len(runtimes) + 2)]
    for backbone in settings.backbones:
        group = {r["runtime"]: r for r in rows if r["backbone"] == backbone}
        first = next(iter(group.values()))
        cells = [f"{group[r]['p50_ms']:.1f}" if group[r]["p50_ms"] != "" else "n/a" for r in runtimes]
        served = next((r for r in group.values() if r["served"]), {})
        lines.append(f"| {backbone} | {first['input']} | {first['params']:,} | {first['keras_mb']} | "
                     + " | ".join(cells) + f" | {served.get('runtime', '')} | {served.get('speedup', '')}x |")
    lines += ["", "## All figures", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot(rows: list[dict], settings: InferenceSettings, path: Path) -> None:
    """bench_inference.png: p50 latency (log scale) and batch throughput, a bar per runtime per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / len(settings.runtimes)
    x = np.arange(len(settings.backbones))
    for k, runtime in enumerate(settings.runtimes):
        by = {r["backbone"]: r for r in rows if r["runtime"] == runtime}
        left.bar(x + k * width, [by[b]["p50_ms"] or 0 for b in settings.backbones], width, label=runtime)  # 0: n/a
        right.bar(x + k * width, [by[b]["images_per_s"] or 0 for b in settings.backbones], width, label=runtime)
    for axis, title in ((left, "single image, p50 latency (ms, log)"), (right, f"batch {settings.batch}, images/s")):
        axis.set_xticks(x + width * (len(settings.runtimes) - 1) / 2, settings.backbones, rotation=35, ha="right")
        axis.set_title(title)
        axis.legend()
    left.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_inference(settings: InferenceSettings, out: Path, calibration_dir: Path) -> str:
    """Measures every backbone and runtime; writes bench_inference.{csv,md,png} under ``out`` (int8
    calibrated on the JPEG faces under ``calibration_dir``). Returns the headline."""
    info = machine_info(PACKAGES)  # before we load the machine ourselves
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        for name in tqdm(settings.backbones, desc="backbones", unit="backbone"):
            rows += bench_backbone(name, settings.runtimes, settings.batch, settings.repeats, settings.batch_repeats,
                                   Path(tmp), calibration_dir, face_embedder=settings.face_embedder)
            tqdm.write(" ".join(f"{r['backbone']}/{r['runtime']} {r['p50_ms'] or 'n/a'} ms"
                                for r in rows[-len(settings.runtimes):]))

    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, info, out / "bench_inference.csv")
    text = face_embedder_headline(rows, info) if settings.face_embedder else served_headline(rows, info)
    write_markdown(rows, info, settings, text, out / "bench_inference.md")
    plot(rows, settings, out / "bench_inference.png")
    return text
