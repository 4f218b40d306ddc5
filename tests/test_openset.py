"""Leave-one-person-out open-set evaluation: the maths on synthetic embeddings, the script on a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import STUDENTS_SAMPLE, train_tiny_run
from test_gallery import DIM, make_people

from tf_models.identity import openset
from tf_models.identity.openset import leave_one_person_out

STUDENTS = str(STUDENTS_SAMPLE)
SPLIT_PATTERN = ["train"] * 4 + ["val"] * 2 + ["test"] * 2


def _synthetic(people: int = 12, spread: float = 0.35, seed: int = 0):
    _, faces = make_people(np.random.default_rng(seed), people, len(SPLIT_PATTERN), spread)
    names = [f"person {k}" for k in range(people) for _ in SPLIT_PATTERN]
    return faces.reshape(-1, DIM), names, SPLIT_PATTERN * people


def test_separable_people_strangers_unknown_known_named():
    embeddings, names, splits = _synthetic()
    result = leave_one_person_out(embeddings, names, splits, target_far=0.01, progress=False)
    s = result.summary
    assert s["folds"] == 12 and len(result.folds) == 12
    assert s["stranger_faces"] == 12 * 2 and s["known_faces"] == 12 * 11 * 2
    assert s["far"] == 0.0 and s["frr"] == 0.0 and s["closed_set_accuracy"] == 1.0 and s["dir"] == 1.0
    assert (result.folds["known_faces"] == 22).all() and (result.folds["stranger_faces"] == 2).all()
    curve = result.curve()
    assert {"threshold", "far", "frr", "dir"} <= set(curve.columns)
    assert curve["far"].is_monotonic_decreasing and curve["frr"].is_monotonic_increasing


def test_overlapping_people_give_errors_in_range():
    embeddings, names, splits = _synthetic(spread=3.0)  # noise swamps identity: the task is hard
    result = leave_one_person_out(embeddings, names, splits, target_far=0.1, progress=False)
    s = result.summary
    for key in ("far", "frr", "misidentification_rate", "dir", "closed_set_accuracy"):
        assert 0.0 <= s[key] <= 1.0, key
    assert s["frr"] > 0 or s["far"] > 0  # not separable: something must go wrong
    assert s["dir"] == pytest.approx(1 - s["frr"] - s["misidentification_rate"])


def test_left_out_person_is_never_in_the_gallery(monkeypatch):
    embeddings, names, splits = _synthetic(people=5)
    enrolled_per_fold = []
    real = openset.gallery_from_embeddings

    def spy(vectors, fold_names, *args, **kwargs):
        enrolled_per_fold.append(set(fold_names))
        return real(vectors, fold_names, *args, **kwargs)

    monkeypatch.setattr(openset, "gallery_from_embeddings", spy)
    result = leave_one_person_out(embeddings, names, splits, progress=False)
    people = sorted(set(names))
    assert result.folds["person"].tolist() == people
    for person, enrolled in zip(people, enrolled_per_fold):
        assert enrolled == set(people) - {person}


def test_calibration_never_sees_test_faces():
    embeddings, names, splits = _synthetic(people=4)
    moved = embeddings.copy()
    moved[np.asarray(splits) == "test"] *= -1  # test faces changed: thresholds must not move
    a = leave_one_person_out(embeddings, names, splits, progress=False).folds["threshold"]
    b = leave_one_person_out(moved, names, splits, progress=False).folds["threshold"]
    pd.testing.assert_series_equal(a, b)


def test_bad_input():
    embeddings, names, splits = _synthetic(people=2)
    with pytest.raises(ValueError, match="at least 3 people"):
        leave_one_person_out(embeddings, names, splits, progress=False)
    embeddings, names, splits = _synthetic(people=3)
    with pytest.raises(ValueError, match="No held-out"):
        leave_one_person_out(embeddings, names, ["train"] * len(names), progress=False)


def test_missing_run_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished run folder .missing config.yaml"):
        openset.evaluate_openset(tmp_path, STUDENTS, out=tmp_path / "out")


@pytest.mark.slow
def test_script_on_a_tiny_identity_run(tmp_path):
    from scripts.evaluate_openset import main

    run = tmp_path / "run"
    train_tiny_run("identity", run, tmp_path / "cache", epochs=2, head_units=(32,))
    out = tmp_path / "openset"
    assert main(["--run", str(run), "--data-dir", STUDENTS, "--target-far", "0.05", "--out", str(out)]) == 0
    for name in ("openset.json", "openset.md", "openset_folds.csv", "openset_curve.csv", "openset_roc.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "openset.json").read_text(encoding="utf-8"))
    class_names = json.loads((run / "class_names.json").read_text(encoding="utf-8"))
    for key in ("far", "frr", "misidentification_rate", "dir", "closed_set_accuracy"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["target_far"] == 0.05 and summary["people"] == len(class_names) == summary["folds"]
    assert summary["info"]["seen_by_model"] == len(class_names) and summary["info"]["embedding_dim"] == 32
    folds = pd.read_csv(out / "openset_folds.csv", encoding="utf-8")
    assert folds["person"].tolist() == class_names  # non-ASCII names survive
    assert (folds["false_accepts"] <= folds["stranger_faces"]).all()
    assert summary["stranger_faces"] == folds["stranger_faces"].sum() > 0
    assert "| target FAR |" in (out / "openset.md").read_text(encoding="utf-8")
