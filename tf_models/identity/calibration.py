"""The gallery's threshold: genuine and impostor similarities, FAR/FRR, calibration for a target FAR.

A face is named only when its cosine similarity to the closest enrolled person reaches the
gallery's threshold. The threshold is chosen on faces the gallery was not built from, so that at
most ``target_far`` of impostor comparisons pass (:func:`calibrate_gallery`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tf_models.identity.gallery import IdentityGallery, person_key


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
        key = person_key(name)
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
