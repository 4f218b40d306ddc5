"""An identity run given to the app serves only when it measures better than the shipped face embedder
on the run's own calibration faces (tf_models.app.service.identity_from_run)."""

from __future__ import annotations

import json

import pytest
from conftest import train_tiny_run

from tf_models.app import service
from tf_models.app.service import better_embedder, identity_from_run


def test_the_embedder_that_rejects_fewer_known_faces_wins_and_ties_keep_the_run():
    run, faces = {"far": 0.01, "frr": 0.40}, {"far": 0.01, "frr": 0.10}
    assert better_embedder(run, faces) == "faces"
    assert better_embedder(faces, run) == "run"
    assert better_embedder(run, dict(run)) == "run"  # a tie keeps what the user asked for
    assert better_embedder(None, faces) == "run" and better_embedder(run, None) == "run"


@pytest.fixture(scope="module")
def untrained_identity_run(tmp_path_factory):
    """One epoch from scratch on 4 photos a person: at chance, what the shipped embedder should beat."""
    root = tmp_path_factory.mktemp("choice")
    return train_tiny_run("identity", root / "run", root / "cache", epochs=1)


def test_the_app_s_runtime_flag_serves_the_face_embedder_in_float32_where_it_asks_int8_for_the_runs(monkeypatch):
    asked = []
    monkeypatch.setattr(service.Predictor, "from_face_weights",
                        lambda backbone, runtime=None: asked.append((backbone, runtime)))
    for runtime in ("onnx-int8", "onnx", "tflite", None):
        service.shipped_face_embedder(runtime)
    assert asked == [(service.FACE_EMBEDDER_BACKBONE, r) for r in ("onnx", "onnx", "tflite", None)]


@pytest.mark.slow
def test_a_run_at_chance_gives_way_to_the_face_embedder_on_its_own_people(untrained_identity_run, tmp_path):
    predictor, gallery, info, folder, label = identity_from_run(untrained_identity_run, tmp_path, 0.01, "compiled")
    choice = info["identity_choice"]
    assert choice["served"] == "faces", choice
    assert choice["compared"]["faces"]["frr"] < choice["compared"]["run"]["frr"]
    assert predictor.embeds_only and label.startswith("faces:")
    # the served gallery holds the run's people, enrolled with the face embedder, in a folder of its own
    classes = json.loads((untrained_identity_run / "class_names.json").read_text(encoding="utf-8"))
    assert sorted(gallery.names) == sorted(classes)
    assert folder.name.endswith("-faces-mobilenetv2") and folder.is_dir()
    # asked for the run, the run serves, with its own gallery
    predictor, gallery, info, folder, label = identity_from_run(untrained_identity_run, tmp_path, 0.01, "compiled",
                                                                choice="run")
    assert not predictor.embeds_only and "identity_choice" not in info and label == str(untrained_identity_run)
    with pytest.raises(ValueError, match="Received: choice='best'"):
        identity_from_run(untrained_identity_run, tmp_path, 0.01, "compiled", choice="best")
