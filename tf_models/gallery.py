"""Open-set identity: a gallery of L2-normalised embeddings per person, matched by nearest centroid.

The reference projects always named the top class, so a stranger in front of the camera was marked
present as whichever student they looked most like. Here a face is compared with every enrolled
person's centroid (the re-normalised mean of their embeddings) by cosine similarity and named only
when the best similarity reaches ``threshold``; otherwise it is Unknown (``Match.name is None``).

Embeddings come from the identity classifier's penultimate layer
(:func:`tf_models.classifier.with_embedding`), so a new person is enrolled from a few photos
without retraining, and removing one is deleting a row. The threshold is calibrated on validation
data for a target false-accept rate (:func:`calibrate_threshold`, :func:`calibrate_gallery`).

The gallery is shared by the app's concurrent requests: every method holds one lock, and
:meth:`IdentityGallery.save` writes temporary files and renames them over the old ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:  # keras/TensorFlow load only when embeddings are computed
    import keras

    from tf_models.data import ImageTable

# A serving runtime of tf_models.predictor: float32 images N x H x W x 3 -> (probabilities, embeddings).
Embedder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
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
    """

    name: str | None
    similarity: float
    best_name: str | None

    @property
    def is_known(self) -> bool:
        return self.name is not None


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32). A zero row cannot be normalised and is an error."""
    array = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("An embedding of all zeros has no direction and cannot be compared; "
                         f"check the model's output. Received: {int((norms == 0).sum())} zero rows")
    return array / norms


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


def _check_name(name: str) -> str:
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
            return _check_name(name) in self._people

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
        name = _check_name(name)
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
        key = _check_name(name)
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
            _atomic_write(folder / GALLERY_NPZ, npz_bytes)
            _atomic_write(folder / GALLERY_JSON, json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8"))
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


def _atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder (same file system), fsync, then rename over ``path``."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# ---- thresholds ------------------------------------------------------------------------------

def _scores(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{what} similarities are empty: calibration needs at least one. Received: shape={np.shape(values)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} similarities contain NaN or infinity. Received: {array[~np.isfinite(array)][:3]}")
    return array


def far_frr(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> tuple[float, float]:
    """(false-accept rate, false-reject rate) with the rule "accept iff similarity >= threshold".

    FAR: share of impostor similarities accepted; FRR: share of genuine similarities rejected.
    """
    genuine, impostor = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    return float(np.mean(impostor >= threshold)), float(np.mean(genuine < threshold))


def calibrate_threshold(genuine: np.ndarray, impostor: np.ndarray, target_far: float) -> float:
    """The threshold whose false-accept rate on ``impostor`` is at most ``target_far``.

    Rule and ties: a similarity is accepted iff ``similarity >= threshold``. With ``n`` impostor
    scores sorted in decreasing order ``s_1 >= s_2 >= ...`` and ``k = floor(target_far * n)``, every
    threshold in ``(s_(k+1), s_k]`` accepts only the impostors strictly above ``s_(k+1)``: at most
    ``k`` of them, fewer when scores tie with ``s_(k+1)`` (tied scores are accepted or rejected
    together, so a tie never pushes the FAR over the target). Any lower threshold exceeds the
    target. Within that interval the genuine FRR is lowest at its bottom and unchanged up to the
    lowest genuine score above ``s_(k+1)``; the threshold returned is the midpoint of
    ``(s_(k+1), min(s_k, that genuine score)]``: the same FAR and FRR on the calibration data as
    the lowest choice, with a margin on both sides for unseen faces. ``target_far >= 1`` accepts
    everything (returns -1.0).
    """
    genuine, impostor = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    if not 0.0 <= target_far <= 1.0:
        raise ValueError(f"target_far is a rate in [0, 1]. Received: target_far={target_far}")
    ranked = np.sort(impostor)[::-1]
    k = int(np.floor(target_far * len(ranked) + 1e-9))  # 1e-9: 0.01 * 300 is 2.9999999999999996
    if k >= len(ranked):
        return -1.0
    low = ranked[k]  # s_(k+1): must be rejected
    high = ranked[k - 1] if k > 0 else 1.0  # s_k (or the largest cosine similarity possible)
    above = genuine[genuine > low]
    if above.size:
        high = min(high, float(above.min()))
    high = max(high, low)
    threshold = (low + high) / 2.0
    if threshold <= low:  # low and high adjacent floats (or equal): the next float above low
        threshold = float(np.nextafter(low, np.inf))
    return float(threshold)


def genuine_impostor_scores(gallery: IdentityGallery, embeddings: np.ndarray,
                            names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Similarities for calibration: (genuine, impostor).

    For a face of an enrolled person: genuine = similarity to their own centroid, impostor = the
    highest similarity to any other person's centroid. That impostor score is exactly what the
    open-set decision would see if the person were removed from the gallery (centroids do not
    depend on each other), so it is a leave-one-person-out stranger score from the same photos.
    A face of someone not enrolled gives only an impostor score (highest similarity overall).
    """
    gallery_names, scores = gallery.similarities(embeddings)
    if len(names) != len(scores):
        raise ValueError(f"names and embeddings differ in length: {len(names)} vs {len(scores)}")
    if not gallery_names:
        raise ValueError("The gallery is empty: enrol people before calibrating.")
    index = {name: k for k, name in enumerate(gallery_names)}
    genuine, impostor = [], []
    for row, name in enumerate(names):
        key = _check_name(name)
        if key in index:
            own = index[key]
            genuine.append(scores[row, own])
            others = np.delete(scores[row], own)
            if others.size:
                impostor.append(others.max())
        else:
            impostor.append(scores[row].max())
    return np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold and what it gave on the calibration faces."""

    threshold: float
    target_far: float
    far: float
    frr: float
    n_genuine: int
    n_impostor: int


def calibrate_gallery(gallery: IdentityGallery, embeddings: np.ndarray, names: Sequence[str],
                      target_far: float = 0.01) -> Calibration:
    """Sets ``gallery.threshold`` for ``target_far`` from validation faces (see genuine_impostor_scores)."""
    genuine, impostor = genuine_impostor_scores(gallery, embeddings, names)
    threshold = calibrate_threshold(genuine, impostor, target_far)
    far, frr = far_frr(genuine, impostor, threshold)
    gallery.threshold = threshold
    return Calibration(threshold, float(target_far), far, frr, len(genuine), len(impostor))


# ---- embeddings from images ------------------------------------------------------------------

def embed_images(model: keras.Model | Embedder, paths: Sequence[str | Path],
                 image_size: Sequence[int] | None = None, batch_size: int = 32) -> np.ndarray:
    """L2-normalised embeddings (n, dim) float32 of image files (face crops), in order.

    ``model`` is the identity classifier (or its ``with_embedding`` version), or a serving runtime
    of :mod:`tf_models.predictor` (images -> (probabilities, embeddings)): the app enrols with the
    runtime it recognises with, so int8 and float32 embeddings are never compared. ``image_size``
    defaults to the model's input size (required with a runtime). Images go through the training
    pipeline's decoding (``make_dataset(training=False)``), so they are resized exactly as in training.
    """
    import keras
    import tensorflow as tf

    from tf_models.classifier import with_embedding
    from tf_models.pipeline import make_dataset

    if isinstance(model, keras.Model):
        embedder = with_embedding(model)
        dim = int(embedder.output["embedding"].shape[-1])
        size = tuple(int(v) for v in (image_size or embedder.input_shape[1:3]))
        compiled = tf.function(lambda images: embedder(images, training=False)["embedding"], reduce_retracing=True)

        def infer(images: tf.Tensor) -> np.ndarray:
            return compiled(images).numpy()
    else:
        if image_size is None:
            raise ValueError("Embedding with a serving runtime needs image_size (the model's input size). "
                             f"Received: model={model!r}, image_size=None")
        dim, size = 0, tuple(int(v) for v in image_size)

        def infer(images: tf.Tensor) -> np.ndarray:
            return model(images.numpy())[1]
    if not len(paths):
        return np.zeros((0, dim), np.float32)
    dataset = make_dataset(list(paths), [0] * len(paths), size, batch_size, training=False)
    batches = tqdm(dataset, total=-(-len(paths) // batch_size), desc="embedding faces", unit="batch",
                   disable=len(paths) < 1000, leave=False)
    return np.concatenate([infer(images) for images, _ in batches]).astype(np.float32)


def table_embeddings(model: keras.Model | Embedder, table: ImageTable,
                     splits: Iterable[str] = ("train", "val", "test"), batch_size: int = 32,
                     image_size: Sequence[int] | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """Embeds the rows of ``table`` in ``splits``: (embeddings, person names, split names), row-aligned."""
    frame = table.frame[table.frame["split"].isin(list(splits))]
    vectors = embed_images(model, frame["path"].tolist(), image_size, batch_size=batch_size)
    names = [table.class_names[k] for k in frame["label"].astype(int)]
    return vectors, names, frame["split"].tolist()


def gallery_from_embeddings(embeddings: np.ndarray, names: Sequence[str],
                            threshold: float = DEFAULT_THRESHOLD) -> IdentityGallery:
    """A gallery with every person in ``names`` enrolled from their rows of ``embeddings``."""
    embeddings = np.asarray(embeddings)
    if len(embeddings) != len(names):
        raise ValueError(f"names and embeddings differ in length: {len(names)} vs {len(embeddings)}")
    gallery = IdentityGallery(threshold)
    labels = np.asarray(names, dtype=object)
    for name in dict.fromkeys(names):  # first-seen order; the gallery sorts anyway
        gallery.enrol(name, embeddings[labels == name])
    return gallery


def build_gallery_from_table(model: keras.Model | Embedder, table: ImageTable, *, split: str = "train",
                             calibrate_split: str | None = "val", target_far: float = 0.01,
                             batch_size: int = 32, image_size: Sequence[int] | None = None,
                             ) -> tuple[IdentityGallery, Calibration | None]:
    """Enrols every person of ``table``'s ``split`` and calibrates the threshold on ``calibrate_split``.

    ``model``: the identity model or a serving runtime (then ``image_size`` too), see :func:`embed_images`.

    Returns (gallery, calibration); calibration is None when ``calibrate_split`` is None or empty
    (the gallery then keeps the placeholder threshold).
    """
    vectors, names, splits = table_embeddings(model, table, [split] + ([calibrate_split] if calibrate_split else []),
                                              batch_size, image_size)
    in_split = np.array([s == split for s in splits], dtype=bool)
    if not in_split.any():
        raise ValueError(f"The table has no images in split {split!r} to enrol. Received: split={split!r}")
    gallery = gallery_from_embeddings(vectors[in_split], [n for n, k in zip(names, in_split) if k])
    if calibrate_split is None or in_split.all():
        return gallery, None
    calibration = calibrate_gallery(gallery, vectors[~in_split], [n for n, k in zip(names, in_split) if not k],
                                    target_far)
    return gallery, calibration


def nearest_centroid_accuracy(model: keras.Model, table: ImageTable, *, enrol_splits: Sequence[str] = ("train", "val"),
                              test_split: str = "test", batch_size: int = 32) -> float:
    """Closed-set accuracy of the gallery's decision: test faces named by the nearest enrolled centroid.

    The app names people this way (threshold aside), so this is the identity accuracy it serves;
    it can differ a lot from the softmax's top-1 on few photos per person.
    """
    vectors, names, splits = table_embeddings(model, table, [*enrol_splits, test_split], batch_size)
    is_test = np.array([s == test_split for s in splits], dtype=bool)
    if not is_test.any() or is_test.all():
        raise ValueError(f"Need faces in both {list(enrol_splits)} and {test_split!r}. "
                         f"Received: splits={sorted(set(splits))}")
    gallery = gallery_from_embeddings(vectors[~is_test], [n for n, t in zip(names, is_test) if not t])
    matches = gallery.match(vectors[is_test])
    truth = [n for n, t in zip(names, is_test) if t]
    return float(np.mean([m.best_name == n for m, n in zip(matches, truth)]))
