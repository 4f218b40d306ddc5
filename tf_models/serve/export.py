"""Run folders in, models for other runtimes out: SavedModel, ONNX, TFLite (LiteRT).

Every export serves BOTH outputs of :func:`tf_models.models.classifier.with_embedding` (``probabilities``
and the L2-normalised ``embedding``) from one input ``image``: float32 raw RGB 0..255, shape
``[batch, H, W, 3]`` with a free batch size. Preprocessing is inside the graph, as in the Keras model.

An export folder holds the model file plus what :meth:`tf_models.serve.predictor.Predictor.from_export`
needs to serve it like the run: ``class_names.json``, ``crop.json`` (identity runs) and
``export.json`` (format, quantisation, input size, task, the ``model.keras`` it came from).

Conversions use Keras's own exporters (``Model.export``): ``tf_saved_model``, ``onnx`` (through
tf2onnx, which Keras patches for numpy 2) and ``litert`` (``tf.lite.TFLiteConverter``). Quantisation:
TFLite ``float16`` weights, or ``int8`` weights and activations calibrated on the run's own images;
ONNX ``int8`` (ONNX Runtime's static QDQ quantisation: int8 per-channel weights, uint8 activations,
calibrated the same way; 7-bit weights so that AVX2, VNNI, AMX and ARM CPUs compute the same
sums), which runs on the CPU's integer units and is often the fastest runtime (which one serves a
run is measured per machine: :mod:`tf_models.serve.serving`). SavedModel exports are float32.
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tf_models.faces.framing import FaceFramer
from tf_models.models.classifier import with_embedding
from tf_models.runs import RunFiles, file_sha1, load_run_model, read_run, write_class_names, write_crop_settings
from tf_models.serve.runtimes import CompiledRuntime, OnnxRuntime, Runtime, SavedModelRuntime, TFLiteRuntime

QUANTIZATIONS = ("float16", "int8")
INPUT_NAME = "image"
EXPORT_INFO = "export.json"
# Bundled samples: calibration images when a run's own data folder is gone (a run copied elsewhere).
_BUNDLED_SAMPLES = {"gender": "datasets/celeba/sample", "identity": "datasets/students/sample"}
_REPO_ROOT = Path(__file__).resolve().parents[2]


def _signature(model: keras.Model) -> list[Any]:
    import tensorflow as tf

    height, width = model.input_shape[1:3]
    return [tf.TensorSpec([None, height, width, 3], tf.float32, name=INPUT_NAME)]


def check_format(fmt: str, quantize: str | None) -> None:
    """Raises ValueError for an unknown format or a quantisation the format does not support."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}. Received: format={fmt!r}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS} or None. Received: quantize={quantize!r}")
    if quantize is not None and quantize not in FORMAT_QUANTIZATIONS[fmt]:
        offered = [f for f, kinds in FORMAT_QUANTIZATIONS.items() if quantize in kinds]
        raise ValueError(
            f"{fmt} exports cannot be quantised to {quantize} (supported: "
            f"{', '.join(FORMAT_QUANTIZATIONS[fmt]) or 'float32 only'}). Use --format {' or '.join(offered)} "
            f"--quantize {quantize}. Received: format={fmt!r}, quantize={quantize!r}"
        )


def export_keras(
    model: keras.Model,
    fmt: str,
    path: str | Path,
    *,
    quantize: str | None = None,
    representative: np.ndarray | None = None,
) -> Path:
    """Writes ``model`` (a classifier, or its ``with_embedding`` form) in ``fmt`` to ``path``.

    ``representative``: float32 model inputs (N x H x W x 3) to calibrate ``int8`` activations;
    100 or so real, framed faces. Returns ``path``.
    """
    check_format(fmt, quantize)
    if keras.config.dtype_policy().name != "float32":
        raise ValueError("Export needs the float32 dtype policy (keras.config.set_dtype_policy('float32')). "
                         f"Received: policy={keras.config.dtype_policy().name!r}")
    serving = with_embedding(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    signature = _signature(serving)
    with warnings.catch_warnings():
        # Keras's tf2onnx numpy-2 patch probes np.object (FutureWarning); the exporters warn that
        # the input structure is a list: neither is the user's business.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*structure of `inputs`.*")
        FORMATS[fmt].convert(serving, path, signature, quantize, representative)
    return path


# ---- the formats: a converter and a runtime each ------------------------------------------------


def _to_savedmodel(serving: keras.Model, path: Path, signature: list[Any], quantize: str | None,
                   representative: np.ndarray | None) -> None:
    serving.export(str(path), format="tf_saved_model", input_signature=signature, verbose=False)


def _to_onnx(serving: keras.Model, path: Path, signature: list[Any], quantize: str | None,
             representative: np.ndarray | None) -> None:
    _require("tf2onnx", "ONNX export")
    _require("onnx", "ONNX export")
    if quantize is None:
        serving.export(str(path), format="onnx", input_signature=signature, verbose=False)
        return
    float_path = path.with_name(path.stem + ".float32.onnx")
    try:
        serving.export(str(float_path), format="onnx", input_signature=signature, verbose=False)
        quantize_onnx_int8(float_path, path, _checked_representative(representative))
    finally:
        float_path.unlink(missing_ok=True)


def _to_tflite(serving: keras.Model, path: Path, signature: list[Any], quantize: str | None,
               representative: np.ndarray | None) -> None:
    serving.export(str(path), format="litert", input_signature=signature, verbose=False,
                   **_tflite_options(quantize, representative))


@dataclass(frozen=True)
class ExportFormat:
    """One export format: where its model lives in an export folder, what it can be quantised to,
    how it is written and how it is served. Adding a format is one row of :data:`FORMATS`."""

    model_file: str
    quantizations: tuple[str, ...]
    convert: Callable[[keras.Model, Path, list[Any], str | None, np.ndarray | None], None]
    runtime: Callable[[Path, str | None], Runtime]  # (model file, quantisation) -> runtime


# TFLite's converter does float16 and int8; ONNX float16 is slower than float32 on CPUs, so only int8.
FORMATS: dict[str, ExportFormat] = {
    "savedmodel": ExportFormat("saved_model", (), _to_savedmodel, lambda path, _: SavedModelRuntime(path)),
    "onnx": ExportFormat("model.onnx", ("int8",), _to_onnx,
                         lambda path, quantize: OnnxRuntime(path, "onnx-int8" if quantize == "int8" else "onnx")),
    "tflite": ExportFormat("model.tflite", ("float16", "int8"), _to_tflite, lambda path, _: TFLiteRuntime(path)),
}
EXPORT_FORMATS = tuple(FORMATS)
MODEL_FILES = {name: spec.model_file for name, spec in FORMATS.items()}
FORMAT_QUANTIZATIONS = {name: spec.quantizations for name, spec in FORMATS.items()}


def load_export_runtime(folder: Path, info: dict[str, Any]) -> Runtime:
    """The runtime that serves an export folder, from its ``export.json`` (``info``)."""
    fmt = info["format"]
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format in {folder / EXPORT_INFO}. Received: format={fmt!r}")
    return FORMATS[fmt].runtime(folder / info["model_file"], info.get("quantize"))


def _tflite_options(quantize: str | None, representative: np.ndarray | None) -> dict[str, Any]:
    import tensorflow as tf

    if quantize is None:
        return {}
    options: dict[str, Any] = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
        return options
    samples = _checked_representative(representative)

    def calibration() -> Iterator[dict[str, np.ndarray]]:
        for sample in samples:
            yield {INPUT_NAME: sample[None]}

    # int8 weights and activations; input and output stay float32, so serving code is unchanged.
    options["representative_dataset"] = calibration
    return options


def _checked_representative(representative: np.ndarray | None) -> np.ndarray:
    if representative is None or len(representative) == 0:
        raise ValueError("int8 quantisation needs representative inputs to calibrate activations "
                         "(float32 N x H x W x 3). Received: representative=None")
    return np.asarray(representative, dtype=np.float32)


def quantize_onnx_int8(source: str | Path, target: str | Path, representative: np.ndarray) -> Path:
    """ONNX Runtime static quantisation of a float32 ONNX model: 7-bit int8 weights, uint8 activations.

    QDQ format, per-channel weights, activation ranges from ``representative`` (MinMax). uint8
    activations with int8 weights is the pairing ONNX Runtime's x86 integer kernels are fastest with.
    Weights use 7 bits (``reduce_range``) so that every CPU computes the same sums: x86 CPUs without
    VNNI (AVX2 only) multiply u8 x s8 with ``vpmaddubsw``, which adds each PAIR of products into
    a signed 16-bit lane and saturates when 2 x 255 x 128 > 32767; with |weight| <= 64 the pair fits
    (2 x 255 x 64 = 32640), so AVX2, AVX-512 VNNI, AMX and ARM all give exact int32 sums, at the
    same speed. ``tests/test_int8_isa.py`` shows the saturation with 8-bit weights and its absence
    with 7-bit ones on an emulated AVX2 CPU.
    """
    _require("onnxruntime", "ONNX int8 quantisation")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    samples = _checked_representative(representative)

    class Samples(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(samples[k:k + 1] for k in range(len(samples)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {INPUT_NAME: item}

    quantize_static(str(source), str(target), Samples(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Path(target)


def _require(module: str, what: str) -> None:
    try:
        __import__(module)
    except ImportError as err:
        raise ImportError(f"{what} needs the {module!r} package: pip install -r requirements.txt") from err


def calibration_inputs(run: RunFiles, input_size: tuple[int, int], limit: int = 100) -> np.ndarray:
    """Up to ``limit`` model inputs framed as serving frames them, from the run's data folder.

    Falls back to the bundled sample of the run's task when the data folder is not on this machine.
    """
    from tf_models.images import ImageReadError, is_image_path, read_image

    root = Path(run.config.data_dir).expanduser()
    if not root.is_dir():
        root = _REPO_ROOT / _BUNDLED_SAMPLES[run.config.task]
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_path(p))
    if not files:
        raise ValueError(f"No images to calibrate int8 quantisation under {root}. Received: data_dir={str(root)!r}")
    step = max(1, len(files) // limit)
    framer = FaceFramer(input_size, run.crop, whole_image_if_no_face=True)
    inputs: list[np.ndarray] = []
    for path in files[::step]:
        try:
            batch, _ = framer.model_inputs(read_image(path))
        except ImageReadError:
            continue
        inputs.extend(batch[:1])
        if len(inputs) >= limit:
            break
    return np.stack(inputs)


def int8_inputs(run: RunFiles, input_size: tuple[int, int],
                calibration_images: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, check) model inputs for int8: every third framed image calibrates the
    activation ranges, the other two are held out to measure agreement with the float32 model."""
    inputs = calibration_inputs(run, input_size, 3 * calibration_images)
    held_out = np.ones(len(inputs), dtype=bool)
    held_out[::3] = False
    return inputs[::3], inputs[held_out]


def measure_parity(model: keras.Model, serve: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                   inputs: np.ndarray, batch_size: int = 32) -> dict[str, float | int]:
    """How closely ``serve`` (a runtime: inputs -> (probabilities, embeddings)) follows the Keras model.

    Returns the top-1 agreement, the largest absolute probability difference and the lowest cosine
    between the two embeddings of an input, over ``inputs`` (framed faces the model did not calibrate on).
    """
    infer = CompiledRuntime(with_embedding(model))  # one trace for every batch size
    agree, worst_diff, worst_cosine = 0, 0.0, 1.0
    for start in range(0, len(inputs), batch_size):
        batch = np.ascontiguousarray(inputs[start:start + batch_size], dtype=np.float32)
        expected_probabilities, expected_embeddings = infer(batch)
        probabilities, embeddings = serve(batch)
        agree += int((probabilities.argmax(1) == expected_probabilities.argmax(1)).sum())
        worst_diff = max(worst_diff, float(np.abs(probabilities - expected_probabilities).max()))
        worst_cosine = min(worst_cosine, float((embeddings * expected_embeddings).sum(1).min()))
    return {"check_images": len(inputs), "top1_agreement": agree / max(len(inputs), 1),
            "max_abs_diff": worst_diff, "min_embedding_cosine": worst_cosine}


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    quantize: str | None = None,
    calibration_images: int = 100,
) -> Path:
    """Exports a run folder's model to the folder ``out`` (default ``RUN_DIR/exports/<fmt>[-<quantize>]``).

    Returns the export folder; :meth:`~tf_models.serve.predictor.Predictor.from_export` serves it.
    """
    check_format(fmt, quantize)
    run = read_run(run_dir)
    out = Path(out) if out else run.exports_dir / (fmt + (f"-{quantize}" if quantize else ""))
    model = load_run_model(run.run_dir)
    input_size = tuple(int(v) for v in model.input_shape[1:3])
    representative, held_out = int8_inputs(run, input_size, calibration_images) if quantize == "int8" else (None, None)
    out.mkdir(parents=True, exist_ok=True)
    export_keras(model, fmt, out / MODEL_FILES[fmt], quantize=quantize, representative=representative)
    write_class_names(out, run.class_names)
    if run.crop is not None:
        write_crop_settings(out, run.crop)
    info = {
        "format": fmt,
        "quantize": quantize,
        "model_file": MODEL_FILES[fmt],
        "input_size": list(input_size),
        "task": run.config.task,
        "backbone": run.config.backbone,
        "source_model_sha1": file_sha1(run.model_path),
        "calibration_images": len(representative) if representative is not None else 0,
        "versions": {name: _version(name) for name in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime")},
    }
    if held_out is not None and len(held_out):
        info["parity"] = measure_parity(model, load_export_runtime(out, info), held_out)
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return out


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def read_export_info(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(export folder, its export.json); ``path`` may be the folder or the model file inside it."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() and (path / EXPORT_INFO).is_file() else path.parent
    info_path = folder / EXPORT_INFO
    if not info_path.is_file():
        raise FileNotFoundError(
            f"No {EXPORT_INFO} next to {path}: pass a folder written by scripts/export.py. Received: path={str(path)!r}"
        )
    return folder, json.loads(info_path.read_text(encoding="utf-8"))
