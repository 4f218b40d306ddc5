"""How well an embedding tells people apart: verification, K-shot identification, open-set rejection.

Plain numpy on unit embeddings (any embedder: ours, dlib's), the protocols of face-recognition papers.
It sits below ``tf_models.identity`` (the gallery) and ``tf_models.train`` (face pretraining's progress
figure) so that both measure with the same maths:

- :func:`sample_pairs` + :func:`verification_folds`: LFW-style 10-fold verification (threshold chosen
  on 9 folds, accuracy on the 10th) and :func:`tar_at_far` (true accepts at a false-accept rate).
- :func:`kshot_identification`: enrol K photos per person (their centroid), name every other photo
  by the nearest centroid.
- :func:`openset_far_at_frr`: leave one person out of the gallery; at the threshold that rejects
  ``frr`` of the known people's photos, how many of the stranger's photos are accepted as someone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32). A zero row cannot be normalised and is an error."""
    array = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("An embedding of all zeros has no direction and cannot be compared; "
                         f"check the model's output. Received: {int((norms == 0).sum())} zero rows")
    return array / norms


def _groups(people: Sequence[str]) -> dict[str, np.ndarray]:
    people = np.asarray(people, dtype=object)
    return {name: np.flatnonzero(people == name) for name in dict.fromkeys(people.tolist())}


def distinct_genuine_pairs(people: Sequence[str]) -> int:
    """How many distinct pairs of photos of one person these labels hold."""
    return sum(len(rows) * (len(rows) - 1) // 2 for rows in _groups(people).values())


def distinct_impostor_pairs(people: Sequence[str]) -> int:
    """How many distinct pairs of photos of two different people these labels hold."""
    photos = len(people)
    return photos * (photos - 1) // 2 - distinct_genuine_pairs(people)


def sample_pairs(people: Sequence[str], genuine: int = 3000, impostor: int = 3000,
                 seed: int = 0, *, distinct: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (n, 2) of row indices, same (n,) bool): genuine and impostor pairs, shuffled together.

    Genuine pairs are spread over people (a person is drawn first, then two of their photos), so a
    few people with hundreds of photos do not make up the whole test. ``distinct`` (the benchmark's
    pairs): no pair twice, and raises when the people cannot give that many distinct pairs of either
    kind. Otherwise pairs are drawn with replacement, which stays fast however few distinct pairs
    there are (a progress figure); it raises only when there is no pair of a kind asked for at all.
    """
    rng = np.random.default_rng(seed)
    groups = [rows for rows in _groups(people).values() if len(rows) > 1]
    people_arr = np.asarray(people, dtype=object)
    for kind, asked, possible in (("genuine", genuine, distinct_genuine_pairs(people)),
                                  ("impostor", impostor, distinct_impostor_pairs(people))):
        if (asked > possible) if distinct else (asked > 0 and possible == 0):
            raise ValueError(f"These people give only {possible} distinct {kind} pairs. Received: {kind}={asked}")
    if distinct:
        chosen: set[tuple[int, int]] = set()
        while len(chosen) < genuine:
            rows = groups[rng.integers(len(groups))]
            a, b = sorted(rng.choice(rows, 2, replace=False).tolist())
            chosen.add((a, b))
        impostors: set[tuple[int, int]] = set()
        while len(impostors) < impostor:
            a, b = sorted(rng.integers(0, len(people_arr), 2).tolist())
            if people_arr[a] != people_arr[b]:
                impostors.add((a, b))
        genuine_pairs, impostor_pairs = sorted(chosen), sorted(impostors)
    else:
        genuine_pairs = [rng.choice(groups[rng.integers(len(groups))], 2, replace=False) for _ in range(genuine)]
        impostor_pairs = np.empty((0, 2), np.int64)
        while len(impostor_pairs) < impostor:
            drawn = rng.integers(0, len(people_arr), (2 * impostor, 2))
            drawn = drawn[people_arr[drawn[:, 0]] != people_arr[drawn[:, 1]]]
            impostor_pairs = np.concatenate([impostor_pairs, drawn])[:impostor]
    pairs = np.concatenate([np.asarray(genuine_pairs, np.int64).reshape(-1, 2),
                            np.asarray(impostor_pairs, np.int64).reshape(-1, 2)])
    same = np.r_[np.ones(genuine, bool), np.zeros(impostor, bool)]
    order = rng.permutation(len(pairs))  # folds mix genuine and impostor pairs
    return pairs[order], same[order]


def pair_scores(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair (embeddings are normalised here)."""
    vectors = l2_normalize(np.asarray(embeddings, np.float32))
    return np.sum(vectors[pairs[:, 0]] * vectors[pairs[:, 1]], axis=1)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold (``score >= t`` means same person) with the highest accuracy on these pairs."""
    candidates = np.unique(scores)
    # midpoints between neighbouring scores, plus both ends
    cuts = np.r_[candidates[0] - 1e-6, (candidates[1:] + candidates[:-1]) / 2, candidates[-1] + 1e-6]
    order = np.argsort(scores)
    sorted_scores, sorted_same = scores[order], same[order]
    below = np.searchsorted(sorted_scores, cuts, side="left")  # pairs with score < cut
    genuine_below = np.r_[0, np.cumsum(sorted_same)][below]
    impostor_below = below - genuine_below
    correct = impostor_below + (sorted_same.sum() - genuine_below)
    return float(cuts[int(np.argmax(correct))])


def verification_folds(scores: np.ndarray, same: np.ndarray, folds: int = 10) -> np.ndarray:
    """Accuracy on each fold with the threshold chosen on the other folds (the LFW protocol)."""
    index = np.arange(len(scores)) % folds
    accuracies = []
    for fold in range(folds):
        test = index == fold
        threshold = best_threshold(scores[~test], same[~test])
        accuracies.append(float(np.mean((scores[test] >= threshold) == same[test])))
    return np.array(accuracies)


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """Share of genuine pairs accepted at the threshold where ``far`` of impostor pairs are accepted."""
    impostor = np.sort(scores[~same])[::-1]
    accepted = int(np.floor(far * len(impostor)))
    threshold = impostor[accepted] if accepted < len(impostor) else -np.inf
    return float(np.mean(scores[same] > threshold))


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-accept rates, true-accept rates) over every threshold, FAR ascending."""
    order = np.argsort(-scores)
    tp = np.cumsum(same[order]) / max(1, same.sum())
    fp = np.cumsum(~same[order]) / max(1, (~same).sum())
    return np.r_[0.0, fp], np.r_[0.0, tp]


def _enrol_centroids(vectors: np.ndarray, people_rows: Sequence[np.ndarray], shots: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each person enrolled from ``shots`` random photos: (unit centroids, the other rows, their person index)."""
    centroids, probes, owner = [], [], []
    for k, rows in enumerate(people_rows):
        rows = rng.permutation(rows)
        centroids.append(vectors[rows[:shots]].mean(axis=0))
        probes.append(rows[shots:])
        owner.append(np.full(len(rows) - shots, k))
    return l2_normalize(np.stack(centroids)), np.concatenate(probes), np.concatenate(owner)


def kshot_identification(embeddings: np.ndarray, people: Sequence[str], shots: int, repeats: int = 5,
                         seed: int = 0) -> tuple[float, int]:
    """(mean accuracy, test photos per repeat): enrol ``shots`` photos a person, name the rest.

    Every person with more than ``shots`` photos takes part; the gallery holds all of them.
    """
    vectors = l2_normalize(np.asarray(embeddings, np.float32))
    groups = {name: rows for name, rows in _groups(people).items() if len(rows) > shots}
    if len(groups) < 2:
        raise ValueError(f"K-shot identification needs at least 2 people with more than {shots} photos.")
    rng = np.random.default_rng(seed)
    names = list(groups)
    accuracies, tested = [], 0
    for _ in range(repeats):
        gallery, probe_rows, owner = _enrol_centroids(vectors, [groups[name] for name in names], shots, rng)
        predicted = np.argmax(vectors[probe_rows] @ gallery.T, axis=1)
        accuracies.append(float(np.mean(predicted == owner)))
        tested = len(owner)
    return float(np.mean(accuracies)), tested


def openset_far_at_frr(embeddings: np.ndarray, people: Sequence[str], frr: float = 0.05, shots: int = 5,
                       seed: int = 0) -> dict[str, float]:
    """Leave one person out: FAR of strangers at the threshold that falsely rejects ``frr`` of known faces.

    Every person with more than ``shots`` photos is enrolled from ``shots`` of them (centroid). For each
    person in turn, the gallery is everyone else: the left-out person's photos are strangers (their
    best similarity to anyone); the others' remaining photos are known faces (similarity to their
    own centroid, and whether that centroid is also the nearest). One threshold over all folds.
    """
    vectors = l2_normalize(np.asarray(embeddings, np.float32))
    groups = {name: rows for name, rows in _groups(people).items() if len(rows) > shots}
    rng = np.random.default_rng(seed)
    names = list(groups)
    centroids, probe_rows, owner = _enrol_centroids(vectors, [groups[name] for name in names], shots, rng)
    similarity = vectors[probe_rows] @ centroids.T  # probes x people
    own = similarity[np.arange(len(owner)), owner]
    # Known faces: own-centroid similarity; a face whose nearest centroid is someone else counts as
    # rejected at any threshold when its own similarity is below that other one (it would be misnamed).
    others = similarity.copy()
    others[np.arange(len(owner)), owner] = -np.inf
    misnamed = others.max(axis=1) > own
    threshold = float(np.quantile(own, frr))
    known_rejected = float(np.mean((own < threshold) | misnamed))
    # Strangers: each person's probes against the gallery without them.
    stranger_best = others.max(axis=1)
    far = float(np.mean(stranger_best >= threshold))
    return {"far": far, "frr": known_rejected, "threshold": threshold, "people": len(names),
            "stranger_faces": int(len(owner))}


def pair_accuracy(embeddings: np.ndarray, people: np.ndarray, pairs: int = 2000, seed: int = 0) -> dict[str, float]:
    """Best-threshold accuracy on ``pairs`` genuine and as many impostor pairs: a quick progress figure.

    Pairs are drawn with replacement (a person, then two of their photos), which stays fast however the
    held-back photos are spread; scores and threshold are the benchmark's (this module's),
    without its folds: the threshold is chosen on the pairs it is judged on. NaN without a person with two
    photos or without a second person."""
    if distinct_genuine_pairs(people) == 0 or distinct_impostor_pairs(people) == 0:
        return {"pair_accuracy": float("nan"), "threshold": float("nan")}
    chosen, same = sample_pairs(people, pairs, pairs, seed, distinct=False)
    scores = pair_scores(embeddings, chosen)
    threshold = best_threshold(scores, same)
    return {"pair_accuracy": float(np.mean((scores >= threshold) == same)), "threshold": threshold}


__all__ = ["best_threshold", "distinct_genuine_pairs", "distinct_impostor_pairs", "kshot_identification", "l2_normalize", "openset_far_at_frr",
           "pair_accuracy", "pair_scores", "roc_curve", "sample_pairs", "tar_at_far", "verification_folds"]
