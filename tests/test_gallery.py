"""Open-set gallery: threshold maths on synthetic scores, enrol/remove/match on clustered embeddings,
persistence, thread safety, and embeddings from a tiny real model."""

from __future__ import annotations

import json
import math
import unicodedata

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, run_in_threads

from tf_models.faces.verification import l2_normalize
from tf_models.identity.calibration import (
    calibrate_gallery,
    calibrate_threshold,
    far_frr,
    genuine_impostor_scores,
)
from tf_models.identity.embedding import build_gallery_from_table, embed_images, gallery_from_embeddings
from tf_models.identity.gallery import GALLERY_JSON, GALLERY_NPZ, IdentityGallery, Match

STUDENTS = REPO_ROOT / "datasets" / "students" / "sample"
DIM = 32


def make_people(rng: np.random.Generator, people: int, per_person: int, spread: float = 0.35):
    """Clustered unit vectors: one random direction per person plus noise. Returns (centers, (people, n, dim))."""
    centers = l2_normalize(rng.normal(size=(people, DIM)))
    noise = rng.normal(size=(people, per_person, DIM)) * spread / math.sqrt(DIM)
    return centers, l2_normalize(centers[:, None, :] + noise)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---- threshold maths -----------------------------------------------------------------------------

@pytest.mark.parametrize("target", [0.0, 0.001, 0.01, 0.05, 0.2])
def test_calibrate_threshold_hits_target_far(rng, target):
    impostor = rng.normal(0.1, 0.15, 5000)
    genuine = rng.normal(0.7, 0.15, 2000)
    threshold = calibrate_threshold(genuine, impostor, target)
    far, frr = far_frr(genuine, impostor, threshold)
    k = math.floor(target * len(impostor) + 1e-9)
    assert far == k / len(impostor)  # no ties: exactly k impostors accepted, never more than the target allows
    assert far <= target
    # Tight: the highest rejected impostor, accepted by any lower threshold, would break the target.
    highest_rejected = np.sort(impostor)[::-1][k]
    assert threshold > highest_rejected
    assert far_frr(genuine, impostor, highest_rejected)[0] > target
    assert 0 <= frr <= 1


def test_calibrate_threshold_tie_rule():
    impostor = np.array([0.5] * 50 + [0.1] * 50)
    genuine = np.array([0.9] * 10)
    # k = 10: the 11th highest is 0.5, tied with 49 others; ties are rejected together, FAR 0.
    threshold = calibrate_threshold(genuine, impostor, 0.1)
    assert threshold > 0.5 and far_frr(genuine, impostor, threshold) == (0.0, 0.0)
    # k = 60: the 61st highest is 0.1, so the 0.5 block is accepted (50% <= 60%) and 0.1 rejected.
    threshold = calibrate_threshold(genuine, impostor, 0.6)
    assert 0.1 < threshold <= 0.5 and far_frr(genuine, impostor, threshold)[0] == 0.5


def test_calibrate_threshold_midpoint_and_extremes():
    # Nothing may be accepted: between the top impostor (0.3) and the lowest genuine above it (0.9).
    assert calibrate_threshold([0.9, 0.95], [0.1, 0.3], 0.0) == pytest.approx(0.6)
    assert calibrate_threshold([0.9], [0.1, 0.3], 1.0) == -1.0  # accept everything
    # Every genuine below the top impostor: the threshold still rejects that impostor.
    threshold = calibrate_threshold([0.2], [0.1, 0.3], 0.0)
    assert threshold > 0.3 and far_frr([0.2], [0.1, 0.3], threshold) == (0.0, 1.0)
    assert calibrate_threshold([0.5], [1.0], 0.0) > 1.0  # nobody can be accepted


def test_far_frr_counts_and_rule():
    far, frr = far_frr([0.2, 0.5, 0.8, 0.9], [0.1, 0.5, 0.6], threshold=0.5)
    assert far == pytest.approx(2 / 3)  # 0.5 >= 0.5 accepted
    assert frr == pytest.approx(1 / 4)


@pytest.mark.parametrize("kwargs, message", [
    ({"genuine": [0.5], "impostor": [], "target_far": 0.01}, "impostor similarities are empty"),
    ({"genuine": [0.5], "impostor": [0.1], "target_far": 1.5}, "target_far=1.5"),
    ({"genuine": [np.nan], "impostor": [0.1], "target_far": 0.1}, "NaN"),
])
def test_calibrate_threshold_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        calibrate_threshold(**kwargs)


# ---- gallery on clustered embeddings -------------------------------------------------------------

def _calibrated_gallery(rng, people=10, target_far=0.01):
    _centers, faces = make_people(rng, people, 10)
    names = [f"person {k}" for k in range(people)]
    gallery = gallery_from_embeddings(faces[:, :5].reshape(-1, DIM), [n for n in names for _ in range(5)])
    val = faces[:, 5:8].reshape(-1, DIM)
    calibration = calibrate_gallery(gallery, val, [n for n in names for _ in range(3)], target_far)
    return gallery, calibration, names, faces[:, 8:]


def test_known_faces_match_and_outsiders_are_unknown(rng):
    gallery, calibration, names, test = _calibrated_gallery(rng)
    assert calibration.far <= 0.01 and calibration.n_genuine == 30 and calibration.n_impostor == 30
    assert gallery.threshold == calibration.threshold
    matches = gallery.match(test.reshape(-1, DIM))
    assert [m.name for m in matches] == [n for n in names for _ in range(2)]
    _, outsiders = make_people(np.random.default_rng(1), 5, 4)
    unknown = gallery.match(outsiders.reshape(-1, DIM))
    assert all(m.name is None and not m.is_known for m in unknown)
    assert all(m.best_name in names and m.similarity < gallery.threshold for m in unknown)


def test_match_photo_names_a_person_once_the_closest_face():
    """One photo: a person appears at most once. The closest face gets the name; another face nearest
    to them is Unknown (never moved to its second-nearest person), and says which face took it."""
    gallery = IdentityGallery(threshold=0.5)
    gallery.enrol("Ana", np.array([[1.0, 0.0, 0.0]]))
    gallery.enrol("Ben", np.array([[0.0, 1.0, 0.0]]))
    faces = np.array([[0.7, 0.6, 0.0],   # nearest Ana (0.76), second Ben (0.65): both above the threshold
                      [0.95, 0.0, 0.3],  # Ana, closer (0.95)
                      [0.0, 0.3, 0.95],  # nobody reaches the threshold
                      [0.1, 0.99, 0.0]])  # Ben
    independent = gallery.match(faces)
    assert [m.name for m in independent] == ["Ana", "Ana", None, "Ben"]  # separate photos: no rule
    matches = gallery.match_photo(faces)
    assert [m.name for m in matches] == [None, "Ana", None, "Ben"]
    assert matches[0].best_name == "Ana" and matches[0].closer_face == 1
    assert matches[0].similarity == pytest.approx(independent[0].similarity)
    assert all(m.closer_face is None for m in matches[1:])
    assert gallery.match_photo(faces[0:1])[0] == independent[0]  # alone in its photo, face 0 is Ana again
    assert [m.name for m in IdentityGallery().match_photo(faces)] == [None] * 4  # empty gallery
    # A tie goes to the first face (the app lists the largest first); the other is Unknown.
    tied = gallery.match_photo(np.stack([faces[1], faces[1]]))
    assert [m.name for m in tied] == ["Ana", None] and tied[1].closer_face == 0


def test_enrol_without_retraining_then_remove(rng):
    gallery, _, names, test = _calibrated_gallery(rng)
    _, newcomer = make_people(np.random.default_rng(2), 1, 6)
    assert all(m.name is None for m in gallery.match(newcomer[0, 3:]))
    assert gallery.enrol("Zoë Newcomer", newcomer[0, :3]) == 3  # three photos, no model involved
    assert "Zoë Newcomer" in gallery and len(gallery) == len(names) + 1
    assert [m.name for m in gallery.match(newcomer[0, 3:])] == ["Zoë Newcomer"] * 3
    assert [m.name for m in gallery.match(test[:, 0])] == names  # the others are unaffected
    assert gallery.enrol("Zoë Newcomer", newcomer[0, 3:4]) == 4  # more photos of the same person add up
    gallery.remove("Zoë Newcomer")
    assert "Zoë Newcomer" not in gallery
    assert all(m.name is None for m in gallery.match(newcomer[0, 3:]))
    with pytest.raises(KeyError, match="'Zoë Newcomer' is not enrolled"):
        gallery.remove("Zoë Newcomer")


def test_centroid_is_renormalised_mean_and_names_are_nfc(rng):
    gallery = IdentityGallery(threshold=0.2)
    vectors = rng.normal(size=(4, DIM))
    gallery.enrol(unicodedata.normalize("NFD", " José Álvarez "), vectors)
    assert gallery.names == ["José Álvarez"] and "José Álvarez" in gallery
    _names, centroids = gallery.centroids()
    expected = l2_normalize(l2_normalize(vectors).mean(axis=0))
    np.testing.assert_allclose(centroids[0], expected, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(gallery.embeddings("José Álvarez"), axis=1), 1.0, rtol=1e-5)


def test_empty_gallery_says_unknown(rng):
    assert IdentityGallery().match(rng.normal(size=(2, DIM))) == [Match(None, -1.0, None)] * 2


@pytest.mark.parametrize("name, embeddings, message", [
    ("", np.ones((1, DIM)), "name=''"),
    ("Ana", np.ones((1, 5)), "dimension 5"),
    ("Ana", np.full((1, DIM), np.nan), "NaN"),
    ("Ana", np.zeros((1, DIM)), "all zeros"),
    ("Ana", np.ones((2, 2, DIM)), "shape=\\(2, 2, 32\\)"),
])
def test_enrol_rejects_bad_input(name, embeddings, message):
    gallery = IdentityGallery()
    gallery.enrol("Existing", np.ones((1, DIM)))
    with pytest.raises(ValueError, match=message):
        gallery.enrol(name, embeddings)


def test_threshold_must_be_a_cosine():
    with pytest.raises(ValueError, match="threshold=2"):
        IdentityGallery(threshold=2)


def test_genuine_impostor_scores_are_leave_one_person_out(rng):
    gallery, _, names, test = _calibrated_gallery(rng)
    _genuine, impostor = genuine_impostor_scores(gallery, test[:, 0], names)
    for k, name in enumerate(names):  # the impostor score equals the best match with that person removed
        reduced = gallery_from_embeddings(np.concatenate([gallery.embeddings(n) for n in names if n != name]),
                                          [n for n in names if n != name for _ in range(5)])
        assert reduced.match(test[k, 0])[0].similarity == pytest.approx(impostor[k], abs=1e-5)
    # A stranger gives only an impostor score.
    genuine2, impostor2 = genuine_impostor_scores(gallery, test[:1, 0], ["someone else"])
    assert genuine2.size == 0 and impostor2.size == 1


def test_save_load_round_trip_non_ascii(tmp_path, rng):
    _, faces = make_people(rng, 4, 3)
    names = ["José Álvarez", "Ayşe Demir", "王小明", "Дарья Иванова"]
    gallery = gallery_from_embeddings(faces.reshape(-1, DIM), [n for n in names for _ in range(3)], threshold=0.61)
    gallery.save(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [GALLERY_JSON, GALLERY_NPZ]  # no temp files left
    assert "王小明" in (tmp_path / "g" / GALLERY_JSON).read_text(encoding="utf-8")
    np.load(tmp_path / "g" / GALLERY_NPZ, allow_pickle=False).close()  # plain arrays only
    loaded = IdentityGallery.load(tmp_path / "g")
    assert loaded.names == gallery.names and loaded.threshold == 0.61 and loaded.counts() == gallery.counts()
    probe = faces[:, 0]
    assert loaded.match(probe) == gallery.match(probe)
    # Saving again over the old files works; a torn pair (npz from another save) is refused.
    gallery.enrol("Extra", faces[0, :1] * -1)
    gallery.save(tmp_path / "g")
    assert IdentityGallery.load(tmp_path / "g").names == sorted([*names, "Extra"])
    manifest = json.loads((tmp_path / "g" / GALLERY_JSON).read_text(encoding="utf-8"))
    loaded.save(tmp_path / "other")
    (tmp_path / "g" / GALLERY_NPZ).write_bytes((tmp_path / "other" / GALLERY_NPZ).read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        IdentityGallery.load(tmp_path / "g")
    assert manifest["names"] == sorted([*names, "Extra"])
    with pytest.raises(FileNotFoundError, match="No gallery"):
        IdentityGallery.load(tmp_path / "missing")


def test_concurrent_enrol_match_save(tmp_path, rng):
    _, faces = make_people(rng, 16, 4)
    gallery = gallery_from_embeddings(faces[:8].reshape(-1, DIM), [f"p{k}" for k in range(8) for _ in range(4)], 0.5)

    def work(worker: int) -> None:
        for round_ in range(20):
            gallery.match(faces[round_ % 8])
            if round_ == 5:
                gallery.enrol(f"p{8 + worker}", faces[8 + worker])
            if round_ % 7 == 0:
                gallery.save(tmp_path / "g")

    assert run_in_threads(work, 8) == []
    assert len(gallery) == 16
    assert [m.name for m in gallery.match(faces[:, 0])] == [f"p{k}" for k in range(16)]
    assert len(IdentityGallery.load(tmp_path / "g")) >= 8


# ---- embeddings from a real (tiny) model -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    from tf_models import HeadConfig, build_classifier

    return build_classifier("alexnet_bn", 3, (67, 67), mode="scratch", weights="none", head=HeadConfig(units=(8,)))


def _sample_photos(people: int = 3, per_person: int = 4) -> tuple[list[str], list[str]]:
    folders = sorted(p for p in STUDENTS.iterdir() if p.is_dir())[:people]
    paths, names = [], []
    for folder in folders:
        for photo in sorted(folder.iterdir())[:per_person]:
            paths.append(str(photo))
            names.append(folder.name)
    return paths, names


def test_embed_images_shape_norm_and_order(tiny_model):
    from tf_models.models.classifier import with_embedding

    paths, _ = _sample_photos(2, 3)
    vectors = embed_images(tiny_model, paths, batch_size=4)
    assert vectors.shape == (6, 8) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    reverse = embed_images(with_embedding(tiny_model), paths[::-1], batch_size=5)  # the embedding model works too
    np.testing.assert_allclose(reverse[::-1], vectors, rtol=1e-4, atol=1e-5)
    assert embed_images(tiny_model, []).shape == (0, 8)


def test_embed_images_with_a_serving_runtime(tiny_model):
    """The app enrols through the runtime it serves with: same vectors as the Keras model for float32."""
    from tf_models.serve.serving import make_runtime

    paths, _ = _sample_photos(2, 3)
    runtime = make_runtime("compiled", tiny_model)
    size = tiny_model.input_shape[1:3]
    np.testing.assert_allclose(embed_images(runtime, paths, size, batch_size=4),
                               embed_images(tiny_model, paths, batch_size=4), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs image_size"):
        embed_images(runtime, paths)


def test_build_gallery_from_table(tiny_model):
    from tf_models.data.tables import DataReport, ImageTable

    paths, names = _sample_photos(3, 4)
    class_names = sorted(set(names))
    frame = pd.DataFrame({"path": paths, "label": [class_names.index(n) for n in names],
                          "split": ["train", "train", "train", "val"] * 3})
    table = ImageTable(frame, class_names, DataReport("students", str(STUDENTS), class_names))
    gallery, calibration = build_gallery_from_table(tiny_model, table, target_far=0.0)
    assert gallery.names == class_names and gallery.counts() == {n: 3 for n in class_names}
    assert calibration is not None and calibration.n_genuine == 3 and calibration.far == 0.0
    assert gallery.threshold == calibration.threshold
    gallery2, none = build_gallery_from_table(tiny_model, table, calibrate_split=None)
    assert none is None and gallery2.names == class_names
