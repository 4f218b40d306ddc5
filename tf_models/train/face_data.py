"""Face photos -> framed face crops (+ teacher embeddings), cached once for face pretraining.

Every photo goes through the project's own detector and crop (:mod:`tf_models.faces`), exactly what
serving does to a face in a photo, so the embedder learns on the framing it will see. With the
dlib teacher installed, each face also gets dlib's 128-D embedding (the distillation target).

The work is cut into chunks of :data:`CHUNK_ROWS` photos written as ``chunk-NNNNN.npz``: an
interrupted preparation resumes at the first missing chunk, and ``workers`` processes share the
chunks (one core each). A photo that cannot be read is reported and left out, never guessed.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tf_models.faces.crop import CropSettings
from tf_models.files import atomic_write
from tf_models.faces.dlib_reference import DLIB_DIM

CHUNK_ROWS = 512
PREPARE_VERSION = 2  # bump when what a chunk holds changes (2: keypoints, aligned crops)


@dataclass(frozen=True)
class FramedFaces:
    """The prepared faces, row-aligned with ``rows`` (the photos that could be read)."""

    rows: pd.DataFrame  # source, person, set, split, found ("face" | "whole"), box_x/y/w/h
    crops: np.ndarray  # uint8 N x H x W x 3, the serving crop of each photo's face
    keypoints: np.ndarray  # float32 N x 5 x 2 MTCNN keypoints in the photo (NaN where kept whole)
    teacher: np.ndarray | None  # float32 N x 128 unit dlib embeddings, None without the teacher
    skipped: list[tuple[str, str]]  # (photo, reason) left out


def _pick_face(faces: list, image_shape: tuple[int, ...]):
    """The subject of a portrait: of the faces at least half the largest's area, the most central."""
    if not faces:
        return None
    largest = max(face.area for face in faces)
    height, width = image_shape[:2]

    def off_centre(face) -> float:
        x, y, w, h = face.box
        return ((x + w / 2 - width / 2) / width) ** 2 + ((y + h / 2 - height / 2) / height) ** 2

    return min((f for f in faces if f.area >= 0.5 * largest), key=off_centre)


def _prepare_chunk(args: tuple[list[str], CropSettings, bool, str]) -> str:
    """Frames (and embeds with the teacher) one chunk of photos; writes ``path`` and returns it."""
    sources, crop, with_teacher, path = args
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    from tf_models.faces.crop import cut_face
    from tf_models.faces.detector import get_face_detector
    from tf_models.images import ImageReadError, read_image

    detector = get_face_detector(crop.detect_max_side, crop.min_face_size, crop.min_confidence)
    teacher = None
    if with_teacher:
        from tf_models.faces.dlib_reference import DlibEmbedder

        teacher = DlibEmbedder()
    n = len(sources)
    crops = np.zeros((n, *crop.size, 3), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    keypoints = np.full((n, 5, 2), np.nan, np.float32)
    found = np.zeros(n, np.int8)  # 1 face found, 0 kept whole, -1 unreadable
    targets = np.full((n, DLIB_DIM), np.nan, np.float32)
    reasons = [""] * n
    for k, source in enumerate(sources):
        try:
            image = read_image(source)
        except ImageReadError as err:
            found[k], reasons[k] = -1, err.reason
            continue
        face = _pick_face(detector.detect(image), image.shape)
        if face is not None:
            box, points, margin, found[k] = face.box, face.landmarks, crop.margin, 1
            keypoints[k] = points
        else:  # already a tight face crop (aligned sets): kept whole, as keep_whole_if_no_face does
            box, points, margin = (0, 0, image.shape[1], image.shape[0]), None, 0.0
        boxes[k] = box
        crops[k] = cut_face(image, box, points, crop, margin=margin)
        if teacher is not None:
            targets[k] = teacher.embed(image, box)
    buffer = io.BytesIO()
    np.savez(buffer, crops=crops, boxes=boxes, keypoints=keypoints, found=found, teacher=targets, reasons=np.asarray(reasons))
    atomic_write(path, buffer.getvalue())  # an interrupted preparation resumes at the first missing chunk
    return path


def prepare_faces(rows: pd.DataFrame, cache_dir: str | Path, crop: CropSettings = CropSettings(), *,
                  with_teacher: bool = True, workers: int = 2, progress: bool = True) -> FramedFaces:
    """Frames every photo of ``rows`` (columns ``source``, ...) once; resumable; see the module docstring."""
    # crop.key(): the settings and CROP_CODE_VERSION, so a change to how faces are cut re-frames them.
    key_text = json.dumps({"sources": rows["source"].tolist(), "crop": crop.key(), "teacher": with_teacher,
                           "version": PREPARE_VERSION}, sort_keys=True)
    folder = Path(cache_dir) / hashlib.sha1(key_text.encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    sources = rows["source"].tolist()
    jobs = [(sources[i:i + CHUNK_ROWS], crop, with_teacher, str(folder / f"chunk-{i // CHUNK_ROWS:05d}.npz"))
            for i in range(0, len(sources), CHUNK_ROWS)]
    missing = [job for job in jobs if not Path(job[3]).is_file()]
    if missing:
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(missing), desc="framing faces", unit="chunk",
                   disable=not progress)
        if workers > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(_prepare_chunk, missing):
                    bar.update()
        else:
            for job in missing:
                _prepare_chunk(job)
                bar.update()
        bar.close()
    parts = [np.load(job[3], allow_pickle=False) for job in jobs]
    found = np.concatenate([p["found"] for p in parts])
    reasons = np.concatenate([p["reasons"] for p in parts])
    keep = found >= 0
    kept = rows.reset_index(drop=True)[keep].reset_index(drop=True)
    boxes = np.concatenate([p["boxes"] for p in parts])[keep]
    kept = kept.assign(found=np.where(found[keep] == 1, "face", "whole"),
                       box_x=boxes[:, 0], box_y=boxes[:, 1], box_w=boxes[:, 2], box_h=boxes[:, 3])
    crops = np.concatenate([p["crops"] for p in parts])[keep]
    keypoints = np.concatenate([p["keypoints"] for p in parts])[keep]
    teacher = np.concatenate([p["teacher"] for p in parts])[keep] if with_teacher else None
    skipped = [(s, str(r)) for s, r, k in zip(sources, reasons, keep) if not k]
    return FramedFaces(kept, crops, keypoints, teacher, skipped)


__all__ = ["FramedFaces", "prepare_faces"]
