"""How a run folder is served on this machine: cached exports, the int8 parity gate, the runtime choice.

Which runtime is fastest depends on the CPU: int8 ONNX wins where the CPU has integer dot-product
units (VNNI, AMX), LiteRT wins for some small models, float32 ONNX or the compiled TensorFlow
function elsewhere. So nothing is assumed: :func:`serve_run` with ``runtime="auto"`` (the
default) builds every installed candidate (:data:`CANDIDATE_RUNTIMES`), keeps ``onnx-int8`` only
if it passes the parity gate *on this CPU*, times them on a real framed face of the run and serves
the fastest. The choice is written to ``RUN_DIR/exports/runtime_choice.json`` with the CPU's
identity (:func:`tf_models.cpu.cpu_identity`: model, ISA flags, cores) and the ``model.keras`` it
was made for; a later start on the same kind of CPU serves it at once, another CPU or a retrained
model measures again. A named runtime (``--runtime``) is always served as asked.

Exports are made once and cached in ``RUN_DIR/exports/<runtime>-serving/`` (re-made when
``model.keras`` changes); a read-only run folder converts into a temporary folder instead.
"""

from __future__ import annotations

import atexit
import errno
import functools
import json
import shutil
import statistics
import tempfile
import time
import warnings
from datetime import datetime, timezone
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tf_models.files import atomic_write
from tf_models.cpu import cpu_identity, describe_cpu
from tf_models.runs import RunFiles, file_sha1
from tf_models.serve.export import MODEL_FILES, calibration_inputs, export_keras, int8_inputs, measure_parity
from tf_models.serve.runtimes import (
    EXPORTED_RUNTIMES,
    RUNTIMES,
    CompiledRuntime,
    KerasPredictRuntime,
    Runtime,
    check_runtime,
    file_runtime,
)

AUTO = "auto"
RUNTIME_CHOICES = (AUTO, *RUNTIMES)  # what --runtime accepts
# What "auto" chooses among (keras-predict is the slow baseline, never a candidate).
CANDIDATE_RUNTIMES = ("onnx-int8", "onnx", "tflite", "compiled")
# Packages each candidate needs beyond TensorFlow.
_RUNTIME_PACKAGES = {"onnx-int8": ("onnxruntime", "tf2onnx"), "onnx": ("onnxruntime", "tf2onnx"),
                     "tflite": ("ai_edge_litert",), "compiled": ()}
# An int8 model is served only if its top-1 label equals the float32 model's on at least this share
# of held-out faces, measured on the CPU that serves it. Models near chance (many faces close to a
# tie) can miss it; they are then served in float32.
INT8_MIN_AGREEMENT = 0.99
PARITY_FILE = "parity.json"
STAMP_FILE = "source_model.sha1"
# Written into the stamp of a quantised export: an int8 file made by another recipe (8-bit weights,
# which saturate on AVX2-only CPUs) is made again, even for the same model.keras.
INT8_RECIPE = "onnx-int8: static QDQ, per-channel 7-bit weights, uint8 activations"
CHOICE_FILE = "runtime_choice.json"
TIMING_WARMUP = 3
TIMING_REPEATS = 15


class Int8ParityError(RuntimeError):
    """The int8 model disagrees with the float32 one on this CPU more than :data:`INT8_MIN_AGREEMENT` allows."""


def installed_runtimes() -> list[str]:
    """The :data:`CANDIDATE_RUNTIMES` whose packages are installed, in that order."""
    import importlib.util

    return [name for name in CANDIDATE_RUNTIMES
            if all(importlib.util.find_spec(package) is not None for package in _RUNTIME_PACKAGES[name])]


def make_runtime(runtime: str, model: keras.Model, workdir: str | Path | None = None, *,
                 representative: np.ndarray | None = None) -> Runtime:
    """A runtime serving ``model`` (its ``with_embedding`` form is made here if needed), no run folder.

    ``onnx``, ``onnx-int8`` and ``tflite`` export the model first, into ``workdir`` (default: a
    temporary folder). ``onnx-int8`` calibrates on ``representative`` (float32 N x H x W x 3 inputs,
    ~100 real framed faces); :func:`serve_run` finds them in the run's data itself.
    """
    from tf_models.models.classifier import with_embedding

    check_runtime(runtime)
    serving = with_embedding(model)
    if runtime == "compiled":
        return CompiledRuntime(serving)
    if runtime == "keras-predict":
        return KerasPredictRuntime(serving)
    fmt, quantize = EXPORTED_RUNTIMES[runtime]
    folder = Path(workdir) if workdir else _scratch_folder()
    path = export_keras(serving, fmt, folder / MODEL_FILES[fmt], quantize=quantize, representative=representative)
    return file_runtime(runtime, path)


def time_runtimes(engines: dict[str, Runtime], inputs: np.ndarray, *, warmup: int = TIMING_WARMUP,
                  repeats: int = TIMING_REPEATS) -> dict[str, list[float]]:
    """Milliseconds per call of each runtime on ``inputs``, after ``warmup`` calls.

    Runtimes take turns call by call, so load from other processes hits them alike.
    """
    for engine in engines.values():
        for _ in range(warmup):
            engine(inputs)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine(inputs)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def fastest(medians_ms: dict[str, float]) -> str:
    """The runtime with the lowest median time (ties: the earlier in :data:`CANDIDATE_RUNTIMES`)."""
    order = {name: k for k, name in enumerate(CANDIDATE_RUNTIMES)}
    return min(medians_ms, key=lambda name: (medians_ms[name], order.get(name, len(order))))


def serve_run(run: RunFiles, model: keras.Model, runtime: str | None = None) -> Runtime:
    """The runtime serving ``run`` (whose loaded model is ``model``): ``runtime`` or, by default, the
    fastest one on this CPU (see the module docstring)."""
    runtime = runtime or AUTO
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"runtime must be one of {RUNTIME_CHOICES}. Received: runtime={runtime!r}")
    if runtime == AUTO:
        return _chosen_runtime(run, model)
    if runtime == "onnx-int8":
        try:
            return _exported_runtime(run, runtime, model)
        except Int8ParityError as err:
            warnings.warn(f"{err}; serving float32 'onnx' instead.", stacklevel=2)
            return _exported_runtime(run, "onnx", model)
    if runtime in EXPORTED_RUNTIMES:
        return _exported_runtime(run, runtime, model)
    return make_runtime(runtime, model)


# ---------------------------------------------------------------------------------------------
# The choice by measurement
# ---------------------------------------------------------------------------------------------


def _chosen_runtime(run: RunFiles, model: keras.Model) -> Runtime:
    """The runtime recorded for this CPU and model in ``runtime_choice.json``, or a new measurement."""
    key = {"cpu": cpu_identity(), "source_model_sha1": file_sha1(run.model_path),
           "candidates": installed_runtimes()}
    choice_path = run.exports_dir / CHOICE_FILE
    saved = _read_json(choice_path) or {}
    if saved.get("runtime") in key["candidates"] and all(saved.get(k) == v for k, v in key.items()):
        try:
            return _build(run, model, saved["runtime"])
        except Exception as err:  # noqa: BLE001  parity lost, a damaged export...: measure again, say why
            warnings.warn(f"The cached runtime choice of {run.run_dir} ({saved['runtime']}) failed: "
                          f"{type(err).__name__}: {err}. Measuring again.", stacklevel=3)
    engines, excluded = _build_candidates(run, model, key["candidates"])
    size = tuple(int(v) for v in model.input_shape[1:3])
    face = calibration_inputs(run, size, limit=1)  # one real framed face: what a request carries
    medians = {name: statistics.median(times) for name, times in time_runtimes(engines, face).items()}
    chosen = fastest(medians)
    record = {**key, "runtime": chosen, "median_ms": {k: round(v, 3) for k, v in medians.items()},
              "excluded": excluded, "input_shape": list(face.shape), "timing": {
                  "warmup": TIMING_WARMUP, "repeats": TIMING_REPEATS, "statistic": "median"},
              "measured_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}
    where = _write_json(choice_path, record)
    others = ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(medians.items(), key=lambda kv: kv[1]))
    print(f"Serving {run.run_dir.name} with {chosen} on {describe_cpu()}: {others}"
          + "".join(f"; {k} left out: {v}" for k, v in excluded.items())
          + (f" (choice cached in {where})" if where else " (run folder read-only: not cached)"), flush=True)
    return engines[chosen]


def _build_candidates(run: RunFiles, model: keras.Model,
                      candidates: list[str]) -> tuple[dict[str, Runtime], dict[str, str]]:
    """The candidates that can be built here, and why the others cannot."""
    engines: dict[str, Runtime] = {}
    excluded: dict[str, str] = {}
    for name in candidates:
        try:
            engines[name] = _build(run, model, name)
        except Int8ParityError as err:
            excluded[name] = str(err)
        except Exception as err:  # noqa: BLE001  a converter that fails on this model leaves the others
            if name == "compiled":  # TensorFlow itself: nothing else would work either
                raise
            excluded[name] = f"{type(err).__name__}: {err}"
            warnings.warn(f"Runtime {name} could not be built for {run.run_dir}: {excluded[name]}", stacklevel=3)
    return engines, excluded


def _build(run: RunFiles, model: keras.Model, runtime: str) -> Runtime:
    """``runtime`` for ``run``; an int8 model below the parity bar raises :class:`Int8ParityError`."""
    return _exported_runtime(run, runtime, model) if runtime in EXPORTED_RUNTIMES else make_runtime(runtime, model)


# ---------------------------------------------------------------------------------------------
# Cached exports and the int8 parity gate
# ---------------------------------------------------------------------------------------------


def _exported_runtime(run: RunFiles, runtime: str, model: keras.Model) -> Runtime:
    """An exported runtime from ``RUN_DIR/exports/<runtime>-serving/``, converting when stale.

    ``onnx-int8`` is calibrated on framed faces of the run's data and served only when it passes the
    parity check on this CPU; :class:`Int8ParityError` otherwise.
    """
    fmt, quantize = EXPORTED_RUNTIMES[runtime]
    stamp_text = file_sha1(run.model_path) + (f"\n{INT8_RECIPE}" if quantize else "")
    folder = run.exports_dir / f"{runtime}-serving"
    path, stamp = folder / MODEL_FILES[fmt], folder / STAMP_FILE
    # Framing the run's photos (MTCNN on a few hundred) is most of an int8 conversion's time: done once
    # for both the calibration and the parity check.
    inputs = functools.cache(lambda: int8_inputs(run, tuple(int(v) for v in model.input_shape[1:3])))
    if not (path.is_file() and stamp.is_file() and stamp.read_text().strip() == stamp_text):
        try:
            _write_serving_files(run, runtime, model, folder, stamp_text, inputs)
        except OSError as err:
            if err.errno not in _READ_ONLY_ERRORS:
                raise
            folder = _scratch_folder()  # a read-only run folder (shared results, a read-only mount)
            _write_serving_files(run, runtime, model, folder, stamp_text, inputs)
        path = folder / path.name
    engine = file_runtime(runtime, path)
    if quantize:
        parity = _parity_on_this_cpu(model, engine, folder, inputs)
        if parity["top1_agreement"] < INT8_MIN_AGREEMENT:
            raise Int8ParityError(
                f"The {runtime} model of {run.run_dir} agrees with the float32 model on "
                f"{parity['top1_agreement']:.1%} of {parity['check_images']} held-out faces on this CPU "
                f"(needed: {INT8_MIN_AGREEMENT:.0%}). Details: {folder / PARITY_FILE}")
    return engine


def _parity_on_this_cpu(model: keras.Model, engine: Runtime, folder: Path,
                        inputs: Callable[[], tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """``parity.json`` if it was measured on this kind of CPU, else a new measurement on the held-out half of
    ``inputs()`` (:func:`~tf_models.serve.export.int8_inputs`), written back.

    int8 kernels differ between CPUs (VNNI / AMX / AVX2 / ARM dot product), so agreement measured
    on one machine says nothing certain about another.
    """
    path = folder / PARITY_FILE
    parity = _read_json(path)
    if parity is not None and parity.get("cpu") == cpu_identity() and "top1_agreement" in parity:
        return parity
    _, held_out = inputs()
    parity = {**(parity or {}), **measure_parity(model, engine, held_out), "cpu": cpu_identity(),
              "min_agreement": INT8_MIN_AGREEMENT}
    _write_json(path, parity)
    return parity


_READ_ONLY_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS)


def _scratch_folder() -> Path:
    """A temporary folder removed when the process ends (exports of a run folder we cannot write)."""
    folder = Path(tempfile.mkdtemp(prefix="tf_models_export_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _write_serving_files(run: RunFiles, runtime: str, model: keras.Model, folder: Path, stamp_text: str,
                         inputs: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
    """The model file (int8: calibrated on the calibration half of ``inputs()``), then the stamp naming its
    ``model.keras``."""
    fmt, quantize = EXPORTED_RUNTIMES[runtime]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILES[fmt]
    (folder / PARITY_FILE).unlink(missing_ok=True)  # belongs to the file being replaced
    if quantize:
        print(f"Making the {runtime} model of {run.run_dir} (once): calibrating on its faces...", flush=True)
        calibration, _ = inputs()
        export_keras(model, fmt, path, quantize=quantize, representative=calibration)
        _write_json(folder / PARITY_FILE, {"calibration_images": len(calibration)})
    else:
        export_keras(model, fmt, path)
    (folder / STAMP_FILE).write_text(stamp_text)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or cut short by a crash: measure again
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict[str, Any]) -> Path | None:
    """Writes ``value`` atomically; returns None (nothing cached) where the folder is read-only."""
    try:
        atomic_write(path, json.dumps(value, indent=1))
    except OSError:
        return None
    return path


__all__ = [
    "AUTO",
    "CANDIDATE_RUNTIMES",
    "CHOICE_FILE",
    "INT8_MIN_AGREEMENT",
    "PARITY_FILE",
    "RUNTIME_CHOICES",
    "Int8ParityError",
    "fastest",
    "installed_runtimes",
    "make_runtime",
    "serve_run",
    "time_runtimes",
]
