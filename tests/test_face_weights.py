"""weights="faces": the face embedder shipped in the package (loads offline, hash checked, right backbone only)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import keras
import numpy as np
import pytest

from conftest import SHARED_DATA
from tf_models.images import read_image
from tf_models.models import backbones
from tf_models.models.backbones import FaceWeightsError, backbones_with_face_weights, get_backbone
from tf_models.models.classifier import BACKBONE_LAYER, build_classifier
from tf_models.models.face_embedder import MarginLogits, build_face_embedder, is_face_embedder, save_face_weights

FACES_BACKBONE = "mobilenetv2"
SHIPPED = ["mobilenetv2", "alexnet_bn"]  # every backbone with face weights in the package


@pytest.mark.parametrize("backbone", SHIPPED)
def test_faces_weights_ship_for_the_registry_backbone_and_are_small(backbone):
    assert backbone in backbones_with_face_weights()
    spec = get_backbone(backbone)
    path = backbones.face_weights_path(spec)  # hash checked
    assert path.stat().st_size < 3_000_000  # the project's limit for a committed file
    with np.load(path, allow_pickle=False) as stored:  # packed: the big kernels as int8 codes
        assert any(key.endswith(backbones.PACKED_CODES) for key in stored.keys())
    assert (path.parent / "MODEL_CARD.md").is_file()


@pytest.mark.parametrize("backbone", SHIPPED)
def test_faces_embedder_loads_offline_and_tells_people_apart(monkeypatch, backbone):
    def no_network(*args, **kwargs):
        raise AssertionError("weights='faces' must not download anything")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    embedder = build_face_embedder(backbone)
    assert is_face_embedder(embedder)
    spec = get_backbone(backbone)
    assert tuple(embedder.input_shape[1:3]) == spec.faces.input_size
    # Real faces: ORL photos (never used in pretraining) of the same person are closer than of others.
    from tf_models.faces.framing import resize_to_input

    people = [f"s{k}" for k in range(1, 9)]
    images = np.stack([read_image(SHARED_DATA / "orl_faces" / p / f"{i}.pgm") for p in people for i in (1, 2, 3)])
    squares = np.stack([np.pad(im, ((0, 0), (10, 10), (0, 0))) for im in images])  # 112x112: ORL is 92 wide
    vectors = embedder.predict(resize_to_input(squares, spec.faces.input_size), verbose=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similarity = vectors @ vectors.T
    owner = np.repeat(np.arange(len(people)), 3)
    same = (owner[:, None] == owner[None, :]) & ~np.eye(len(owner), dtype=bool)
    different = owner[:, None] != owner[None, :]
    assert similarity[same].mean() > similarity[different].mean() + 0.2


def test_packed_arrays_round_trip_within_half_a_step_and_keep_small_arrays_float16(tmp_path):
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 64, 96)).astype(np.float32) * np.linspace(0.01, 1.0, 96, dtype=np.float32)
    kernel[..., 5] = 0.0  # a dead channel stays exactly zero (its scale would otherwise be 0/0)
    arrays = {"backbone/conv/kernel": kernel, "backbone/bn/gamma": rng.normal(size=96).astype(np.float32)}
    digest = backbones.save_face_arrays(arrays, tmp_path / "packed.npz", levels=31)
    with np.load(tmp_path / "packed.npz", allow_pickle=False) as stored:
        assert sorted(stored.keys()) == ["backbone/bn/gamma", "backbone/conv/kernel:codes", "backbone/conv/kernel:scale"]
        assert stored["backbone/conv/kernel:codes"].dtype == np.int8 and stored["backbone/bn/gamma"].dtype == np.float16
        assert np.abs(stored["backbone/conv/kernel:codes"]).max() == 31
    loaded = backbones.load_face_arrays(tmp_path / "packed.npz")
    peak = np.abs(kernel).max(axis=(0, 1, 2))
    error = np.abs(loaded["backbone/conv/kernel"] - kernel) / np.maximum(peak, 1e-12)
    assert error.max() <= 0.5 / 31 + 1e-3 and np.all(loaded["backbone/conv/kernel"][..., 5] == 0)
    np.testing.assert_allclose(loaded["backbone/bn/gamma"], arrays["backbone/bn/gamma"], rtol=1e-3)
    # float16 only: the layout of a training run's face_weights.npz, read by the same loader
    backbones.save_face_arrays(arrays, tmp_path / "plain.npz", levels=None)
    assert sorted(backbones.load_face_arrays(tmp_path / "plain.npz")) == sorted(arrays)
    assert digest != backbones.save_face_arrays(arrays, tmp_path / "other.npz", levels=63)
    # Packing what was loaded gives the same bytes: the shipped files can be re-made from their runs.
    assert backbones.save_face_arrays(loaded, tmp_path / "again.npz", levels=31) == backbones.save_face_arrays(
        backbones.load_face_arrays(tmp_path / "again.npz"), tmp_path / "again2.npz", levels=31)
    with pytest.raises(ValueError, match="Received: levels=128"):
        backbones.pack_face_arrays(arrays, levels=128)
    with pytest.raises(ValueError, match="Received: levels=True"):
        backbones.pack_face_arrays(arrays, levels=True)


def test_packing_keeps_tiny_channels_within_half_a_step_and_refuses_what_it_cannot_hold():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 64, 96)).astype(np.float32)
    kernel[..., 0] *= 2e-7  # its scale is below float16's smallest value: it must not become 0 (division by 0)
    kernel[..., 1] *= 3e-6  # its scale is subnormal in float16: coarse, it must not round below the peak
    packed = backbones.pack_face_arrays({"k": kernel})
    restored = backbones.unpack_face_arrays(packed)["k"]
    peak = np.abs(kernel).max(axis=(0, 1, 2))
    assert np.all(np.abs(restored - kernel) <= 0.5 * packed["k:scale"].astype(np.float32) * (1 + 1e-3) + 1e-12)
    assert np.all(np.abs(restored[..., :2] - kernel[..., :2]) <= 0.05 * peak[:2])
    depthwise = rng.normal(size=(3, 3, 4000, 1)).astype(np.float32)  # one output channel: stays float16
    assert list(backbones.pack_face_arrays({"dw": depthwise})) == ["dw"]
    with pytest.raises(ValueError, match="beyond float16's range"):
        backbones.pack_face_arrays({"k": kernel * 1e10})
    broken = kernel.copy()
    broken[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite weights"):
        backbones.pack_face_arrays({"k": broken})
    with pytest.raises(ValueError, match="Received: key='k:codes'"):
        backbones.pack_face_arrays({"k:codes": kernel})


def test_codes_without_their_scale_and_the_reverse_are_a_clear_error(tmp_path):
    np.savez(tmp_path / "damaged.npz", **{"backbone/conv/kernel:codes": np.ones((3, 3, 4, 8), np.int8)})
    with pytest.raises(FaceWeightsError, match="without their scale"):
        backbones.load_face_arrays(tmp_path / "damaged.npz")
    np.savez(tmp_path / "damaged.npz", **{"backbone/conv/kernel:scale": np.ones(8, np.float16)})
    with pytest.raises(FaceWeightsError, match="scale without its codes"):
        backbones.load_face_arrays(tmp_path / "damaged.npz")


def test_pack_face_weights_packs_a_run_file_for_shipping(tmp_path):
    """scripts/pack_face_weights.py's work: AlexNet-BN's float16 run weights -> the packed, small form."""
    from tf_models.models.backbones import pack_face_weights

    embedder = build_face_embedder("alexnet_bn", (72, 72), weights=None)
    save_face_weights(embedder, tmp_path / "face_weights.npz")
    report = pack_face_weights(tmp_path / "face_weights.npz", tmp_path / "packed.npz")
    assert report["bytes_after"] < report["bytes_before"] / 2 and report["arrays_packed"] >= 5
    assert report["max_relative_error"] <= 0.5 / 31 + 1e-3
    again = build_face_embedder("alexnet_bn", (72, 72), weights=None)
    from tf_models.models.face_embedder import assign_embedder_arrays

    assign_embedder_arrays(again, backbones.load_face_arrays(tmp_path / "packed.npz"), "alexnet_bn")
    crops = np.random.default_rng(0).uniform(0, 255, (4, 72, 72, 3)).astype(np.float32)
    cosine = np.sum(embedder.predict(crops, verbose=0) * again.predict(crops, verbose=0), axis=1)
    assert cosine.min() > 0.98, cosine
    with pytest.raises(ValueError, match="another file"):
        pack_face_weights(tmp_path / "packed.npz", tmp_path / "packed.npz")


def test_classifier_starts_from_the_faces_backbone_in_transfer_and_finetune():
    arrays = backbones.read_face_weights(get_backbone(FACES_BACKBONE))
    for mode in ("transfer", "finetune"):
        model = build_classifier(FACES_BACKBONE, 3, mode=mode, weights="faces")
        assert model.input_shape[1:3] == get_backbone(FACES_BACKBONE).faces.input_size
        base = model.get_layer(BACKBONE_LAYER)
        for variable in base.weights[:5] + base.weights[-3:]:
            np.testing.assert_allclose(variable.numpy(), arrays[f"backbone/{variable.path}"].astype(np.float32))
        assert any(w.trainable for w in base.layers) == (mode == "finetune")


def test_faces_weights_for_another_backbone_is_a_clear_error():
    with pytest.raises(FaceWeightsError, match=r"No face-pretrained weights are shipped for resnet50.*mobilenetv2"):
        build_classifier("resnet50", 2, input_shape=(32, 32), weights="faces")
    with pytest.raises(FaceWeightsError, match="Backbones with weights='faces': mobilenetv2, alexnet_bn"):
        build_face_embedder("vgg16")


def test_corrupt_or_foreign_faces_weights_are_refused(tmp_path, monkeypatch):
    spec = get_backbone(FACES_BACKBONE)
    copy = tmp_path / spec.faces.file
    shutil.copy(backbones.face_weights_path(spec), copy)
    monkeypatch.setattr(backbones, "FACE_WEIGHTS_DIR", tmp_path)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(FaceWeightsError, match="corrupt: sha256"):
        build_face_embedder(FACES_BACKBONE)
    # A file with the right hash but another architecture's arrays never loads in part.
    small = build_face_embedder("alexnet_bn", (72, 72), weights=None)
    digest = save_face_weights(small, copy)
    foreign = {**backbones.BACKBONES, FACES_BACKBONE: dataclasses.replace(
        spec, faces=dataclasses.replace(spec.faces, sha256=digest))}
    monkeypatch.setattr(backbones, "BACKBONES", foreign)
    with pytest.raises(FaceWeightsError, match="another architecture"):
        build_classifier(FACES_BACKBONE, 2, weights="faces")
    copy.unlink()
    with pytest.raises(FaceWeightsError, match="missing from the installed package"):
        build_face_embedder(FACES_BACKBONE)


def test_arcface_and_cosface_logits_put_the_margin_on_the_true_class_only():
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(4, 8)).astype(np.float32)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    labels = np.array([0, 1, 2, 1])
    for loss, margin in (("arcface", 0.3), ("cosface", 0.2)):
        layer = MarginLogits(3, loss, scale=10.0, margin=margin)
        logits = keras.ops.convert_to_numpy(layer([embedding, labels]))
        centres = layer.centres.numpy() / np.linalg.norm(layer.centres.numpy(), axis=0, keepdims=True)
        cosine = embedding @ centres
        expected = 10.0 * cosine
        true = cosine[np.arange(4), labels]
        target = np.cos(np.arccos(true) + margin) if loss == "arcface" else true - margin
        expected[np.arange(4), labels] = 10.0 * target
        np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_train_transfer_from_faces_on_student_photos(tmp_path):
    """`scripts/train.py --weights faces` end to end: the run starts from the shipped backbone."""
    from conftest import REPO_ROOT
    from tf_models.config import TrainConfig
    from tf_models.runs import load_run_model
    from tf_models.train.training import train

    config = TrainConfig(task="identity", data_dir=str(REPO_ROOT / "datasets" / "students" / "sample"),
                         backbone=FACES_BACKBONE, mode="transfer", weights="faces", head_units=(), epochs=2,
                         batch_size=16, val_fraction=0.17, test_fraction=0.17, out=str(tmp_path / "run"),
                         cache_dir=str(tmp_path / "cache"))
    result = train(config, verbose=0)
    assert result.metrics["input_size"] == list(get_backbone(FACES_BACKBONE).faces.input_size)
    model = load_run_model(result.run_dir)
    arrays = backbones.read_face_weights(get_backbone(FACES_BACKBONE))
    kernel = model.get_layer(BACKBONE_LAYER).weights[0]
    np.testing.assert_allclose(kernel.numpy(), arrays[f"backbone/{kernel.path}"].astype(np.float32))  # frozen


def test_the_benchmark_serves_an_npz_as_the_package_serves_its_own(tmp_path):
    """bench_faces --run NAME=FILE.npz: an earlier release's weights, served exactly as weights="faces" is."""
    from tf_models.bench.faces import served_embedder

    shipped = backbones.face_weights_path(get_backbone("mobilenetv2"))
    copy = tmp_path / "earlier_faces.npz"
    shutil.copy(shipped, copy)
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 112, 112, 3)).astype("float32")
    np.testing.assert_allclose(served_embedder(copy)(pixels).numpy(),
                               build_face_embedder("mobilenetv2")(pixels).numpy(), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="Received"):
        served_embedder(tmp_path / "missing.npz")


@pytest.mark.slow
def test_the_face_embedder_is_served_by_the_fastest_checked_export_and_a_damaged_one_is_made_again(tmp_path,
                                                                                                    monkeypatch):
    import json

    from tf_models.serve import serving
    from tf_models.serve.predictor import Predictor

    monkeypatch.setenv("TF_MODELS_CACHE", str(tmp_path))
    faces = np.random.default_rng(3).uniform(0, 255, (3, 112, 112, 3)).astype(np.float32)
    compiled = Predictor.from_face_weights(FACES_BACKBONE, runtime="compiled")
    probabilities, expected = compiled.runtime(faces)
    assert probabilities.shape == (3, 0) and compiled.runtime.name == "compiled"

    served = Predictor.from_face_weights(FACES_BACKBONE)  # auto: every float32 candidate built, checked, timed
    (choice_file,) = (tmp_path / serving.EMBEDDER_EXPORTS_DIR).glob(f"*/{serving.CHOICE_FILE}")
    choice = json.loads(choice_file.read_text())
    assert served.runtime.name == choice["runtime"] == min(choice["median_ms"], key=choice["median_ms"].get)
    assert set(choice["median_ms"]) | set(choice["excluded"]) == set(choice["candidates"]) >= {"onnx", "compiled"}
    np.testing.assert_allclose(served.runtime(faces)[1], expected, atol=serving.EMBEDDER_MAX_DIFFERENCE)

    # The next start serves the recorded choice without exporting anything again.
    def no_export(*args, **kwargs):
        raise AssertionError("a cached export was made again")

    monkeypatch.setattr(serving, "export_keras", no_export)
    assert Predictor.from_face_weights(FACES_BACKBONE).runtime.name == choice["runtime"]
    assert Predictor.from_face_weights(FACES_BACKBONE, runtime="onnx").runtime.name == "onnx"  # its file, reused
    monkeypatch.undo()
    monkeypatch.setenv("TF_MODELS_CACHE", str(tmp_path))

    # int8 is not made for an embedder: asked for, float32 onnx serves, and says so.
    with pytest.warns(UserWarning, match="serving it with float32 onnx; pass runtime='onnx'"):
        assert Predictor.from_face_weights(FACES_BACKBONE, runtime="onnx-int8").runtime.name == "onnx"

    # A damaged export (a copy cut short) is made again, with a warning, never served; partial files that
    # killed starts left behind (old ones) are removed; one being written, and files not ours, are kept.
    onnx_file = choice_file.parent / "onnx-serving" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    abandoned = onnx_file.with_name(f".{os.getpid()}-2.model.onnx")
    writing = onnx_file.with_name(f".{os.getpid()}-3.model.onnx")  # another start's export, being written now
    not_ours = onnx_file.with_name(".backup.model.onnx")
    for partial in (abandoned, writing, not_ours):
        partial.write_bytes(b"half an export")
        os.utime(partial, (0, time.time() - serving.PARTIAL_EXPORT_MAX_AGE_S - 60))
    os.utime(writing, None)
    with pytest.warns(UserWarning, match="cannot serve"):
        repaired = Predictor.from_face_weights(FACES_BACKBONE, runtime="onnx")
    np.testing.assert_allclose(repaired.runtime(faces)[1], expected, atol=serving.EMBEDDER_MAX_DIFFERENCE)
    assert onnx_file.stat().st_size > 1_000_000
    assert not abandoned.exists() and writing.exists() and not_ours.exists()
    with pytest.raises(ValueError, match="int8's parity check"):
        serving.serve_face_embedder(build_face_embedder(FACES_BACKBONE), "0" * 64, "onnx-int8")
