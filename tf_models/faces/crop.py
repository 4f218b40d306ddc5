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
CROP_CODE_VERSION = 2


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
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0. Received: {margin!r}")
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be (height, width) with positive integers. Received: {size!r}")
    out_h, out_w = int(size[0]), int(size[1])

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
