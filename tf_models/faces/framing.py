"""Detected faces -> model inputs, framed exactly as the model saw faces in training.

Identity runs cut each face as ``crop.json`` says (turned upright on its five keypoints, or the box
square; margin, size) with :func:`~tf_models.faces.crop.cut_face`, as training did; gender runs were trained
on whole CelebA aligned images, so a face found in any photo is cut out with CelebA's framing.
Both then go through the training pipeline's own resize. :class:`FaceFramer` does both for the
:class:`~tf_models.serve.predictor.Predictor`, the int8 calibration and the runtime choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tf_models.faces.crop import CropSettings, crop_face, cut_face
from tf_models.faces.detector import DetectedFace, get_face_detector

# CelebA's aligned images (178x218) frame a face with context; gender models were trained on them,
# so a face found in any photo is cut out with the same framing. Measured by running
# get_face_detector() (default settings) over 400 images spread evenly over
# ../shared/data/celeba/img_align_celeba (396 with a face; medians): the MTCNN box is 0.523 of the
# image height (p10-p90 0.486-0.564), its centre is 0.569 of the height down (p10-p90 0.555-0.585)
# and horizontally centred (0.500, p10-p90 0.444-0.542).
CELEBA_ALIGNED_SIZE = (218, 178)  # (height, width)
CELEBA_BOX_HEIGHT_FRACTION = 0.523  # face-box height / image height
CELEBA_BOX_CENTRE_Y = 0.569  # face-box centre, as a fraction of the image height from the top



def resize_to_input(images: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """uint8 N x h x w x 3 -> float32 N x H x W x 3, resized as the training pipeline resizes.

    :func:`tf_models.images.resize_images`, the training pipeline's own resize (skipped, as in
    training, when the size already matches), so a crop reaches the model as in training.
    """
    from tf_models.images import resize_images

    if tuple(images.shape[1:3]) == tuple(input_size):
        return images.astype(np.float32)
    return resize_images(images, tuple(input_size)).numpy().astype(np.float32)


def celeba_frame_rect(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    """The (x, y, width, height) a CelebA aligned image would cover around this MTCNN face box."""
    x, y, w, h = box
    frame_h = h / CELEBA_BOX_HEIGHT_FRACTION
    frame_w = frame_h * CELEBA_ALIGNED_SIZE[1] / CELEBA_ALIGNED_SIZE[0]
    top = y + h / 2.0 - CELEBA_BOX_CENTRE_Y * frame_h
    return (x + w / 2.0 - frame_w / 2.0, top, frame_w, frame_h)


def celeba_frame(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Cuts a 178x218 CelebA-aligned-style image around a face box (black where it leaves the photo)."""
    left, top, frame_w, frame_h = celeba_frame_rect(box)
    # crop_face cuts squares: take the frame's height as the square's side (same centre), then
    # keep the frame's width from the middle of it.
    square = crop_face(image, (left + frame_w / 2.0 - frame_h / 2.0, top, frame_h, frame_h),
                       margin=0.0, size=(CELEBA_ALIGNED_SIZE[0], CELEBA_ALIGNED_SIZE[0]))
    cut = (CELEBA_ALIGNED_SIZE[0] - CELEBA_ALIGNED_SIZE[1]) // 2
    return np.ascontiguousarray(square[:, cut:cut + CELEBA_ALIGNED_SIZE[1]])


class FaceFramer:
    """Finds the faces in a photo and turns them into model inputs the way training saw faces.

    ``crop`` given (identity runs, from ``crop.json``): the training crop (aligned on the keypoints
    or the box square, margin, resized to ``crop.size``), then the pipeline's resize to ``input_size``. ``crop`` None (gender runs,
    trained on whole CelebA aligned images): a 178x218 CelebA framing around the face
    (:func:`celeba_frame`), then the same resize. ``whole_image_if_no_face``: a photo with no face
    found is classified whole (for photos that are already face crops).
    """

    def __init__(self, input_size: Sequence[int], crop: CropSettings | None = None,
                 whole_image_if_no_face: bool = False) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.crop = crop
        self.whole_image_if_no_face = bool(whole_image_if_no_face)
        settings = crop or CropSettings()
        self.detector = get_face_detector(settings.detect_max_side, settings.min_face_size, settings.min_confidence)

    def frame(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """One detected face -> uint8 crop (identity: ``crop.size``; gender: 178x218)."""
        if self.crop is not None:
            return cut_face(image, face.box, face.landmarks, self.crop)
        return celeba_frame(image, face.box)

    def whole(self, image: np.ndarray) -> np.ndarray:
        """The whole image as training used a photo kept whole: float32 1 x H x W x 3."""
        if self.crop is not None:  # students.py: whole box, no margin, square crop to crop.size
            whole = crop_face(image, (0, 0, image.shape[1], image.shape[0]), margin=0.0, size=self.crop.size)
        else:  # CelebA images went into training whole
            whole = image
        return resize_to_input(whole[None], self.input_size)

    def model_inputs(self, image: np.ndarray) -> tuple[np.ndarray, list[tuple[tuple[int, int, int, int], float | None]]]:
        """(float32 N x H x W x 3 inputs, [(box, detection confidence)]) for every face, largest first.

        N is 0 when no face is found (and ``whole_image_if_no_face`` is off).
        """
        faces = self.detector.detect(image)
        if not faces:
            if not self.whole_image_if_no_face:
                return np.zeros((0, *self.input_size, 3), np.float32), []
            return self.whole(image), [((0, 0, image.shape[1], image.shape[0]), None)]
        return self.inputs_for(image, faces), [(face.box, face.confidence) for face in faces]

    def inputs_for(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray:
        """Model inputs (float32 N x H x W x 3) for already detected faces, framed as in training."""
        return resize_to_input(np.stack([self.frame(image, face) for face in faces]), self.input_size)




__all__ = ["CELEBA_ALIGNED_SIZE", "FaceFramer", "celeba_frame", "celeba_frame_rect", "resize_to_input"]
