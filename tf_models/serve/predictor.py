"""One inference path for the scripts and the app: photo -> faces -> one batched model call -> labels.

:class:`Predictor` finds faces with the process-wide MTCNN (:func:`tf_models.faces.detector.get_face_detector`),
frames each face the way the model saw faces in training (:class:`tf_models.faces.framing.FaceFramer`),
sends all faces of an image through the model in ONE batch and returns per face the box, label,
confidence, top-k and the L2-normalised embedding (open-set identity compares embeddings).

The engine behind it is a runtime of :mod:`tf_models.serve.runtimes`; for a run folder,
:mod:`tf_models.serve.serving` picks the fastest one that passes its parity check on this CPU.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from tf_models.runs import (
    CLASS_NAMES_FILE,
    CROP_FILE,
    load_run_model,
    read_class_names,
    read_crop_settings,
    read_run,
)
from tf_models.faces.crop import CropSettings
from tf_models.faces.detector import DetectedFace
from tf_models.faces.framing import FaceFramer
from tf_models.images import ImageReadError, read_image, to_rgb
from tf_models.serve.export import load_export_runtime, read_export_info
from tf_models.serve.runtimes import Runtime
from tf_models.serve.serving import AUTO, RUNTIME_CHOICES, serve_face_embedder, serve_run


def default_runtime() -> str:
    """What a run is served with when no runtime is named: ``auto``, the fastest on this CPU."""
    return AUTO


@dataclass(frozen=True)
class FacePrediction:
    """One face: where it is and what the model says."""

    box: tuple[int, int, int, int]  # x, y, width, height in the original image's pixels
    label: str  # top-1 class name
    confidence: float  # top-1 probability
    top_k: list[tuple[str, float]]  # (class name, probability), best first
    detection_confidence: float | None  # MTCNN score; None when the whole image was classified
    embedding: np.ndarray = field(repr=False)  # L2-normalised penultimate features, float32


@dataclass
class ImagePrediction:
    """Everything found in one image; ``error`` says why there is no face (unreadable, no face found)."""

    source: str
    faces: list[FacePrediction]
    error: str | None = None



# ---------------------------------------------------------------------------------------------
# The predictor
# ---------------------------------------------------------------------------------------------


NO_FACE = "no face found (use whole_image_if_no_face / --whole-image-if-no-face for photos that are face crops)"


class Predictor:
    """Faces in, labels out; see the module docstring. Build it with :meth:`from_run` or :meth:`from_export`.

    Thread-safe: the detector and the runtimes may be called from several threads (the TFLite
    interpreter serialises itself), so one Predictor can serve an app.
    """

    def __init__(self, runtime: Runtime, class_names: Sequence[str], input_size: Sequence[int],
                 crop: CropSettings | None = None, *, top_k: int = 3, whole_image_if_no_face: bool = False,
                 batch_size: int | None = None) -> None:
        if len(class_names) == 1:  # none at all: a face embedder (embeddings only, for a gallery)
            raise ValueError(f"A classifier needs at least 2 class names. Received: class_names={list(class_names)!r}")
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1. Received: top_k={top_k!r}")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 or None. Received: batch_size={batch_size!r}")
        self.runtime = runtime
        self.class_names = list(class_names)
        self.framer = FaceFramer(input_size, crop, whole_image_if_no_face)
        self.top_k = min(int(top_k), max(1, len(self.class_names)))
        self.batch_size = None if batch_size is None else int(batch_size)

    def __repr__(self) -> str:
        return (f"Predictor(runtime={self.runtime.name!r}, classes={len(self.class_names)}, "
                f"input_size={self.input_size}, crop={self.crop!r})")

    @property
    def input_size(self) -> tuple[int, int]:
        return self.framer.input_size

    @property
    def crop(self) -> CropSettings | None:
        return self.framer.crop

    @classmethod
    def from_run(cls, run_dir: str | Path, runtime: str | None = None, *, top_k: int = 3,
                 whole_image_if_no_face: bool = False, batch_size: int | None = None) -> Predictor:
        """Serves a training run folder. ``runtime``: one of :data:`RUNTIME_CHOICES`; default ``auto``,
        the fastest runtime on this CPU that passes its parity check (:mod:`tf_models.serve.serving`).

        Exported runtimes convert the model once and keep the file in ``RUN_DIR/exports/``
        (re-made when ``model.keras`` changes); a read-only run folder converts into a temporary one.
        """
        runtime = runtime or default_runtime()
        if runtime not in RUNTIME_CHOICES:  # before the model loads: a typo fails fast
            raise ValueError(f"runtime must be one of {RUNTIME_CHOICES}. Received: runtime={runtime!r}")
        run = read_run(run_dir)
        model = load_run_model(run.run_dir)
        input_size = tuple(int(v) for v in model.input_shape[1:3])
        engine = serve_run(run, model, runtime)
        return cls(engine, run.class_names, input_size, run.crop, top_k=top_k,
                   whole_image_if_no_face=whole_image_if_no_face, batch_size=batch_size)

    @classmethod
    def from_face_weights(cls, backbone: str = "mobilenetv2", *, runtime: str | None = None,
                          batch_size: int | None = None) -> Predictor:
        """Serves the shipped face embedder (``weights="faces"``): embeddings only, no classes.

        Faces are cut out as face pretraining cut them (the default :class:`CropSettings`, aligned
        or not as the weights' registry row says), so a gallery of these embeddings needs no training run at all.
        ``runtime``: default ``auto``, the fastest float32 runtime on this CPU
        (:func:`~tf_models.serve.serving.serve_face_embedder`); ``onnx-int8`` is served as ``onnx``, with a warning.
        """
        from tf_models.models.backbones import get_backbone
        from tf_models.models.face_embedder import build_face_embedder

        spec = get_backbone(backbone)
        embedder = build_face_embedder(spec.name)  # no face weights for this backbone: says which have them
        if runtime == "onnx-int8":  # int8's parity check compares class labels, which an embedder has none of
            warnings.warn("The face embedder has no int8 model (its parity check needs class labels): "
                          "serving it with float32 onnx; pass runtime='onnx' or 'auto' to choose it yourself. "
                          "Received: runtime='onnx-int8'", stacklevel=2)
            runtime = "onnx"
        engine = serve_face_embedder(embedder, spec.faces.sha256, runtime)
        return cls(engine, [], spec.faces.input_size, CropSettings(align=spec.faces.aligned), batch_size=batch_size)

    @property
    def embeds_only(self) -> bool:
        """True for a face embedder: :attr:`FacePrediction.embedding` is all it gives."""
        return not self.class_names

    @classmethod
    def from_export(cls, path: str | Path, *, top_k: int = 3, whole_image_if_no_face: bool = False,
                    batch_size: int | None = None) -> Predictor:
        """Serves a folder written by ``scripts/export.py`` (its runtime follows the format)."""
        folder, info = read_export_info(path)
        crop_path = folder / CROP_FILE
        crop = read_crop_settings(crop_path) if crop_path.is_file() else None
        return cls(load_export_runtime(folder, info), read_class_names(folder / CLASS_NAMES_FILE),
                   info["input_size"], crop, top_k=top_k, whole_image_if_no_face=whole_image_if_no_face,
                   batch_size=batch_size)

    # -- inference -------------------------------------------------------------------------------

    def predict_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model outputs for framed inputs (N x H x W x 3, 0..255, already at :attr:`input_size`).

        Returns (probabilities N x K, embeddings N x D), float32. One runtime call for all of them,
        or calls of ``batch_size`` when the Predictor was given one (bounds memory for big jobs).
        """
        crops = np.asarray(crops)
        if crops.ndim != 4 or tuple(crops.shape[1:]) != (*self.input_size, 3):
            raise ValueError(f"crops must be N x {self.input_size[0]} x {self.input_size[1]} x 3. "
                             f"Received: shape={crops.shape}")
        crops = crops.astype(np.float32, copy=False)
        if len(crops) == 0:
            return np.zeros((0, len(self.class_names)), np.float32), np.zeros((0, 0), np.float32)
        step = self.batch_size or len(crops)
        outputs = [self.runtime(crops[i:i + step]) for i in range(0, len(crops), step)]
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])

    def predict_image(self, image: str | Path | np.ndarray | Image.Image) -> ImagePrediction:
        """Every face of one image. Never raises for a bad file: the reason goes to ``error``."""
        source = str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>"
        try:
            pixels = self.load_pixels(image)
            inputs, boxes = self.framer.model_inputs(pixels)
        except ImageReadError as err:
            return ImagePrediction(source, [], err.reason)
        except ValueError as err:  # an array of the wrong shape or dtype
            return ImagePrediction(source, [], str(err))
        if not boxes:
            return ImagePrediction(source, [], NO_FACE)
        probabilities, embeddings = self.predict_crops(inputs)
        return ImagePrediction(source, [self._face(box, det, p, e)
                                        for (box, det), p, e in zip(boxes, probabilities, embeddings)])

    def predict_faces(self, pixels: np.ndarray, faces: Sequence[DetectedFace]) -> list[FacePrediction]:
        """Already detected faces of an RGB uint8 photo, in one batched call; no detection here.

        For two models on one photo (the app: gender and identity): detect once (e.g. with
        ``self.framer.detector``), then give each predictor the same detections.
        """
        if not faces:
            return []
        probabilities, embeddings = self.predict_crops(self.framer.inputs_for(pixels, faces))
        return [self._face(face.box, face.confidence, p, e) for face, p, e in zip(faces, probabilities, embeddings)]

    def predict_paths(self, paths: Iterable[str | Path], progress: bool = True) -> Iterator[ImagePrediction]:
        """:meth:`predict_image` over files, in order, with a progress bar. One file's failure is its row."""
        paths = list(paths)
        for path in tqdm(paths, desc="predicting", unit="image", disable=not progress or len(paths) < 2):
            try:
                result = self.predict_image(path)
            except Exception as err:  # noqa: BLE001  a batch job reports an unforeseen failure and goes on
                result = ImagePrediction(str(path), [], f"failed: {type(err).__name__}: {err}")
            yield result

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def load_pixels(image: str | Path | np.ndarray | Image.Image) -> np.ndarray:
        """A path (read_image: EXIF, HEIC, bombs refused), PIL image or array -> the pixels the detector takes."""
        if isinstance(image, (str, Path)):
            return read_image(image)
        if isinstance(image, Image.Image):
            return np.asarray(to_rgb(image), dtype=np.uint8)
        if isinstance(image, np.ndarray):
            return image  # the detector checks shape and dtype (ValueError with the received values)
        raise ValueError(f"image must be a path, a numpy array or a PIL image. Received: {type(image).__name__}")

    def _face(self, box: tuple[int, int, int, int], detection: float | None, probabilities: np.ndarray,
              embedding: np.ndarray) -> FacePrediction:
        order = np.argsort(-probabilities, kind="stable")[: self.top_k]
        top = [(self.class_names[k], float(probabilities[k])) for k in order] or [("", 0.0)]  # embedder: no class
        return FacePrediction(tuple(int(v) for v in box), top[0][0], top[0][1], top, detection, embedding)



CSV_COLUMNS = ("file", "face", "x", "y", "w", "h", "label", "confidence", "top_k", "detection_confidence", "error")


def prediction_rows(prediction: ImagePrediction) -> list[dict[str, Any]]:
    """CSV rows: one per face, or one row with ``error`` (why there is no face) and empty face columns."""
    if not prediction.faces:
        return [{**dict.fromkeys(CSV_COLUMNS, ""), "file": prediction.source,
                 "error": prediction.error or NO_FACE}]
    return [
        {"file": prediction.source, "face": index, "x": face.box[0], "y": face.box[1], "w": face.box[2],
         "h": face.box[3], "label": face.label, "confidence": f"{face.confidence:.4f}",
         "top_k": "; ".join(f"{name}:{p:.4f}" for name, p in face.top_k),
         "detection_confidence": "" if face.detection_confidence is None else f"{face.detection_confidence:.4f}",
         "error": ""}
        for index, face in enumerate(prediction.faces)
    ]


def write_predictions_csv(predictions: Iterable[ImagePrediction], out: str | Path) -> dict[str, int]:
    """Streams predictions to a CSV (:data:`CSV_COLUMNS`); returns counts of files, faces and errors."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = {"files": 0, "faces": 0, "files_without_face": 0}
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for prediction in predictions:
            writer.writerows(prediction_rows(prediction))
            handle.flush()  # a long folder run shows its rows as it goes
            counts["files"] += 1
            counts["faces"] += len(prediction.faces)
            counts["files_without_face"] += not prediction.faces
    return counts


def iter_files(target: str | Path) -> list[Path]:
    """A file -> [it]; a folder -> every file under it, recursively, sorted (bad files get error rows)."""
    target = Path(target).expanduser()
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.is_file())
    if not target.exists():
        raise FileNotFoundError(f"No such file or folder. Received: {str(target)!r}")
    return [target]


__all__ = [
    "CSV_COLUMNS",
    "NO_FACE",
    "FacePrediction",
    "ImagePrediction",
    "Predictor",
    "default_runtime",
    "iter_files",
    "prediction_rows",
    "write_predictions_csv",
]
