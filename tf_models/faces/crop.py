"""Cutting faces out of photos: the crop settings every run records, and the crop itself.

No TensorFlow here: :class:`CropSettings` is part of every training config and run folder, and the
crop is plain numpy + PIL. Every default of face finding and cropping lives here, once.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

DEFAULT_DETECT_MAX_SIDE = 640  # photos are downscaled to this for detection; boxes map back
DEFAULT_MIN_FACE_SIZE = 20  # mtcnn's own default, here in ORIGINAL image pixels
DEFAULT_MIN_CONFIDENCE = 0.9  # MTCNN confidence below this is not a face
DEFAULT_CROP_MARGIN = 0.2  # fraction of the face box added on each side
DEFAULT_CROP_SIZE = (160, 160)  # (height, width) of a saved face crop
MULTIPLE_FACE_POLICIES = ("skip", "largest")
# Part of every crop-cache key: bump when detection or cropping code changes what a crop holds.
CROP_CODE_VERSION = 3

# Where an upright face's five MTCNN keypoints (left eye, right eye, nose, mouth left, mouth right)
# sit in the square of its face box (side max(w, h) on the box centre; 0..1 across, 0..1 down).
# An aligned crop moves a face's keypoints onto these spots, so every face is upright, centred and
# at one scale, as the faces of a margin-0 box crop are on average. Measured with
# get_face_detector() on 338 one-face photos (face box >= 60 px) drawn at random (seed 0) from
# ../shared/data/faces: medians, made left-right symmetric (means differ by < 0.007).
FACE_TEMPLATE = np.array([[0.3234, 0.3940], [0.6766, 0.3940], [0.5000, 0.6062], [0.3422, 0.7600], [0.6578, 0.7600]],
                         np.float64)


@dataclass(frozen=True)
class CropSettings:
    """How faces are found and cut out; saved with every run so inference crops the same way."""

    margin: float = DEFAULT_CROP_MARGIN  # fraction of the face box added on each side (context helps recognition)
    size: tuple[int, int] = DEFAULT_CROP_SIZE  # (height, width) of the saved crop
    multiple_faces: str = "skip"  # 'skip' the photo, or keep the 'largest' face
    keep_whole_if_no_face: bool = False  # already-cropped face photos: keep the whole image if MTCNN finds none
    detect_max_side: int = DEFAULT_DETECT_MAX_SIDE  # photos are downscaled to this for detection; boxes map back to full size
    min_face_size: int = DEFAULT_MIN_FACE_SIZE  # smallest face, in original pixels
    min_confidence: float = DEFAULT_MIN_CONFIDENCE  # MTCNN confidence below this is not a face
    # Turn the face upright on its five keypoints (align_face) instead of cutting the box square
    # (crop_face). The shipped face weights verify better on aligned faces (MODEL_CARD.md). Run folders
    # written before this option read back as False, as they were cropped.
    align: bool = True

    def __post_init__(self) -> None:
        if self.multiple_faces not in MULTIPLE_FACE_POLICIES:
            raise ValueError(f"multiple_faces must be one of {MULTIPLE_FACE_POLICIES}. "
                             f"Received: multiple_faces={self.multiple_faces!r}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0. Received: margin={self.margin}")

    def key(self) -> str:
        """A short hash of the settings: part of every cache key."""
        settings = {**asdict(self), "code_version": CROP_CODE_VERSION}
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def as_rgb_uint8(image: Any, what: str = "image") -> np.ndarray:
    """Accepts HxWx3 uint8 RGB; HxW or HxWx1 uint8 grayscale is stacked to RGB. Else ValueError."""
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"Expected {what} as a numpy array (HxWx3 uint8 RGB). Received: {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise ValueError(
            f"Expected {what} with dtype uint8 (0..255). Received: shape={image.shape}, dtype={image.dtype}"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        # Grayscale (e.g. the ORL faces): MTCNN needs three channels; equal channels are exact.
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"Expected {what} of shape HxWx3 (RGB) or HxW (grayscale). Received: shape={image.shape}, "
            f"dtype={image.dtype}. Convert RGBA/other modes with PIL's .convert('RGB')."
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"Expected a non-empty {what}. Received: shape={image.shape}")
    return image


def resize_array(image: np.ndarray, width: int, height: int, resample: int, reducing_gap: float) -> np.ndarray:
    # reducing_gap lets PIL first shrink by a whole factor with a box filter (an area average,
    # what mtcnn itself uses for its pyramid), then resample the rest: 1.0 is much faster than a
    # plain bilinear resize of a big photo; larger gaps are closer to a fair resample.
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((width, height), resample, reducing_gap=reducing_gap))



def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, width, height) boxes; 0 when either is empty."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# ---------------------------------------------------------------------------------------------
# Cropping
# ---------------------------------------------------------------------------------------------


def _output_size(margin: float, size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a crop after checking ``margin`` and ``size``; ValueError echoing a bad one."""
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0. Received: {margin!r}")
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be (height, width) with positive integers. Received: {size!r}")
    return int(size[0]), int(size[1])


def crop_face(
    image: np.ndarray,
    box: tuple[int, int, int, int],
    margin: float = DEFAULT_CROP_MARGIN,
    size: tuple[int, int] = DEFAULT_CROP_SIZE,
) -> np.ndarray:
    """Square crop around a face box, resized to ``size`` (height, width); uint8 HxWx3.

    The box (x, y, width, height) grows by ``margin`` of its width/height on each side, then
    becomes a square of side ``max(w, h) * (1 + 2 * margin)`` on the box centre, so faces keep
    their aspect ratio. Where the square leaves the image it is padded with black, as deepface
    does: black adds no content (edge replication smears border pixels into hair- or skin-like
    streaks) and the face stays centred at the same scale as crops away from the border.
    """
    image = as_rgb_uint8(image)
    if len(box) != 4:
        raise ValueError(f"box must be (x, y, width, height). Received: {box!r}")
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0) or not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"box must have a finite position and width, height > 0. Received: {box!r}")
    out_h, out_w = _output_size(margin, size)

    img_h, img_w = image.shape[:2]
    side = max(1, round(max(w, h) * (1.0 + 2.0 * margin)))
    left = round(x + w / 2.0 - side / 2.0)
    top = round(y + h / 2.0 - side / 2.0)
    # The part of the square that lies inside the image.
    src_x1, src_y1 = max(0, left), max(0, top)
    src_x2, src_y2 = min(img_w, left + side), min(img_h, top + side)
    if src_x2 <= src_x1 or src_y2 <= src_y1:
        raise ValueError(f"box {box!r} (with margin) lies outside the {img_w}x{img_h} image")

    if (src_x1, src_y1, src_x2, src_y2) == (left, top, left + side, top + side):
        square = image[top : top + side, left : left + side]
    else:
        square = np.zeros((side, side, 3), dtype=np.uint8)
        inside = image[src_y1:src_y2, src_x1:src_x2]
        square[src_y1 - top : src_y2 - top, src_x1 - left : src_x2 - left] = inside
    if square.shape[:2] == (out_h, out_w):
        return np.ascontiguousarray(square)
    # LANCZOS: sharp when shrinking (most faces in photos) and clean when enlarging small faces.
    return resize_array(square, out_w, out_h, Image.Resampling.LANCZOS, reducing_gap=3.0)


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + shift that best maps ``source`` points onto ``target``.

    Least squares over all points (Umeyama 1991, without reflection): with five noisy keypoints,
    no single point decides the angle or the scale. Points are N x 2 (x, y), N >= 2.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(0), target.mean(0)
    src, dst = source - source_mean, target - target_mean
    variance = (src ** 2).sum() / len(src)
    if not variance > 1e-12:
        raise ValueError(f"keypoints must not all be at one spot. Received: {source.tolist()}")
    u, singular, vt = np.linalg.svd(dst.T @ src / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])  # a rotation, never a mirror image
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign)) / variance
    return np.hstack([scale * rotation, (target_mean - scale * rotation @ source_mean)[:, None]])


def align_face(
    image: np.ndarray,
    keypoints: np.ndarray | Any,
    margin: float = DEFAULT_CROP_MARGIN,
    size: tuple[int, int] = DEFAULT_CROP_SIZE,
) -> np.ndarray:
    """The face turned upright on its five keypoints (:data:`FACE_TEMPLATE`), framed like :func:`crop_face`.

    ``keypoints``: 5 x 2 (x, y) in the image, in :data:`~tf_models.faces.detector.KEYPOINT_NAMES`
    order. ``margin`` adds that fraction of the template square on each side, as for a box. Parts
    of the frame outside the photo are black, as in :func:`crop_face`. uint8 ``size`` x 3.
    """
    image = as_rgb_uint8(image)
    try:
        points = np.asarray(keypoints, np.float64)
    except (TypeError, ValueError):
        points = np.full((0,), np.nan)
    if points.shape != FACE_TEMPLATE.shape or not np.isfinite(points).all():
        raise ValueError(f"keypoints must be 5 x 2 finite (x, y) points. Received: keypoints={keypoints!r}")
    out_h, out_w = _output_size(margin, size)
    target = (FACE_TEMPLATE + margin) / (1.0 + 2.0 * margin) * np.array([out_w, out_h])
    to_crop = similarity_transform(points, target)  # image pixels -> crop pixels
    scale = math.hypot(*to_crop[:, 0])  # crop pixels per image pixel
    # An affine warp samples a few pixels per output pixel: shrinking with it aliases. So a face
    # that shrinks is first box-reduced by a whole factor (as PIL's reducing_gap does), warped
    # upright onto a canvas a whole number of times the crop's size at about 1 canvas pixel per
    # image pixel, and the canvas shrunk to the crop with LANCZOS, as crop_face shrinks.
    reduce = max(1, int(1.0 / (3.0 * scale)))
    upsample = max(1, math.ceil(1.0 / (scale * reduce)))
    canvas_w, canvas_h = out_w * upsample, out_h * upsample
    inverse = np.linalg.inv(np.vstack([to_crop * upsample, [0, 0, 1]]))  # canvas pixels -> image pixels
    corners = np.array([[0, 0, 1], [canvas_w, 0, 1], [0, canvas_h, 1], [canvas_w, canvas_h, 1]], np.float64)
    reach = (corners @ inverse.T)[:, :2]
    pad = 2 * reduce + 2  # the bicubic kernel's reach, in image pixels
    height, width = image.shape[:2]
    x1, y1 = max(0, int(math.floor(reach[:, 0].min())) - pad), max(0, int(math.floor(reach[:, 1].min())) - pad)
    x2 = min(width, int(math.ceil(reach[:, 0].max())) + pad)
    y2 = min(height, int(math.ceil(reach[:, 1].max())) + pad)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"keypoints {points.tolist()} (with margin) lie outside the {width}x{height} image")
    region = Image.fromarray(np.ascontiguousarray(image[y1:y2, x1:x2]))
    if reduce > 1:
        region = region.reduce(reduce)
    # region pixel (u, v) = image pixel ((x - x1) / reduce, (y - y1) / reduce): fold that into the warp.
    to_region = np.array([[1.0 / reduce, 0, -x1 / reduce], [0, 1.0 / reduce, -y1 / reduce], [0, 0, 1]])
    canvas_to_region = (to_region @ inverse)[:2]
    # Bilinear is enough on a canvas LANCZOS shrinks afterwards (and about half bicubic's time).
    resample = Image.Resampling.BILINEAR if upsample > 1 else Image.Resampling.BICUBIC
    canvas = region.transform((canvas_w, canvas_h), Image.Transform.AFFINE, tuple(canvas_to_region.ravel()),
                              resample=resample, fillcolor=(0, 0, 0))
    if upsample > 1:
        canvas = canvas.resize((out_w, out_h), Image.Resampling.LANCZOS)
    return np.asarray(canvas)


def cut_face(image: np.ndarray, box: tuple[int, int, int, int], keypoints: Any | None, crop: CropSettings,
             margin: float | None = None) -> np.ndarray:
    """A face as ``crop`` says: aligned on its keypoints when ``crop.align`` and it has them, else the box square.

    ``margin`` overrides ``crop.margin`` (0 for a photo kept whole). The one place every face in
    training and serving is cut out, so both always cut the same way.
    """
    margin = crop.margin if margin is None else margin
    if crop.align and keypoints is not None:
        return align_face(image, keypoints, margin=margin, size=crop.size)
    return crop_face(image, box, margin=margin, size=crop.size)
