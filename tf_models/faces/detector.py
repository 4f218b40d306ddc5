"""Face detection (MTCNN) and face cropping, kept apart like deepface keeps detection apart.

Detection answers "where are the faces" in the original image's pixels; cropping turns a box
into the fixed-size, undistorted patch a classifier eats. Nothing here knows about models.

Speed. :meth:`FaceDetector.detect` is several times faster than ``mtcnn.MTCNN().detect_faces`` on
a full-size photo and finds the same faces (``scripts/bench_detection.py`` measures both), by

1. detecting on a copy whose longer side is at most ``detect_max_side`` and mapping boxes back;
2. running all of PNet's pyramid levels in ONE traced ``tf.function`` call (levels run in
   parallel, one Python dispatch) and RNet/ONet as traced graphs, instead of mtcnn's
   layer-by-layer eager calls (about 4x less time in the networks, same results);
3. feeding float32, so mtcnn normalises and resizes in float32 rather than float64.

Correctness. mtcnn 1.0's image pyramid has a bug: the number of levels depends only on the
image size, not on ``min_face_size``. With a small ``min_face_size`` (12 px, which is what a
downscaled image needs) the pyramid stops early and a face that fills the frame is never
proposed; with a large one (> ~24 px) the last level shrinks below PNet's 12 px window, PNet
raises inside mtcnn, and mtcnn returns *no faces at all*, silently. :class:`_FullPyramidPNet`
builds the pyramid as the reference MTCNN implementation does: from ``12 / min_face_size`` down
to where the image's short side reaches 12 px, level sizes rounded up.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from mtcnn import MTCNN
from mtcnn.stages import StageONet, StagePNet, StageRNet
from mtcnn.utils.bboxes import (
    generate_bounding_box,
    resize_to_square,
    smart_nms_from_bboxes,
    upscale_bboxes,
)
from PIL import Image

from tf_models.faces.crop import (  # noqa: F401  crop_face and box_iou: re-exported for callers
    DEFAULT_DETECT_MAX_SIDE,
    DEFAULT_MIN_CONFIDENCE,
    DEFAULT_MIN_FACE_SIZE,
    as_rgb_uint8,
    box_iou,
    crop_face,
    resize_array,
)

__all__ = [
    "DEFAULT_DETECT_MAX_SIDE",
    "DEFAULT_MIN_CONFIDENCE",
    "DEFAULT_MIN_FACE_SIZE",
    "DEFAULT_SCALE_FACTOR",
    "KEYPOINT_NAMES",
    "MTCNN_MIN_FACE",
    "DetectedFace",
    "FaceDetector",
    "box_iou",
    "crop_face",
    "get_face_detector",
]

# PNet looks at 12x12 windows: a face must be at least this many pixels in the image it sees.
MTCNN_MIN_FACE = 12

# The reference implementation's pyramid step (~1/sqrt(2)). Coarser steps (0.6, 0.5) are faster
# but a face whose size falls between two levels gets weaker proposals; 0.709 already meets the
# speed target (scripts/bench_detection.py).
DEFAULT_SCALE_FACTOR = 0.709

KEYPOINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# mtcnn's own stage thresholds (PNet, RNet, ONet). ONet's is lowered when the caller asks for
# less confidence than it, else those faces could never come back.
_THRESHOLD_PNET = 0.6
_THRESHOLD_RNET = 0.7
_THRESHOLD_ONET = 0.8


@dataclass(frozen=True)
class DetectedFace:
    """One face, in the ORIGINAL image's pixel coordinates."""

    box: tuple[int, int, int, int]  # x, y, width, height; inside the image, width and height > 0
    confidence: float
    keypoints: dict[str, tuple[float, float]]  # KEYPOINT_NAMES -> (x, y), clamped to the image

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]

    @property
    def landmarks(self) -> np.ndarray:
        """The keypoints as a 5 x 2 float array (x, y) in :data:`KEYPOINT_NAMES` order (what alignment takes)."""
        return np.array([self.keypoints[name] for name in KEYPOINT_NAMES], np.float64)


# ---------------------------------------------------------------------------------------------
# The shared MTCNN: faster stages, one instance per process
# ---------------------------------------------------------------------------------------------


class _GraphModel:
    """Calls a Keras network through one traced ``tf.function``.

    Eager Keras runs every layer (and each PReLU's four ops) from Python; at MTCNN's tiny sizes
    that overhead is about half of the network's time. The input signature leaves the batch
    (number of candidate boxes) free: one trace, whatever the image.
    """

    def __init__(self, model: Any, input_shape: tuple[int | None, ...]) -> None:
        self.model = model
        self._fn = tf.function(model, input_signature=[tf.TensorSpec(input_shape, tf.float32)])

    def __call__(self, inputs: Any) -> Any:
        return self._fn(tf.cast(inputs, tf.float32))


def _pyramid_scales(min_side: int, min_face_size: float, scale_factor: float) -> list[float]:
    """MTCNN pyramid: from ``12 / min_face_size`` down while the short side still holds 12 px."""
    scales = []
    scale = MTCNN_MIN_FACE / min_face_size
    while min_side * scale >= MTCNN_MIN_FACE:
        scales.append(scale)
        scale *= scale_factor
    return scales


# Pyramid levels run through PNet in one graph call, this many at a time (unused slots repeat the
# smallest level, which costs next to nothing). 16 covers a 640-px image in one call.
_PYRAMID_CHUNK = 16


class _FullPyramidPNet(StagePNet):
    """mtcnn's PNet stage with a correct image pyramid, run as one graph (see module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        # All levels in one traced graph: TensorFlow runs them in parallel on its inter-op
        # threads, and Python dispatches once per image instead of twice per level. That halves
        # PNet's time against a loop of per-level graph calls. Sizes are a tensor, so a new
        # image size never retraces.
        self._pyramid = tf.function(
            self._run_levels,
            input_signature=[
                tf.TensorSpec((None, None, None, 3), tf.float32),
                tf.TensorSpec((_PYRAMID_CHUNK, 2), tf.int32),
            ],
        )

    def _run_levels(self, images: tf.Tensor, sizes: tf.Tensor) -> list[Any]:
        # AREA from the full image at every level, as mtcnn does (no blur compounding).
        return [
            self._model(tf.image.resize(images, sizes[i], method=tf.image.ResizeMethod.AREA))
            for i in range(_PYRAMID_CHUNK)
        ]

    def __call__(
        self,
        images_normalized: Any,
        images_oshapes: Any,
        min_face_size: float = DEFAULT_MIN_FACE_SIZE,
        scale_factor: float = DEFAULT_SCALE_FACTOR,
        threshold_pnet: float = _THRESHOLD_PNET,
        nms_pnet1: float = 0.5,
        nms_pnet2: float = 0.7,
        **kwargs: Any,
    ) -> np.ndarray:
        batch, height, width = (int(d) for d in images_normalized.shape[:3])
        scales = _pyramid_scales(min(height, width), min_face_size, scale_factor)
        # Level sizes rounded UP as in the reference MTCNN (facenet's detect_face.py); mtcnn 1.0
        # truncates, which on CelebA's 178x218 faces costs confidence (10 -> 7 of 10 found).
        sizes = [(math.ceil(height * s), math.ceil(width * s)) for s in scales]
        images = tf.convert_to_tensor(images_normalized, tf.float32)
        outputs: list[Any] = []
        for start in range(0, len(sizes), _PYRAMID_CHUNK):
            chunk = sizes[start : start + _PYRAMID_CHUNK]
            padded = chunk + [chunk[-1]] * (_PYRAMID_CHUNK - len(chunk))
            outputs.extend(self._pyramid(images, tf.constant(padded, tf.int32))[: len(chunk)])

        per_scale = []
        for scale, (bbox_reg, bbox_class) in zip(scales, outputs):
            proposals = generate_bounding_box(bbox_reg, bbox_class, threshold_pnet)
            # Back to image pixels by the nominal scale, as mtcnn does.
            proposals = upscale_bboxes(proposals, np.full(batch, scale))
            per_scale.append(smart_nms_from_bboxes(proposals, threshold=nms_pnet1, method="union",
                                                   initial_sort=False))
        bboxes = np.concatenate(per_scale, axis=0) if per_scale else np.empty((0, 6))
        bboxes = smart_nms_from_bboxes(bboxes, threshold=nms_pnet2, method="union", initial_sort=True)
        return resize_to_square(bboxes)


class _GraphRNet(StageRNet):
    def __init__(self) -> None:
        super().__init__()
        self._model = _GraphModel(self._model, (None, 24, 24, 3))


class _GraphONet(StageONet):
    def __init__(self) -> None:
        super().__init__()
        self._model = _GraphModel(self._model, (None, 48, 48, 3))


def _build_mtcnn() -> MTCNN:
    return MTCNN(stages=[_FullPyramidPNet(), _GraphRNet(), _GraphONet()])


_MTCNN_LOCK = threading.Lock()
_MTCNN: MTCNN | None = None


def _shared_mtcnn() -> MTCNN:
    """The one MTCNN of this process, built on first use (the first detection then traces ~1 s)."""
    global _MTCNN
    if _MTCNN is None:
        with _MTCNN_LOCK:
            if _MTCNN is None:  # another thread may have built it while we waited
                _MTCNN = _build_mtcnn()
    return _MTCNN


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


class FaceDetector:
    """MTCNN face detector that works on a downscaled copy and answers in original pixels.

    ``detect_max_side``: longer side of the copy the detector sees (larger images only).
    ``min_face_size``: smallest face searched for, in ORIGINAL pixels. The copy cannot resolve
    faces under 12 px, so the effective minimum is ``max(min_face_size, 12 * long_side /
    detect_max_side)``: 24 px for a 1280x960 photo, 75 px for a 4000x3000 one at 640.
    ``min_confidence``: faces below this ONet score are dropped.
    ``scale_factor``: step of MTCNN's image pyramid.

    Instances hold no per-image state and can be shared across threads; get them from
    :func:`get_face_detector`, all of them use the process's one MTCNN.
    """

    def __init__(
        self,
        detect_max_side: int = DEFAULT_DETECT_MAX_SIDE,
        min_face_size: int = DEFAULT_MIN_FACE_SIZE,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        scale_factor: float = DEFAULT_SCALE_FACTOR,
    ) -> None:
        if int(detect_max_side) != detect_max_side or detect_max_side < MTCNN_MIN_FACE:
            raise ValueError(
                f"detect_max_side must be an integer >= {MTCNN_MIN_FACE}. Received: {detect_max_side!r}"
            )
        if not min_face_size > 0:
            raise ValueError(f"min_face_size must be > 0 (pixels). Received: {min_face_size!r}")
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1]. Received: {min_confidence!r}")
        if not 0.1 <= scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in [0.1, 1). Received: {scale_factor!r}")
        self.detect_max_side = int(detect_max_side)
        self.min_face_size = min_face_size
        self.min_confidence = float(min_confidence)
        self.scale_factor = float(scale_factor)

    def __repr__(self) -> str:
        return (
            f"FaceDetector(detect_max_side={self.detect_max_side}, min_face_size={self.min_face_size}, "
            f"min_confidence={self.min_confidence}, scale_factor={self.scale_factor})"
        )

    @property
    def mtcnn(self) -> MTCNN:
        """The process-wide MTCNN every detector uses."""
        return _shared_mtcnn()

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an HxWx3 uint8 RGB image (HxW grayscale is accepted), largest box first."""
        image = as_rgb_uint8(image)
        height, width = image.shape[:2]
        scale = min(1.0, self.detect_max_side / max(height, width))
        if scale < 1.0:
            small = resize_array(image, max(1, round(width * scale)), max(1, round(height * scale)),
                            Image.Resampling.BILINEAR, reducing_gap=1.0)
        else:
            small = image
        sx, sy = width / small.shape[1], height / small.shape[0]
        # min_face_size is in original pixels: map it to the copy so the copy searches the same
        # faces; it cannot go below PNet's window, which is what limits small faces on big images.
        min_face = max(float(MTCNN_MIN_FACE), self.min_face_size / max(sx, sy))
        if min(small.shape[:2]) < min_face:
            return []  # no face of the requested size fits

        raw = self.mtcnn.detect_faces(
            small.astype(np.float32),  # float32 in: mtcnn then normalises in float32, not float64
            min_face_size=min_face,
            scale_factor=self.scale_factor,
            threshold_pnet=_THRESHOLD_PNET,
            threshold_rnet=_THRESHOLD_RNET,
            threshold_onet=min(_THRESHOLD_ONET, self.min_confidence),
            box_format="xywh",
        )
        faces = []
        for found in raw:
            confidence = float(found["confidence"])
            if confidence < self.min_confidence:
                continue
            bx, by, bw, bh = (float(v) for v in found["box"])
            x1, y1 = max(0, round(bx * sx)), max(0, round(by * sy))
            x2, y2 = min(width, round((bx + bw) * sx)), min(height, round((by + bh) * sy))
            if x2 <= x1 or y2 <= y1:
                continue  # degenerate after clamping: nothing of it is in the image
            keypoints = {  # not rounded again: alignment turns the face on them (mtcnn rounds in `small`)
                name: (
                    min(width - 1.0, max(0.0, float(found["keypoints"][name][0]) * sx)),
                    min(height - 1.0, max(0.0, float(found["keypoints"][name][1]) * sy)),
                )
                for name in KEYPOINT_NAMES
            }
            faces.append(DetectedFace((x1, y1, x2 - x1, y2 - y1), confidence, keypoints))
        faces.sort(key=lambda f: (f.area, f.confidence), reverse=True)
        return faces


_DETECTORS: dict[tuple[int, float, float, float], FaceDetector] = {}
_DETECTORS_LOCK = threading.Lock()


def get_face_detector(
    detect_max_side: int = DEFAULT_DETECT_MAX_SIDE,
    min_face_size: int = DEFAULT_MIN_FACE_SIZE,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
) -> FaceDetector:
    """The process-wide detector for these settings (same settings -> same object)."""
    key = (int(detect_max_side), float(min_face_size), float(min_confidence), float(scale_factor))
    with _DETECTORS_LOCK:
        detector = _DETECTORS.get(key)
        if detector is None:
            detector = FaceDetector(detect_max_side, min_face_size, min_confidence, scale_factor)
            _DETECTORS[key] = detector
    return detector
