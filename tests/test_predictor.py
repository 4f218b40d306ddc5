"""Predictor: faces -> one batched compiled call -> labels; crops as in training; bad input gives rows, not crashes."""

from __future__ import annotations

import csv
import json
import re
import struct
import threading
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import CELEBA_SAMPLE, SHARED_DATA, STUDENTS_SAMPLE, train_tiny_run
from PIL import Image

from tf_models.models.classifier import build_classifier
from tf_models.config import TrainConfig
from tf_models.faces.detector import box_iou, get_face_detector
from tf_models.images import read_image
from tf_models.data.pipeline import make_dataset
from tf_models.faces.framing import CELEBA_ALIGNED_SIZE, celeba_frame, celeba_frame_rect
from tf_models.serve.predictor import NO_FACE, Predictor
from tf_models.serve.runtimes import CompiledRuntime
from tf_models.data.folders import _crop_one
from tf_models.faces.crop import CropSettings

SCENES = SHARED_DATA / "scenes"


def celeba_sample_files(n: int | None = None) -> list[Path]:
    files = sorted((CELEBA_SAMPLE / "img_align_celeba").glob("*.jpg"))
    return files[:n] if n else files


@pytest.fixture(scope="module")
def gender_run(tmp_path_factory) -> Path:
    """A real (tiny) gender run: alexnet_bn from scratch, 72x72, 2 epochs on the bundled sample."""
    return train_tiny_run("gender", tmp_path_factory.mktemp("gender_run"), tmp_path_factory.mktemp("cache"),
                          epochs=2)


@pytest.fixture(scope="module")
def identity_run(tmp_path_factory) -> Path:
    """An identity run folder written by hand (random weights): what train() writes, minus training."""
    out = tmp_path_factory.mktemp("identity_run")
    names = sorted(p.name for p in STUDENTS_SAMPLE.iterdir() if p.is_dir())
    TrainConfig(task="identity", data_dir=str(STUDENTS_SAMPLE), backbone="alexnet_bn", mode="scratch",
                weights="none", input_size=(72, 72), out=str(out)).save(out / "config.yaml")
    (out / "class_names.json").write_text(json.dumps(names), encoding="utf-8")
    crop = CropSettings(margin=0.2, size=(160, 160))
    (out / "crop.json").write_text(json.dumps({**crop.__dict__, "size": list(crop.size)}), encoding="utf-8")
    build_classifier("alexnet_bn", len(names), (72, 72), mode="scratch", weights="none").save(out / "model.keras")
    return out


@pytest.fixture(scope="module")
def gender(gender_run) -> Predictor:
    return Predictor.from_run(gender_run, runtime="compiled")


def test_real_sample_image_gives_a_face_with_a_valid_label(gender, gender_run):
    result = gender.predict_image(celeba_sample_files(1)[0])
    class_names = json.loads((gender_run / "class_names.json").read_text())
    assert result.error is None and len(result.faces) == 1
    face = result.faces[0]
    assert face.label in class_names and face.label == face.top_k[0][0]
    assert 0.5 <= face.confidence <= 1.0  # two classes: the top one has at least half
    assert [name for name, _ in face.top_k] == sorted(class_names, key=lambda n: -dict(face.top_k)[n])
    assert sum(p for _, p in face.top_k) == pytest.approx(1.0, abs=1e-4)
    assert face.detection_confidence is not None and face.detection_confidence >= 0.9
    assert face.embedding.dtype == np.float32 and np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-4)


def test_compiled_runtime_traces_once_whatever_the_batch(gender):
    runtime = gender.runtime
    assert isinstance(runtime, CompiledRuntime)
    gender.predict_image(celeba_sample_files(1)[0])  # 1 face
    gender.predict_image(SCENES / "deepface_couple.jpg")  # 2 faces
    gender.predict_crops(np.zeros((5, *gender.input_size, 3), np.float32))
    assert runtime.tracing_count == 1


def test_all_faces_of_an_image_go_through_the_model_in_one_batch(gender):
    calls = []

    class Counting:
        name = "counting"

        def __call__(self, images):
            calls.append(len(images))
            return gender.runtime(images)

    counted = Predictor(Counting(), gender.class_names, gender.input_size, gender.crop)
    result = counted.predict_image(SCENES / "deepface_couple.jpg")
    assert len(result.faces) == 2 and calls == [2]
    # Largest face first, boxes distinct.
    assert result.faces[0].box[2] * result.faces[0].box[3] >= result.faces[1].box[2] * result.faces[1].box[3]


def test_predict_image_accepts_arrays_and_pil_images_alike(gender):
    path = celeba_sample_files(2)[1]
    from_path = gender.predict_image(path).faces[0]
    from_array = gender.predict_image(read_image(path)).faces[0]
    from_pil = gender.predict_image(Image.open(path)).faces[0]
    assert from_path.box == from_array.box == from_pil.box
    np.testing.assert_allclose(from_path.embedding, from_pil.embedding, atol=1e-6)
    bad = gender.predict_image(np.zeros((10, 10, 3), np.float64))
    assert bad.faces == [] and "dtype uint8" in bad.error


def test_identity_predictor_crops_exactly_like_training(identity_run, tmp_path):
    predictor = Predictor.from_run(identity_run, runtime="compiled")
    crop = CropSettings(margin=0.2, size=(160, 160))
    assert predictor.crop == crop
    photo = min(next(p for p in sorted(STUDENTS_SAMPLE.iterdir()) if p.is_dir()).iterdir())
    # Training: students.py crops and caches a PNG, the tf.data pipeline resizes it to the model input.
    crop_png, outcome = _crop_one(str(photo), "test", crop, tmp_path)
    assert crop_png is not None, outcome
    (trained,), _ = next(iter(make_dataset([crop_png], [0], predictor.input_size, 1, training=False)))
    served, boxes = predictor.framer.model_inputs(read_image(photo))
    assert len(boxes) == 1
    np.testing.assert_allclose(served[0], trained.numpy(), atol=1e-3)
    # And the model sees the same numbers through the predictor.
    probabilities, _ = predictor.predict_crops(trained.numpy()[None])
    assert predictor.predict_image(photo).faces[0].confidence == pytest.approx(probabilities[0].max(), abs=1e-5)


def test_gender_framing_reproduces_celeba_aligned_images():
    """Framing a face found in a CelebA aligned image recovers (about) that image."""
    detector = get_face_detector()
    overlaps = []
    for path in celeba_sample_files(12):
        image = read_image(path)
        box = detector.detect(image)[0].box
        overlaps.append(box_iou(celeba_frame_rect(box), (0, 0, image.shape[1], image.shape[0])))
        assert celeba_frame(image, box).shape == (*CELEBA_ALIGNED_SIZE, 3)
    assert np.median(overlaps) > 0.85 and min(overlaps) > 0.7


# ---- bad input ------------------------------------------------------------------------------------


def _png_declaring(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height (a decompression bomb, cheaply)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _collage(path: Path, faces: int = 30, per_row: int = 6) -> None:
    tiles = [np.asarray(Image.open(f).convert("RGB")) for f in celeba_sample_files(faces)]
    rows = [np.concatenate(tiles[i:i + per_row], axis=1) for i in range(0, faces, per_row)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    (folder / "notes.jpg").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    _png_declaring(folder / "bomb.png", 20000, 20000)
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    Image.fromarray(gradient).save(folder / "gradient.png")
    nested = folder / "class" / "trip"
    nested.mkdir(parents=True)
    _collage(nested / "thirty.jpg")
    Image.open(celeba_sample_files(1)[0]).save(nested / "one.jpg")
    return folder


def test_predict_script_writes_a_row_per_face_and_a_reason_per_bad_file(gender_run, bad_folder, tmp_path, capsys):
    from scripts.predict import main

    out = tmp_path / "preds.csv"
    assert main([str(bad_folder), "--run", str(gender_run), "--out", str(out), "--runtime", "compiled",
                 "--top-k", "2"]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        by_file.setdefault(Path(row["file"]).name, []).append(row)
    assert set(by_file) == {"notes.jpg", "empty.png", "bomb.png", "gradient.png", "thirty.jpg", "one.jpg"}
    assert "not an image" in by_file["notes.jpg"][0]["error"]
    assert "empty file" in by_file["empty.png"][0]["error"]
    # PIL refuses a 20000x20000 header (400 MP) as a bomb before read_image's own size limit sees it.
    assert re.search(r"decompression bomb|too large", by_file["bomb.png"][0]["error"])
    assert "400000000" in by_file["bomb.png"][0]["error"] or "20000x20000" in by_file["bomb.png"][0]["error"]
    assert by_file["gradient.png"][0]["error"] == NO_FACE
    assert len(by_file["thirty.jpg"]) == 30 and all(r["error"] == "" for r in by_file["thirty.jpg"])
    assert sorted(int(r["face"]) for r in by_file["thirty.jpg"]) == list(range(30))
    (one,) = by_file["one.jpg"]
    assert one["label"] in ("Female", "Male") and len(one["top_k"].split("; ")) == 2
    assert int(one["w"]) > 0 and float(one["detection_confidence"]) >= 0.9
    assert sum(1 for r in rows if r["error"]) == 4
    assert "31 faces in 6 files (4 without a face" in capsys.readouterr().out


def test_whole_image_option_classifies_a_face_crop_with_no_detected_face(gender_run):
    gradient = np.tile(np.linspace(0, 255, 100, dtype=np.uint8)[None, :, None], (120, 1, 3))
    plain = Predictor.from_run(gender_run, runtime="compiled")
    assert plain.predict_image(gradient).error == NO_FACE
    whole = Predictor.from_run(gender_run, runtime="compiled", whole_image_if_no_face=True)
    (face,) = whole.predict_image(gradient).faces
    assert face.box == (0, 0, 100, 120) and face.detection_confidence is None


def test_predictor_is_thread_safe(gender):
    paths = [SCENES / "deepface_couple.jpg", *celeba_sample_files(3)]
    expected = [[f.label for f in gender.predict_image(p).faces] for p in paths]
    results: dict[int, list[str]] = {}

    def work(index: int) -> None:
        results[index] = [f.label for f in gender.predict_image(paths[index % len(paths)]).faces]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[i] == expected[i % len(paths)] for i in range(8))


def test_predict_paths_keeps_order_and_bad_arguments_are_clear(gender, identity_run):
    files = celeba_sample_files(3)
    assert [r.source for r in gender.predict_paths(files, progress=False)] == [str(f) for f in files]
    with pytest.raises(ValueError, match="runtime must be one of"):
        Predictor.from_run(identity_run, runtime="torch")
    with pytest.raises(FileNotFoundError, match="not a finished run folder"):
        Predictor.from_run(identity_run / "nowhere")
    with pytest.raises(ValueError, match="crops must be N x 72 x 72 x 3"):
        gender.predict_crops(np.zeros((2, 64, 64, 3), np.float32))


def test_model_loads_in_safe_mode(gender_run):
    from tf_models.runs import load_run_model

    model = load_run_model(gender_run)
    assert isinstance(model, keras.Model) and model.output_shape == (None, 2)
