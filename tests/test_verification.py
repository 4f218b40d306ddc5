"""Verification, K-shot and open-set maths (tf_models.faces.verification) on embeddings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from tf_models.faces.verification import (
    best_threshold,
    kshot_identification,
    openset_far_at_frr,
    pair_scores,
    roc_curve,
    sample_pairs,
    tar_at_far,
    verification_folds,
)


def _clusters(people: int, photos: int, spread: float, dim: int = 16, seed: int = 0):
    """Unit embeddings: one random centre a person, photos scattered around it by ``spread``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    vectors = np.repeat(centres, photos, axis=0) + spread * rng.normal(size=(people * photos, dim))
    names = [f"p{k}" for k in range(people) for _ in range(photos)]
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), names


def test_sample_pairs_are_distinct_and_labelled_by_person():
    _, names = _clusters(30, 6, 0.1)
    pairs, same = sample_pairs(names, genuine=200, impostor=300, seed=1)
    assert len(pairs) == 500 and same.sum() == 200
    assert len({tuple(p) for p in pairs.tolist()}) == 500
    assert all((names[a] == names[b]) == s for (a, b), s in zip(pairs, same))
    again, _ = sample_pairs(names, genuine=200, impostor=300, seed=1)
    np.testing.assert_array_equal(pairs, again)  # the same pairs on every machine
    with pytest.raises(ValueError, match="distinct genuine pairs"):
        sample_pairs(names, genuine=30 * 15 + 1)
    with pytest.raises(ValueError, match="only 10 distinct impostor pairs"):  # asked for more than exist: no endless draw
        sample_pairs(["a"] * 10 + ["b"], genuine=5, impostor=11)


def test_sample_pairs_with_replacement_take_any_count_and_stay_labelled():
    """The progress figure's draw: more pairs than exist distinct, still one person / two people as labelled."""
    names = ["a"] * 10 + ["b"]  # 45 distinct genuine pairs, 10 impostor ones
    pairs, same = sample_pairs(names, genuine=500, impostor=500, seed=2, distinct=False)
    assert len(pairs) == 1000 and same.sum() == 500
    assert all(a != b and (names[a] == names[b]) == s for (a, b), s in zip(pairs, same))
    assert len({tuple(sorted(p)) for p in pairs[~same].tolist()}) <= 10  # repeats: only 10 exist
    again, _ = sample_pairs(names, genuine=500, impostor=500, seed=2, distinct=False)
    np.testing.assert_array_equal(pairs, again)
    with pytest.raises(ValueError, match="only 0 distinct impostor pairs"):  # one person: none at all
        sample_pairs(["a"] * 5, genuine=3, impostor=1, distinct=False)


def test_separated_people_verify_perfectly_and_noise_is_chance():
    vectors, names = _clusters(40, 8, 0.05)
    pairs, same = sample_pairs(names, 500, 500)
    scores = pair_scores(vectors, pairs)
    assert verification_folds(scores, same).mean() == 1.0
    assert tar_at_far(scores, same, 0.01) == 1.0
    noise = np.random.default_rng(3).normal(size=vectors.shape).astype(np.float32)
    chance = verification_folds(pair_scores(noise, pairs), same).mean()
    assert 0.4 < chance < 0.6


def test_best_threshold_splits_scores_where_accuracy_is_highest():
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    same = np.array([False, False, False, True, True, True])
    threshold = best_threshold(scores, same)
    assert 0.3 < threshold < 0.6
    far, tar = roc_curve(scores, same)
    assert far[0] == 0 and tar[-1] == 1 and np.all(np.diff(far) >= 0)


def test_kshot_identification_improves_with_more_shots_on_noisy_people():
    vectors, names = _clusters(30, 10, 0.9, seed=2)
    one, _ = kshot_identification(vectors, names, 1)
    five, tested = kshot_identification(vectors, names, 5)
    assert five > one  # a centroid of 5 photos is a better template than 1
    assert tested == 30 * 5
    clean, _ = kshot_identification(*_clusters(30, 10, 0.05), 3)
    assert clean == 1.0


def test_openset_rejects_strangers_only_when_people_are_apart():
    apart = openset_far_at_frr(*_clusters(20, 10, 0.05), frr=0.05)
    assert apart["far"] == 0.0 and apart["people"] == 20
    same_everyone = np.tile(_clusters(1, 1, 0.0)[0], (200, 1))
    names = [f"p{k // 10}" for k in range(200)]
    lost = openset_far_at_frr(same_everyone + 1e-4 * np.random.default_rng(0).normal(size=(200, 16)), names)
    assert lost["far"] > 0.9  # everyone looks alike: strangers get in
