"""The shared face-identity photos as one table: every photo, its person, and an identity-disjoint split.

Two sources (see ``../shared/data/README.md``):

- ``faces/<set>/<Person Name>/*.jpg``: named people from six public sets. ``faces/same_person.csv``
  lists people filed under two sets; they are merged into one person here, so a person is never two
  classes and never on both sides of the split.
- ``celeba/gender_labels.csv``: CelebA photos with an anonymous ``identity`` number (person
  ``celeba/<number>``).

The evaluation people (:func:`identity_disjoint_split`) are drawn by a hash of the person's name,
so the split is the same on every machine and does not move when other people are added.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from tf_models.images import is_image_path

FACE_SETS_DIR = "faces"
SAME_PERSON_FILE = "same_person.csv"
CELEBA_DIR = "celeba"
# Sets whose people can be held out for evaluation. Extended Yale B and Yale are lighting studies
# of a few people (some photos nearly black), not the web and phone photos the embedder is for.
EVAL_SETS = ("lfw_deepfunneled", "glint360k_celeb24", "pins_subset14", "facescrub_csc411_subset12")
EVAL_MIN_PHOTOS = 6  # an evaluation person has at least 5 enrolment photos + 1 to test
EVAL_FRACTION = 0.3  # share of those people held out (drawn by name hash)


def _person_aliases(faces_dir: Path) -> dict[str, str]:
    """``"<set>/<folder>"`` -> merged person name, from ``same_person.csv``."""
    path = faces_dir / SAME_PERSON_FILE
    if not path.is_file():
        return {}
    table = pd.read_csv(path)
    aliases = {}
    for row in table.itertuples():
        for folder in str(row.folders).split(";"):
            aliases[folder.strip()] = f"same/{row.person}"
    return aliases


def load_face_identities(data_root: str | Path, *, include_celeba: bool = True) -> pd.DataFrame:
    """Every face photo of the shared data: columns ``source``, ``person``, ``set``; one row a photo.

    ``data_root`` is the shared data folder (holding ``faces/`` and optionally ``celeba/``).
    People in two sets are merged (``same_person.csv``); their ``set`` is the first folder's.
    """
    root = Path(data_root).expanduser()
    faces_dir = root / FACE_SETS_DIR
    if not faces_dir.is_dir():
        raise FileNotFoundError(f"No face sets at {faces_dir}. Expected {FACE_SETS_DIR}/<set>/<Person Name>/*.jpg "
                                f"in the shared data folder. Received: data_root={str(data_root)!r}")
    aliases = _person_aliases(faces_dir)
    rows = []
    for set_dir in sorted(p for p in faces_dir.iterdir() if p.is_dir()):
        for person_dir in sorted(p for p in set_dir.iterdir() if p.is_dir()):
            folder = f"{set_dir.name}/{person_dir.name}"
            person = aliases.get(folder, folder)
            rows += [{"source": str(path), "person": person, "set": set_dir.name}
                     for path in sorted(person_dir.iterdir()) if path.is_file() and is_image_path(path)]
    frame = pd.DataFrame(rows, columns=["source", "person", "set"])
    merged_set = frame.groupby("person")["set"].transform("first")
    frame["set"] = merged_set
    if include_celeba:
        labels = root / CELEBA_DIR / "gender_labels.csv"
        if labels.is_file():
            celeba = pd.read_csv(labels, usecols=["image_id", "identity"])
            images = root / CELEBA_DIR / "img_align_celeba"
            frame = pd.concat([frame, pd.DataFrame({
                "source": [str(images / name) for name in celeba["image_id"]],
                "person": [f"celeba/{int(k)}" for k in celeba["identity"]],
                "set": "celeba",
            })], ignore_index=True)
    return frame.reset_index(drop=True)


def unit_hash(text: str) -> float:
    """A number in [0, 1) fixed by ``text`` (sha1), the same on every machine and Python."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:12], 16) / float(16 ** 12)


def identity_disjoint_split(frame: pd.DataFrame, *, eval_sets: tuple[str, ...] = EVAL_SETS,
                            min_photos: int = EVAL_MIN_PHOTOS, eval_fraction: float = EVAL_FRACTION) -> pd.Series:
    """``"train"`` or ``"eval"`` per row: whole people are held out, never single photos.

    A person is an evaluation candidate when their set is in ``eval_sets`` and they have at least
    ``min_photos`` photos; ``eval_fraction`` of the candidates are held out, chosen by name hash.
    """
    counts = frame.groupby("person")["source"].transform("size")
    candidate = frame["set"].isin(eval_sets) & (counts >= min_photos)
    held_out = frame["person"].map(lambda name: unit_hash(name) < eval_fraction)
    return pd.Series(["eval" if c and h else "train" for c, h in zip(candidate, held_out)],
                     index=frame.index, name="split")


__all__ = ["EVAL_SETS", "identity_disjoint_split", "load_face_identities", "unit_hash"]
