"""Runtimes: one call signature over every engine a model can be served with.

A runtime maps float32 ``N x H x W x 3`` raw images (0..255) to ``(probabilities, embeddings)``,
the two outputs of :func:`tf_models.models.classifier.with_embedding` (a face embedder's probabilities are
N x 0: it has no classes):

- ``onnx-int8``: ONNX Runtime on an int8 ONNX export (see :func:`tf_models.serve.export.quantize_onnx_int8`).
- ``onnx``: ONNX Runtime on a float32 ONNX export (outputs equal Keras's to ~1e-5).
- ``compiled``: a ``tf.function`` with a fixed input signature ``[None, H, W, 3]``: traced once,
  whatever the number of faces.
- ``tflite``: the LiteRT interpreter on a TFLite export.
- ``keras-predict``: ``model.predict`` per call: the slow baseline the benchmark compares with.
- ``savedmodel`` (exports only): the SavedModel's ``serve`` function.

Which one a run is served with is decided per machine by :mod:`tf_models.serve.serving`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from tf_models.models.classifier import inference_function

RUNTIMES = ("onnx-int8", "onnx", "compiled", "tflite", "keras-predict")
# Runtimes that serve an exported file: (export format, quantisation).
EXPORTED_RUNTIMES = {"onnx-int8": ("onnx", "int8"), "onnx": ("onnx", None), "tflite": ("tflite", None)}


class Runtime(Protocol):
    """A model that maps float32 N x H x W x 3 raw images to (probabilities, embeddings)."""

    name: str

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _split(outputs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, embeddings); a face embedder has no classes: N x 0 probabilities."""
    embeddings = np.asarray(outputs["embedding"], dtype=np.float32)
    if "probabilities" not in outputs:
        return np.zeros((len(embeddings), 0), np.float32), embeddings
    return np.asarray(outputs["probabilities"], dtype=np.float32), embeddings


class CompiledRuntime:
    """``model(x, training=False)`` in one ``tf.function`` traced for ``[None, H, W, 3]`` float32.

    The fixed signature leaves only the batch free, so 1 face or 30 never retrace
    (:attr:`tracing_count` stays 1). Concurrent calls are safe (TensorFlow's own guarantee).
    """

    name = "compiled"

    def __init__(self, model: keras.Model) -> None:

        self.model = model
        self._fn = inference_function(model, model.input_shape[1:3])

    @property
    def tracing_count(self) -> int:
        return int(self._fn.experimental_get_tracing_count())

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _split({k: v.numpy() for k, v in self._fn(images).items()})


class KerasPredictRuntime:
    """``model.predict`` per call: the usual notebook way, and the benchmark's baseline."""

    name = "keras-predict"

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self._lock = threading.Lock()  # predict builds its own function and data adapter per call

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return _split(self.model.predict(images, verbose=0))


class OnnxRuntime:
    """ONNX Runtime on an exported ``.onnx`` file (thread-safe ``InferenceSession.run``)."""

    name = "onnx"

    def __init__(self, path: str | Path, name: str = "onnx") -> None:
        self.name = name  # "onnx-int8" for a quantised file
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError("runtime='onnx' needs onnxruntime: pip install -r requirements.txt") from err
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        # No busy-waiting between calls: ORT's idle threads otherwise spin on the cores the MTCNN
        # detector (TensorFlow) needs next, which costs more than the wake-up on a 2-core machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = self._session.run(self._outputs, {self._input: images})
        return _split(dict(zip(self._outputs, values)))


def _litert_interpreter() -> Any:
    """LiteRT's interpreter (``ai-edge-litert``); TensorFlow's deprecated ``tf.lite`` copy otherwise."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


class TFLiteRuntime:
    """The LiteRT interpreter on a ``.tflite`` export; a lock serialises calls (it is not thread-safe)."""

    name = "tflite"

    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        if num_threads is None:
            num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self._interpreter = _litert_interpreter()(model_path=str(path), num_threads=num_threads)
        signatures = self._interpreter.get_signature_list()
        self._signature = next(iter(signatures))
        self._input = signatures[self._signature]["inputs"][0]
        self._runner = self._interpreter.get_signature_runner(self._signature)
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:  # the runner resizes the input tensor to the batch on each call
            return _split(self._runner(**{self._input: np.ascontiguousarray(images, dtype=np.float32)}))


class SavedModelRuntime:
    """A SavedModel export's ``serve`` endpoint."""

    name = "savedmodel"

    def __init__(self, path: str | Path) -> None:
        import tensorflow as tf

        self._loaded = tf.saved_model.load(str(path))

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _split({k: v.numpy() for k, v in self._loaded.serve(images).items()})


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}. Received: runtime={runtime!r}")


def file_runtime(runtime: str, path: Path) -> Runtime:
    return TFLiteRuntime(path) if runtime == "tflite" else OnnxRuntime(path, runtime)



__all__ = [
    "EXPORTED_RUNTIMES",
    "RUNTIMES",
    "CompiledRuntime",
    "KerasPredictRuntime",
    "OnnxRuntime",
    "Runtime",
    "SavedModelRuntime",
    "TFLiteRuntime",
    "check_runtime",
    "file_runtime",
]
