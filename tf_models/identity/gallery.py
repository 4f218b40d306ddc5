"""Open-set identity: a gallery of L2-normalised embeddings per person, matched by nearest centroid.

A closed-set classifier always names its top class, so a stranger in front of the camera would be
marked present as whichever student they look most like. Here a face is compared with every enrolled
person's centroid (the re-normalised mean of their embeddings) by cosine similarity and named only
when the best similarity reaches ``threshold``; otherwise it is Unknown (``Match.name is None``).

Embeddings come from the identity classifier's penultimate layer
(:func:`tf_models.models.classifier.with_embedding`), so a new person is enrolled from a few photos
without retraining, and removing one is deleting a row. The threshold is calibrated on validation
data for a target false-accept rate (:mod:`tf_models.identity.calibration`); embeddings of image
files come from :mod:`tf_models.identity.embedding`.

The gallery is shared by the app's concurrent requests: every method holds one lock, and
:meth:`IdentityGallery.save` writes temporary files and renames them over the old ones.
"""

from __future__ import annotations

import hashlib
import json
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tf_models.faces.verification import l2_normalize
from tf_models.files import atomic_write

GALLERY_JSON = "gallery.json"  # names, threshold, counts, checksum of the npz (human-readable)
GALLERY_NPZ = "gallery.npz"  # embeddings (float32) and the person index of each row
GALLERY_FORMAT = 1
DEFAULT_THRESHOLD = 0.5  # a placeholder until calibrate_gallery() sets a measured one


@dataclass(frozen=True)
class Match:
    """The open-set decision for one face.

    ``name`` is the person or None ("Unknown": best similarity below the threshold, or an empty
    gallery); ``best_name`` is the nearest person whatever the threshold (None only for an empty
    gallery); ``similarity`` is the cosine similarity to ``best_name``'s centroid (-1.0 when empty).
    ``closer_face``: set by :meth:`IdentityGallery.match_photo` only, the row of another face of the same
    photo that ``best_name`` went to because it is closer to them (this face is then Unknown).
    """

    name: str | None
    similarity: float
    best_name: str | None
    closer_face: int | None = None

    @property
    def is_known(self) -> bool:
        return self.name is not None


def _as_matrix(embeddings: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{what} must be a (n, dim) array of embeddings. Received: shape={np.shape(embeddings)}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{what} have dimension {array.shape[1]} but the gallery holds {dim}-dimensional "
                         "embeddings (from another model?). Received: shape=" + str(array.shape))
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contain NaN or infinity. Received: shape={array.shape}")
    return array


def person_key(name: str) -> str:
    """The one spelling of a person's name the gallery files them under (stripped, NFC)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"A person's name must be a non-empty string. Received: name={name!r}")
    # One spelling per person: macOS folder names and some keyboards give decomposed (NFD) accents.
    return unicodedata.normalize("NFC", name).strip()


def _check_threshold(threshold: float) -> float:
    value = float(threshold)
    # The tolerance admits calibrate_threshold's "next float above 1.0" (nobody accepted).
    if not -1.0 - 1e-6 <= value <= 1.0 + 1e-6:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1]. Received: threshold={threshold}")
    return value


class IdentityGallery:
    """Enrolled people (name -> L2-normalised embeddings), matched by nearest centroid with a cosine threshold.

    Thread-safe: one lock guards every read and write, so the app's concurrent requests may match,
    enrol and remove at the same time.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        self._lock = threading.RLock()
        self._people: dict[str, np.ndarray] = {}  # name -> (n_i, dim) unit rows
        self._centroids: dict[str, np.ndarray] = {}  # name -> (dim,) unit centroid
        self._matrix: tuple[list[str], np.ndarray] | None = None  # cached stacked centroids
        self._threshold = _check_threshold(threshold)

    # ---- people ----------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = _check_threshold(value)

    @property
    def names(self) -> list[str]:
        """Enrolled people, sorted."""
        with self._lock:
            return sorted(self._people)

    @property
    def dim(self) -> int | None:
        """Embedding dimension (None while empty)."""
        with self._lock:
            return next(iter(self._people.values())).shape[1] if self._people else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._people)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name.strip():
            return False
        with self._lock:
            return person_key(name) in self._people

    def counts(self) -> dict[str, int]:
        """Embeddings enrolled per person."""
        with self._lock:
            return {name: len(self._people[name]) for name in sorted(self._people)}

    def embeddings(self, name: str) -> np.ndarray:
        """A copy of one person's enrolled embeddings."""
        with self._lock:
            return self._people[self._existing(name)].copy()

    def enrol(self, name: str, embeddings: np.ndarray) -> int:
        """Adds embeddings for ``name`` (a new person or more photos of an enrolled one); no retraining.

        Returns the number of embeddings the person now has.
        """
        name = person_key(name)
        with self._lock:
            rows = l2_normalize(_as_matrix(embeddings, self.dim, "embeddings"))
            if len(rows) == 0:
                raise ValueError(f"Enrolling {name!r} needs at least one embedding. Received: shape={rows.shape}")
            stacked = np.concatenate([self._people[name], rows]) if name in self._people else rows
            mean = stacked.mean(axis=0)
            self._people[name] = stacked
            # Exactly opposite embeddings cancel out to zero: fall back to the first one.
            self._centroids[name] = l2_normalize(mean) if np.any(mean) else stacked[0]
            self._matrix = None
            return len(stacked)

    def remove(self, name: str) -> None:
        """Forgets a person: their faces come out Unknown from now on."""
        with self._lock:
            name = self._existing(name)
            del self._people[name], self._centroids[name]
            self._matrix = None

    def _existing(self, name: str) -> str:
        key = person_key(name)
        if key not in self._people:
            raise KeyError(f"{key!r} is not enrolled (enrolled: {len(self._people)} people, e.g. "
                           f"{', '.join(sorted(self._people)[:5]) or 'none'}). Received: name={name!r}")
        return key

    # ---- matching ----------------------------------------------------------------------------
    def centroids(self) -> tuple[list[str], np.ndarray]:
        """(names, (people, dim) unit centroids) in name order."""
        with self._lock:
            if self._matrix is None:
                names = sorted(self._centroids)
                matrix = np.stack([self._centroids[n] for n in names]) if names else np.zeros((0, 0), np.float32)
                self._matrix = (names, matrix)
            return self._matrix

    def similarities(self, embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(names, (n, people) cosine similarities of each embedding to each centroid)."""
        names, matrix = self.centroids()
        rows = l2_normalize(_as_matrix(embeddings, self.dim, "embeddings"))
        return names, (rows @ matrix.T if names else np.zeros((len(rows), 0), np.float32))

    def match(self, embeddings: np.ndarray) -> list[Match]:
        """Nearest centroid per embedding; below ``threshold`` (or an empty gallery) the name is None."""
        with self._lock:  # one consistent view of people and threshold
            threshold = self._threshold
            names, scores = self.similarities(embeddings)
        if not names:
            return [Match(None, -1.0, None) for _ in range(len(scores))]
        best = scores.argmax(axis=1)
        result = []
        for row, k in enumerate(best):
            similarity = float(scores[row, k])
            result.append(Match(names[k] if similarity >= threshold else None, similarity, names[k]))
        return result

    def match_photo(self, embeddings: np.ndarray) -> list[Match]:
        """:meth:`match` for the faces of one photo, where a person appears at most once.

        When several faces are nearest to the same person and reach the threshold, only the closest is
        named (on a tie, the first); the others are Unknown with ``closer_face`` saying which face took the name. They are
        not given their second-nearest person: a face whose nearest person is someone else in the photo
        is a stranger who looks like them far more often than a second enrolled person. A class photo's
        strangers are most often named as a student who is also in it; this rule stops that, but a
        stranger who looks like an absent student is still named when the similarity allows it.
        """
        matches = self.match(embeddings)
        winners: dict[str, int] = {}
        for row, match in enumerate(matches):
            if match.name is not None and (match.name not in winners
                                           or match.similarity > matches[winners[match.name]].similarity):
                winners[match.name] = row
        return [match if match.name is None or winners[match.name] == row
                else Match(None, match.similarity, match.best_name, closer_face=winners[match.name])
                for row, match in enumerate(matches)]

    # ---- persistence -------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Writes ``gallery.npz`` (embeddings) and ``gallery.json`` (names, threshold) atomically.

        Each file is written to a temporary file in ``folder`` and renamed over the old one, so a
        reader never sees a half-written file; the JSON carries the npz's SHA-1, so a reader that
        catches the two renames of another process's save in between gets a clear error, not a
        mismatched gallery.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            names = sorted(self._people)
            dim = self.dim or 0
            vectors = np.concatenate([self._people[n] for n in names]) if names else np.zeros((0, dim), np.float32)
            person = np.concatenate([np.full(len(self._people[n]), k, np.int32) for k, n in enumerate(names)]) \
                if names else np.zeros((0,), np.int32)
            npz_bytes = _npz_bytes(embeddings=vectors.astype(np.float32), person=person)
            manifest = {"format": GALLERY_FORMAT, "threshold": self._threshold, "dim": dim, "names": names,
                        "counts": [len(self._people[n]) for n in names],
                        "npz_sha1": hashlib.sha1(npz_bytes).hexdigest()}
            atomic_write(folder / GALLERY_NPZ, npz_bytes)
            atomic_write(folder / GALLERY_JSON, json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8"))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> IdentityGallery:
        """Reads a gallery written by :meth:`save` (no pickle: plain arrays and JSON)."""
        folder = Path(folder)
        json_path, npz_path = folder / GALLERY_JSON, folder / GALLERY_NPZ
        if not json_path.is_file() or not npz_path.is_file():
            raise FileNotFoundError(f"No gallery in {folder}: expected {GALLERY_JSON} and {GALLERY_NPZ} "
                                    "(written by IdentityGallery.save).")
        manifest = json.loads(json_path.read_text(encoding="utf-8"))
        if manifest.get("format") != GALLERY_FORMAT:
            raise ValueError(f"{json_path} has gallery format {manifest.get('format')!r}; this version reads "
                             f"{GALLERY_FORMAT}. Re-enrol the people or save with this version.")
        npz_bytes = npz_path.read_bytes()
        if hashlib.sha1(npz_bytes).hexdigest() != manifest["npz_sha1"]:
            raise ValueError(f"{npz_path} does not match {json_path} (a save in progress or an interrupted "
                             "copy); load again, or save the gallery again.")
        import io

        with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as data:
            vectors, person = data["embeddings"], data["person"]
        gallery = cls(threshold=manifest["threshold"])
        for k, name in enumerate(manifest["names"]):
            gallery.enrol(name, vectors[person == k])
        return gallery

    def __repr__(self) -> str:
        return f"IdentityGallery({len(self)} people, threshold={self._threshold:.4f})"


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
