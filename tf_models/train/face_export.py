"""The face pretraining set as a small portable folder: for training on a machine without TensorFlow.

A GPU box with PyTorch but no TensorFlow (and no copy of the shared data) can still train the
project's face embedder: Keras 3 builds the same model on its torch backend
(``scripts/pretrain_faces_torch.py``). It needs what :func:`~tf_models.train.face_pretraining.pretrain`
feeds its model, made here once, exactly as that does: the framed faces of the photos trained on and
held back (resized to the embedder's input by the suite's own resize) and the centred teacher
targets. The folder holds ``part-NNN.npz`` files (WebP images, one byte string with offsets, so the
files load with ``allow_pickle=False``) and ``manifest.json``; about 1.4 KB a face at quality 75 (the recipe re-compresses at 30-95 anyway).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from tf_models.images import resize_images
from tf_models.train.face_data import FramedFaces
from tf_models.train.face_pretraining import PretrainConfig, centred_teacher, training_people
from tf_models.train.face_recipe import EXPORT_MANIFEST_FILE as MANIFEST_FILE

PART_ROWS = 4000


def export_pretraining_set(faces: FramedFaces, config: PretrainConfig, out: str | Path, *, quality: int = 75,
                           progress: bool = True) -> Path:
    """Writes the photos ``pretrain(config)`` trains on and holds back, with their targets, to ``out``."""
    if faces.teacher is None:
        raise ValueError("The export carries the teacher's targets: prepare the faces with the teacher "
                         "(prepare_faces(..., with_teacher=True)). Received: faces.teacher=None")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100. Received: quality={quality}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise FileExistsError(f"{out} holds other files and no {MANIFEST_FILE}: not an earlier export, left as it is. "
                              f"Give a new or empty folder. Received: out={str(out)!r}")
    rows = faces.rows
    is_train, is_val = (mask.to_numpy() for mask in training_people(rows, config))
    targets, mean = centred_teacher(faces.teacher, is_train)
    keep = np.flatnonzero(is_train | is_val)
    missing = keep[~np.isfinite(targets[keep]).all(axis=1)]
    if len(missing):
        raise ValueError(f"{len(missing)} photos to export have no teacher embedding (NaN), the first "
                         f"{rows['source'].iloc[missing[0]]!r}: prepare the faces again")
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("part-*.npz"), out / MANIFEST_FILE]:  # an earlier export, replaced
        old.unlink(missing_ok=True)
    people = rows["person"].to_numpy().astype(str)
    sizes = []
    for part, start in enumerate(tqdm(range(0, len(keep), PART_ROWS), desc="exporting faces", unit="part",
                                      disable=not progress)):
        index = keep[start:start + PART_ROWS]
        pixels = np.asarray(resize_images(faces.crops[index], config.input_size)).astype(np.uint8)
        blobs = []
        for image in pixels:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "WEBP", quality=quality)
            blobs.append(buffer.getvalue())
        offsets = np.cumsum([0] + [len(b) for b in blobs])
        np.savez_compressed(out / f"part-{part:03d}.npz", blob=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
                 row=index, person=people[index], is_val=is_val[index], teacher=targets[index].astype(np.float16))
        sizes.append(int(offsets[-1]))
    manifest = {"input_size": list(config.input_size), "crop_align": config.crop_align, "webp_quality": quality,
                "photos_trained_on": int(is_train.sum()), "photos_held_back": int(is_val.sum()),
                "people_trained_on": int(rows.loc[is_train, "person"].nunique()),
                "image_bytes": int(sum(sizes)), "teacher_mean": [round(float(v), 7) for v in mean]}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return out


__all__ = ["MANIFEST_FILE", "export_pretraining_set"]
