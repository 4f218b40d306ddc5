"""Face pretraining on real face photos, tiny: framing cache, teacher, training, resume, the shipped format."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA
from tf_models.data.face_sets import identity_disjoint_split, load_face_identities
from tf_models.faces.dlib_reference import dlib_available
from tf_models.models import backbones
from tf_models.models.backbones import FaceWeights, get_backbone
from tf_models.models.face_embedder import build_face_embedder
from tf_models.train import face_data
from tf_models.train.face_data import prepare_faces
from tf_models.train.face_pretraining import (EMBEDDER_FILE, FACE_WEIGHTS_FILE, PretrainConfig, build_training_model,
                                             embed_crops, load_embedder_weights, pair_accuracy, pretrain)

needs_dlib = pytest.mark.skipif(not dlib_available(), reason="dlib-bin + face_recognition_models (requirements-dev.txt)")


@pytest.fixture(scope="module")
def face_rows() -> pd.DataFrame:
    """4 photos each of 6 people from two sets, plus one corrupt file."""
    rows = load_face_identities(SHARED_DATA, include_celeba=False)
    people = rows[rows["set"].isin(["pins_subset14", "facescrub_csc411_subset12"])]["person"].unique()[:6]
    picked = rows[rows["person"].isin(people)].groupby("person").head(4)
    return picked.reset_index(drop=True).assign(split="train")


def test_face_sets_merge_people_and_hold_out_whole_people():
    rows = load_face_identities(SHARED_DATA, include_celeba=True)
    assert len(rows) > 26_000 and rows["source"].is_unique
    baldwin = rows[rows["person"] == "same/alec baldwin"]
    assert set(baldwin["source"].str.extract(r"faces/([^/]+)/")[0]) == {"facescrub_csc411_subset12", "lfw_deepfunneled"}
    split = identity_disjoint_split(rows)
    held = rows[split == "eval"]
    assert 50 <= held["person"].nunique() <= 200 and held.groupby("person").size().min() >= 6
    assert not set(held["person"]) & set(rows.loc[split == "train", "person"])  # whole people only
    pd.testing.assert_series_equal(split, identity_disjoint_split(rows))  # the same on every run


def test_preparation_frames_faces_once_and_reports_unreadable_photos(face_rows, tmp_path, monkeypatch):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows = pd.concat([face_rows, pd.DataFrame([{"source": str(broken), "person": "x", "set": "x", "split": "train"}])],
                     ignore_index=True)
    faces = prepare_faces(rows, tmp_path / "cache", with_teacher=dlib_available(), workers=1, progress=False)
    assert len(faces.rows) == len(face_rows) and faces.crops.shape == (len(face_rows), 160, 160, 3)
    assert faces.skipped and faces.skipped[0][0] == str(broken)
    assert (faces.rows["found"] == "face").mean() > 0.8
    if faces.teacher is not None:
        np.testing.assert_allclose(np.linalg.norm(faces.teacher, axis=1), 1.0, atol=1e-4)

    def no_work(*args, **kwargs):
        raise AssertionError("prepared chunks must be reused, not framed again")

    monkeypatch.setattr(face_data, "_prepare_chunk", no_work)
    again = prepare_faces(rows, tmp_path / "cache", with_teacher=dlib_available(), workers=1, progress=False)
    np.testing.assert_array_equal(again.crops, faces.crops)


class _StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated disconnect")


@needs_dlib
def test_pretraining_resumes_and_writes_the_shipped_format(face_rows, tmp_path, monkeypatch):
    faces = prepare_faces(face_rows, tmp_path / "cache", with_teacher=True, workers=1, progress=False)
    config = PretrainConfig(run_dir=str(tmp_path / "run"), backbone="alexnet_bn", input_size=(72, 72), epochs=2,
                            batch_size=8, loss="distill+arcface", val_people_fraction=0.0)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, faces, verbose=0, extra_callbacks=[_StopAfterFirstEpoch()])
    assert not (tmp_path / "run" / EMBEDDER_FILE).exists()
    run_dir = pretrain(config, faces, verbose=0)  # resumes at epoch 2
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    assert {"embedding_loss", "logits_loss"} <= set(history.columns)

    # The float16 .npz is what weights="faces" loads: register it and compare with the float32 model.
    digest = (run_dir / "face_weights.sha256").read_text().strip()
    spec = get_backbone("alexnet_bn")
    row = dataclasses.replace(spec, faces=FaceWeights(FACE_WEIGHTS_FILE, digest, (72, 72), 128))
    monkeypatch.setattr(backbones, "FACE_WEIGHTS_DIR", run_dir)
    monkeypatch.setattr(backbones, "BACKBONES", {**backbones.BACKBONES, "alexnet_bn": row})
    shipped = build_face_embedder("alexnet_bn")
    trained = keras.saving.load_model(run_dir / EMBEDDER_FILE, compile=False)
    a, b = embed_crops(shipped, faces.crops, (72, 72)), embed_crops(trained, faces.crops, (72, 72))
    assert np.min(np.sum(a * b, axis=1)) > 0.999  # float16 storage changes nothing that matters

    # A second schedule (--init-from) starts from either file of a run: the same embedder before its first step.
    for source in (run_dir / EMBEDDER_FILE, run_dir / FACE_WEIGHTS_FILE):
        _, fresh = build_training_model(config, num_classes=6)
        load_embedder_weights(fresh, source)
        assert np.min(np.sum(embed_crops(fresh, faces.crops, (72, 72)) * b, axis=1)) > 0.999, source.name
    _, other = build_training_model(dataclasses.replace(config, backbone="mobilenetv2", input_size=(96, 96)), 6)
    with pytest.raises(ValueError, match="another architecture|does not fit"):
        load_embedder_weights(other, run_dir / FACE_WEIGHTS_FILE)


def test_progress_pair_accuracy_scores_like_the_benchmark_and_copes_with_few_people():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 16))
    people = np.repeat([f"p{k}" for k in range(30)], 3)  # 90 distinct genuine pairs: drawn with replacement
    vectors = np.repeat(centres, 3, axis=0) + 0.05 * rng.normal(size=(90, 16))
    separated = pair_accuracy(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), people, pairs=2000)
    assert separated["pair_accuracy"] == 1.0
    noise = pair_accuracy(rng.normal(size=(90, 16)), people, pairs=2000)["pair_accuracy"]
    assert 0.5 <= noise < 0.75  # the best threshold on its own pairs: a little above chance, never near 1
    assert np.isnan(pair_accuracy(vectors, np.array([f"p{k}" for k in range(90)]))["pair_accuracy"])
    assert np.isnan(pair_accuracy(vectors[:3], np.array(["a"] * 3))["pair_accuracy"])  # one person: no impostors
    lopsided = pair_accuracy(vectors[:11], np.array(["a"] * 10 + ["b"]))  # few impostor pairs: no endless draw
    assert 0.0 <= lopsided["pair_accuracy"] <= 1.0
