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

The shipped face embedder (``weights="faces"``, the app's identity when no run is given) is served the
same way by :func:`serve_face_embedder`, among float32 runtimes only, with its exports and choice in
the user cache: on a 2-core Intel Xeon, LiteRT answers a face in a fifth of the compiled function's time
and ONNX Runtime in a third (``results/inference/face_embedder/``).
"""

from __future__ import annotations

import atexit
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
import warnings
from datetime import datetime, timezone
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tf_models.cpu import cpu_identity, describe_cpu
from tf_models.data.filescan import default_cache_dir
from tf_models.files import atomic_write
from tf_models.models.classifier import with_embedding
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
# What "auto" chooses among for a face embedder: float32 only (int8's parity check compares class labels).
EMBEDDER_CANDIDATES = ("onnx", "tflite", "compiled")
EMBEDDER_EXPORTS_DIR = "face_embedder_exports"  # under the user cache (default_cache_dir())
EMBEDDER_MAX_DIFFERENCE = 1e-3  # an export's embedding components may differ from Keras's by this much
PARTIAL_EXPORT_MAX_AGE_S = 600  # a partial export file this old was abandoned (it lives for the seconds of a write)
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


def serve_face_embedder(embedder: keras.Model, weights_sha256: str, runtime: str | None = None) -> Runtime:
    """The runtime serving a face embedder (``build_face_embedder``; ``weights_sha256`` names its weights):
    ``runtime`` or, by default, the fastest of :data:`EMBEDDER_CANDIDATES` on this CPU.

    As for runs, the choice is measured once per CPU and recorded. Exports are made once, into the user
    cache (:data:`EMBEDDER_EXPORTS_DIR`; the package folder may be read-only), and each one is checked
    against the Keras model every time it is loaded: its embeddings may differ by round-off only.
    """
    runtime = runtime or AUTO
    allowed = (AUTO, *EMBEDDER_CANDIDATES, "keras-predict")
    if runtime not in allowed:
        raise ValueError(f"A face embedder is served with one of {allowed} (int8's parity check needs class "
                         f"labels, which an embedder has none of). Received: runtime={runtime!r}")
    served = with_embedding(embedder)
    # The graph by its layers (named by build_face_embedder, so stable from one start to the next; a
    # get_config would carry Keras's per-process name counters) and its input: mirror view or not, size.
    layers = [(layer.name, type(layer).__name__) for layer in embedder.layers] + [list(embedder.input_shape)]
    architecture = hashlib.sha1(json.dumps(layers).encode()).hexdigest()
    folder = default_cache_dir() / EMBEDDER_EXPORTS_DIR / f"{weights_sha256[:16]}-{architecture[:8]}"
    # One compiled function for the process: the "compiled" candidate and the reference every export is
    # checked against (a tf.function per check would trace the graph again for each candidate).
    compiled = functools.cache(lambda: CompiledRuntime(served))
    build = functools.partial(_embedder_runtime, served=served, folder=folder, compiled=compiled)
    if runtime != AUTO:
        return build(runtime)
    size = tuple(int(v) for v in served.input_shape[1:3])
    candidates = [name for name in installed_runtimes() if name in EMBEDDER_CANDIDATES]
    return _measured_choice(embedder.name, folder / CHOICE_FILE, {"cpu": cpu_identity(), "candidates": candidates},
                            build, lambda: _timing_faces(size, 1))


def _embedder_runtime(name: str, *, served: keras.Model, folder: Path,
                      compiled: Callable[[], CompiledRuntime]) -> Runtime:
    """``name`` for the served form of a face embedder; an exported one from ``folder`` (made once), checked."""
    if name not in EXPORTED_RUNTIMES:
        return compiled() if name == "compiled" else make_runtime(name, served)
    fmt, _ = EXPORTED_RUNTIMES[name]
    path = folder / f"{name}-serving" / MODEL_FILES[fmt]
    _remove_abandoned_partials(path)
    if path.is_file():
        try:
            return _checked_embedder_export(name, path, compiled())
        except Exception as err:  # noqa: BLE001  damaged (a full disk, a copy cut short) or wrong: made again
            warnings.warn(f"The cached {name} face embedder cannot serve ({type(err).__name__}: "
                          f"{str(err)[:300]}); making it again: {path}", stacklevel=3)
    try:
        # Written beside its final name, then renamed: a start killed mid-export, or two starts at
        # once, never leave a half-written model where the next start would load it.
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = _partial_path(path)
        try:
            export_keras(served, fmt, partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    except OSError as err:
        if err.errno not in _READ_ONLY_ERRORS:
            raise
        path = export_keras(served, fmt, _scratch_folder() / path.name)  # a read-only cache
    return _checked_embedder_export(name, path, compiled())


def _partial_path(path: Path) -> Path:
    """Where this thread writes ``path`` before renaming it: ``.<pid>-<thread>.<name>`` beside it."""
    return path.with_name(f".{os.getpid()}-{threading.get_ident()}.{path.name}")


def _remove_abandoned_partials(path: Path) -> None:
    """Deletes the partial files of ``path`` (:func:`_partial_path`) that starts killed mid-export left: those
    older than :data:`PARTIAL_EXPORT_MAX_AGE_S`. By age, not by process: the cache may be shared between
    machines, and a live export's partial file exists only for the seconds its writing takes."""
    own = re.compile(rf"\.[0-9]+-[0-9]+\.{re.escape(path.name)}")
    for partial in path.parent.glob(f".*.{path.name}"):
        try:
            if own.fullmatch(partial.name) and time.time() - partial.stat().st_mtime > PARTIAL_EXPORT_MAX_AGE_S:
                partial.unlink()
        except OSError:  # gone already (its own start renamed or removed it), or not ours to remove
            pass


def _checked_embedder_export(name: str, path: Path, reference: CompiledRuntime) -> Runtime:
    """The runtime on ``path``, once its embeddings match the Keras model's (``reference``) up to round-off."""
    engine = file_runtime(name, path)
    probe = _timing_faces(tuple(int(v) for v in reference.model.input_shape[1:3]), 4)
    difference = float(np.abs(engine(probe)[1] - reference(probe)[1]).max())
    if difference > EMBEDDER_MAX_DIFFERENCE:
        raise ValueError(f"The {name} face embedder {path} gives embeddings up to {difference:.2g} away from the "
                         f"Keras model's (allowed: {EMBEDDER_MAX_DIFFERENCE:g}); delete it to make it again.")
    return engine


def _timing_faces(size: tuple[int, int], count: int) -> np.ndarray:
    """``count`` fixed noise images of ``size``: a float32 runtime's time and round-off do not depend on
    what the pixels show (int8 ones do, and are never served for an embedder)."""
    return np.random.default_rng(0).uniform(0, 255, (count, *size, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The choice by measurement
# ---------------------------------------------------------------------------------------------


def _chosen_runtime(run: RunFiles, model: keras.Model) -> Runtime:
    """The runtime recorded for this CPU and model in ``runtime_choice.json``, or a new measurement."""
    size = tuple(int(v) for v in model.input_shape[1:3])
    return _measured_choice(
        str(run.run_dir), run.exports_dir / CHOICE_FILE,
        {"cpu": cpu_identity(), "source_model_sha1": file_sha1(run.model_path), "candidates": installed_runtimes()},
        lambda name: _build(run, model, name),
        lambda: calibration_inputs(run, size, limit=1))  # one real framed face: what a request carries


def _measured_choice(label: str, choice_path: Path, key: dict[str, Any], build: Callable[[str], Runtime],
                     face: Callable[[], np.ndarray]) -> Runtime:
    """The runtime recorded in ``choice_path`` under ``key`` (this CPU, this model, these candidates), or
    the fastest of ``key["candidates"]`` built by ``build`` and timed on ``face()``, recorded there."""
    saved = _read_json(choice_path) or {}
    if saved.get("runtime") in key["candidates"] and all(saved.get(k) == v for k, v in key.items()):
        try:
            return build(saved["runtime"])
        except Exception as err:  # noqa: BLE001  parity lost, a damaged export...: measure again, say why
            warnings.warn(f"The cached runtime choice of {label} ({saved['runtime']}) failed: "
                          f"{type(err).__name__}: {err}. Measuring again.", stacklevel=3)
    engines, excluded = _build_candidates(label, build, key["candidates"])
    inputs = face()
    medians = {name: statistics.median(times) for name, times in time_runtimes(engines, inputs).items()}
    chosen = fastest(medians)
    record = {**key, "runtime": chosen, "median_ms": {k: round(v, 3) for k, v in medians.items()},
              "excluded": excluded, "input_shape": list(inputs.shape), "timing": {
                  "warmup": TIMING_WARMUP, "repeats": TIMING_REPEATS, "statistic": "median"},
              "measured_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}
    where = _write_json(choice_path, record)
    others = ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(medians.items(), key=lambda kv: kv[1]))
    print(f"Serving {Path(label).name} with {chosen} on {describe_cpu()}: {others}"
          + "".join(f"; {k} left out: {v}" for k, v in excluded.items())
          + (f" (choice cached in {where})" if where else " (folder read-only: not cached)"), flush=True)
    return engines[chosen]


def _build_candidates(label: str, build: Callable[[str], Runtime],
                      candidates: list[str]) -> tuple[dict[str, Runtime], dict[str, str]]:
    """The candidates that can be built here, and why the others cannot."""
    engines: dict[str, Runtime] = {}
    excluded: dict[str, str] = {}
    for name in candidates:
        try:
            engines[name] = build(name)
        except Int8ParityError as err:
            excluded[name] = str(err)
        except Exception as err:  # noqa: BLE001  a converter that fails on this model leaves the others
            if name == "compiled":  # TensorFlow itself: nothing else would work either
                raise
            excluded[name] = f"{type(err).__name__}: {err}"
            warnings.warn(f"Runtime {name} could not be built for {label}: {excluded[name]}", stacklevel=3)
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
    "EMBEDDER_CANDIDATES",
    "EMBEDDER_EXPORTS_DIR",
    "EMBEDDER_MAX_DIFFERENCE",
    "INT8_MIN_AGREEMENT",
    "PARITY_FILE",
    "RUNTIME_CHOICES",
    "Int8ParityError",
    "fastest",
    "installed_runtimes",
    "make_runtime",
    "serve_face_embedder",
    "serve_run",
    "time_runtimes",
]
