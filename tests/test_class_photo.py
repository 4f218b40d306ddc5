"""The app with the shipped face embedder: enrol from photos, no training, then a class photo."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, STUDENTS_SAMPLE, train_tiny_run
from PIL import Image

from tf_models.app.service import UNKNOWN, FaceService

ENROLLED = sorted(p.name for p in STUDENTS_SAMPLE.iterdir() if p.is_dir())[:5]
GROUP_PHOTO = SHARED_DATA / "scenes" / "deepface_selfie-many-people.jpg"  # about 8 strangers


@pytest.fixture(scope="module")
def faces_service(tmp_path_factory) -> FaceService:
    """Gender: a tiny run; identity: the shipped face embedder (no identity run at all)."""
    gender = train_tiny_run("gender", tmp_path_factory.mktemp("gender_run"), tmp_path_factory.mktemp("cache"), epochs=1)
    return FaceService.from_runs(gender, None, state_dir=tmp_path_factory.mktemp("state"), runtime="compiled",
                                 max_faces=20)


@pytest.fixture(scope="module")
def enrol_dir(tmp_path_factory) -> Path:
    """5 students with 5 photos each; each one's 6th photo is kept out for the class photo."""
    folder = tmp_path_factory.mktemp("enrol")
    for name in ENROLLED:
        (folder / name).mkdir()
        for photo in sorted((STUDENTS_SAMPLE / name).iterdir())[:5]:
            shutil.copy(photo, folder / name / photo.name)
    return folder


def _class_photo(path: Path, present: Sequence[str] = tuple(ENROLLED)) -> Path:
    """The group photo of strangers with the ``present`` students' unseen photos in a row under it."""
    group = Image.open(GROUP_PHOTO).convert("RGB")
    group = group.resize((1500, round(group.height * 1500 / group.width)))
    students = [Image.open(sorted((STUDENTS_SAMPLE / name).iterdir())[5]).convert("RGB") for name in present]
    students = [s.resize((300, round(s.height * 300 / s.width))) for s in students]
    canvas = Image.new("RGB", (1500, group.height + max(s.height for s in students)), (128, 128, 128))
    canvas.paste(group, (0, 0))
    for k, student in enumerate(students):
        canvas.paste(student, (k * 300, group.height))
    canvas.save(path, quality=92)
    return path


def _students_and_strangers(analysis) -> tuple[list, list]:
    """(the faces in the students' row, left to right; the faces in the group photo)."""
    group_height = round(Image.open(GROUP_PHOTO).height * 1500 / Image.open(GROUP_PHOTO).width)
    students = sorted((f for f in analysis.faces if f.box[1] >= group_height), key=lambda f: f.box[0])
    strangers = [f for f in analysis.faces if f.box[1] + f.box[3] <= group_height]
    return students, strangers


@pytest.mark.slow
def test_enrolled_students_are_named_in_a_class_photo_and_strangers_are_unknown(faces_service, enrol_dir, tmp_path):
    messages = faces_service.enrol_folder(enrol_dir)
    assert all(m.startswith("Enrolled") for m in messages), messages
    assert sorted(faces_service.gallery.names) == ENROLLED
    analysis = faces_service.analyze(str(_class_photo(tmp_path / "class.jpg")))
    students, strangers = _students_and_strangers(analysis)
    assert len(students) == 5 and len(strangers) >= 3, analysis.message
    assert [f.identity for f in students] == ENROLLED
    assert all(f.identity == UNKNOWN for f in strangers), [(f.identity, f.identity_match()) for f in strangers]
    # The table says why: similarity next to the threshold, the closest person for an Unknown face, and
    # which face took that person when the stranger's similarity alone would have named them.
    table = analysis.table()
    for face in strangers:
        text = table.loc[table["face"] == face.index, "identity match"].iloc[0]
        assert text.startswith(f"closest: {face.closest}, "), text
        assert " < " in text or (face.closer_face is not None and text.endswith(f"but face {face.closer_face} is closer"))
        if face.closer_face is not None:  # the face that took the name is the student, and closer
            winner = next(f for f in analysis.faces if f.index == face.closer_face)
            assert winner in students and winner.identity == face.closest
            assert winner.identity_confidence > face.identity_confidence
    assert all(" >= " in text for text in table[table["identity"] != UNKNOWN]["identity match"])
    # Above every similarity, min_confidence makes every face Unknown, and no row points at a closer face
    # that was not named either.
    strict = faces_service.analyze(str(_class_photo(tmp_path / "class.jpg")), min_confidence=0.99)
    assert all(f.identity == UNKNOWN and f.closer_face is None for f in strict.faces)
    assert not any("is closer" in text for text in strict.table()["identity match"])


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="issue 14's embedder gap (results/faces/faces.md: open-set FAR 96% at "
                   "FRR 5%): with Björn and Chloé absent, two strangers in the group photo score 0.65-0.68 against "
                   "them, above the 0.49 threshold, and are named. Only a better embedder fixes this; one face "
                   "per person (match_photo) cannot, since the students they resemble are not in the photo. "
                   "Strict: the day it passes, this marker must go.")
def test_strangers_who_look_like_absent_students_are_unknown(faces_service, enrol_dir, tmp_path):
    faces_service.enrol_folder(enrol_dir)
    present = ENROLLED[:3]
    analysis = faces_service.analyze(str(_class_photo(tmp_path / "class.jpg", present)))
    students, strangers = _students_and_strangers(analysis)
    if len(students) != 3 or len(strangers) < 3 or [f.identity for f in students] != list(present):
        pytest.fail(f"the photo is not what this test is about: {analysis.message} "  # not the expected failure
                    f"{[(f.identity, f.identity_match()) for f in students]}")
    assert all(f.identity == UNKNOWN for f in strangers), [(f.identity, f.identity_match()) for f in strangers]


def test_embedder_predictor_gives_unit_embeddings_and_no_classes(faces_service):
    from tf_models.images import read_image

    pixels = read_image(sorted((STUDENTS_SAMPLE / ENROLLED[0]).iterdir())[0])
    detected = faces_service.detector.detect(pixels)
    (face,) = faces_service.identity.predict_faces(pixels, detected[:1])
    assert faces_service.identity.embeds_only and face.label == "" and face.top_k == [("", 0.0)]
    np.testing.assert_allclose(np.linalg.norm(face.embedding), 1.0, atol=1e-4)


def test_enrol_dir_reports_a_person_without_usable_photos(faces_service, tmp_path):
    (tmp_path / "Nobody Here").mkdir()
    (tmp_path / "Nobody Here" / "notes.jpg").write_text("not a photo")
    messages = faces_service.enrol_folder(tmp_path)
    assert messages == [messages[0]] and messages[0].startswith("Nobody Here: Nobody enrolled"), messages
    with pytest.raises(FileNotFoundError, match="--enrol-dir"):
        faces_service.enrol_folder(tmp_path / "missing")


def test_identity_match_shows_the_similarity_next_to_the_threshold():
    from tf_models.app.rendering import FaceResult

    named = FaceResult(1, (0, 0, 10, 10), "Female", 0.9, "Ana", 0.82, closest="Ana", threshold=0.55)
    unknown = FaceResult(2, (0, 0, 10, 10), "Male", 0.7, UNKNOWN, 0.41, closest="Ana", threshold=0.55)
    nobody = FaceResult(3, (0, 0, 10, 10), "Male", 0.7, UNKNOWN, 0.0)
    assert named.identity_match() == "0.82 >= 0.55"
    assert unknown.identity_match() == "closest: Ana, 0.41 < 0.55"
    assert nobody.identity_match() == "nobody enrolled"
    assert named.row()[4] == "0.82 >= 0.55" and unknown.row()[3] == UNKNOWN
    outranked = FaceResult(4, (0, 0, 10, 10), "Male", 0.7, UNKNOWN, 0.61, closest="Ana", threshold=0.55, closer_face=1)
    assert outranked.identity_match() == "closest: Ana, 0.61 >= 0.55, but face 1 is closer"


def test_enrolled_people_are_closest_to_themselves_in_their_next_photo(faces_service, enrol_dir, tmp_path):
    """Enrolment needs no training: each student's unseen photo is nearest to their own enrolment."""
    faces_service.enrol_folder(enrol_dir)
    students, _ = _students_and_strangers(faces_service.analyze(str(_class_photo(tmp_path / "class.jpg"))))
    assert len(students) == 5 and all(f.threshold == faces_service.gallery.threshold for f in students)
    closest = [f.closest for f in students]
    assert sum(a == b for a, b in zip(closest, ENROLLED)) >= 4, closest  # 4 of 5 with today's weights
