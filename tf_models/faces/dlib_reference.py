"""dlib's 128-D face embedding (``face_recognition_models``, MIT): the reference and the teacher.

Used only by face pretraining (as the distillation teacher) and by ``scripts/bench_faces.py`` (as
the reference to measure against); never by serving. It is an optional extra:
``pip install dlib-bin face_recognition_models`` (``make faces-extra``).

dlib aligns a face with its own 5-point landmark model inside the box our detector found, cuts a
150x150 chip and embeds it; descriptors are L2-normalised here so they compare by cosine like ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DLIB_DIM = 128
INSTALL_HINT = "pip install dlib-bin face_recognition_models"


def dlib_available() -> bool:
    """True when dlib and its face models are installed."""
    try:
        import dlib  # noqa: F401
        import face_recognition_models  # noqa: F401
    except ImportError:
        return False
    return True


class DlibEmbedder:
    """``embed(image, box)`` -> unit 128-D float32 vector of the face at ``box`` (x, y, w, h)."""

    def __init__(self) -> None:
        try:
            import dlib
            import face_recognition_models as models
        except ImportError as err:
            raise ImportError(f"dlib's face embedding is not installed ({err}). Install it with: {INSTALL_HINT}") from err
        self._dlib = dlib
        self._landmarks = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._network = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def embed(self, image: np.ndarray, box: Sequence[float]) -> np.ndarray:
        x, y, w, h = (int(round(v)) for v in box)
        rect = self._dlib.rectangle(x, y, x + max(w, 1), y + max(h, 1))
        shape = self._landmarks(np.ascontiguousarray(image), rect)
        vector = np.asarray(self._network.compute_face_descriptor(image, shape), np.float32)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def embed_chip(self, chip: np.ndarray) -> np.ndarray:
        """Unit 128-D vector of a 150x150 RGB face chip taken as it is: no landmark alignment."""
        vector = np.asarray(self._network.compute_face_descriptor(np.ascontiguousarray(chip, np.uint8)), np.float32)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)


__all__ = ["DLIB_DIM", "DlibEmbedder", "INSTALL_HINT", "dlib_available"]
