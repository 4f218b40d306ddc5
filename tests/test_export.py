"""Exports (SavedModel, ONNX, TFLite float32/float16/int8) agree with the Keras model on the bundled sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CELEBA_SAMPLE, train_tiny_run

from tf_models.classifier import with_embedding
from tf_models.export import EXPORT_INFO, export_run, load_run_model
from tf_models.pipeline import make_dataset
from tf_models.predictor import INT8_MIN_AGREEMENT, PARITY_FILE, CompiledRuntime, Predictor

# Training the fixture run and six conversions take about a minute on 2 cores.
pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def gender_run(tmp_path_factory) -> Path:
    """A real (tiny) gender run, trained so its predictions are not ties: alexnet_bn, 72x72, 5 epochs.

    After 2 epochs ~2% of the sample sits within 0.13 of a tie and int8 noise flips them (98.2%
    agreement); after 5 the model is decisive enough that agreement measures the export.
    """
    return train_tiny_run("gender", tmp_path_factory.mktemp("gender_run"), tmp_path_factory.mktemp("cache"),
                          epochs=5)


@pytest.fixture(scope="module")
def sample_and_reference(gender_run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every bundled CelebA sample image at the model's input size, and the Keras outputs for them."""
    files = sorted(str(p) for p in (CELEBA_SAMPLE / "img_align_celeba").glob("*.jpg"))
    images = np.concatenate([x.numpy() for x, _ in make_dataset(files, [0] * len(files), (72, 72), 64,
                                                                 training=False)])
    probabilities, embeddings = CompiledRuntime(with_embedding(load_run_model(gender_run)))(images)
    return images, probabilities, embeddings


@pytest.mark.parametrize(
    ("fmt", "quantize", "min_agreement", "max_prob_diff"),
    [
        ("savedmodel", None, 1.0, 1e-5),
        ("onnx", None, 1.0, 1e-4),
        ("tflite", None, 1.0, 1e-4),
        ("tflite", "float16", 0.99, 0.02),
        ("tflite", "int8", 0.99, 0.15),  # the issue asks top-1 >= 99%; the diff is reported, bounded loosely
        ("onnx", "int8", 0.99, 0.15),
    ],
)
def test_export_parity_with_keras(gender_run, sample_and_reference, tmp_path, fmt, quantize, min_agreement,
                                  max_prob_diff, record_property):
    images, reference, reference_embeddings = sample_and_reference
    folder = export_run(gender_run, fmt, tmp_path / "export", quantize=quantize)
    info = json.loads((folder / EXPORT_INFO).read_text())
    assert info["format"] == fmt and info["quantize"] == quantize and info["input_size"] == [72, 72]
    assert json.loads((folder / "class_names.json").read_text()) == ["Female", "Male"]
    predictor = Predictor.from_export(folder)
    assert predictor.runtime.name == (f"{fmt}-int8" if (fmt, quantize) == ("onnx", "int8") else fmt)
    if quantize == "int8":  # parity measured on held-out faces of the run's data, written with the export
        assert info["parity"]["check_images"] >= 100 and info["parity"]["top1_agreement"] >= 0.98
    probabilities, embeddings = predictor.predict_crops(images)
    diff = float(np.abs(probabilities - reference).max())
    embedding_diff = float(np.abs(embeddings - reference_embeddings).max())
    agreement = float(np.mean(probabilities.argmax(1) == reference.argmax(1)))
    record_property("max_abs_diff_probabilities", diff)
    record_property("top1_agreement", agreement)
    print(f"{fmt} {quantize or 'float32'}: max |diff| probabilities {diff:.2e}, embeddings {embedding_diff:.2e}, "
          f"top-1 agreement {agreement:.2%} on {len(images)} sample images")
    # Not all ties: the model must really separate the classes for the agreement to mean anything.
    assert np.mean(np.abs(reference[:, 1] - reference[:, 0]) > 0.2) > 0.5
    assert agreement >= min_agreement
    assert diff <= max_prob_diff
    assert embedding_diff <= max(max_prob_diff, 1e-4) * 10


def test_exported_model_serves_photos_like_the_run(gender_run, tmp_path):
    folder = export_run(gender_run, "onnx", tmp_path / "onnx")
    photo = min((CELEBA_SAMPLE / "img_align_celeba").glob("*.jpg"))
    from_export = Predictor.from_export(folder / "model.onnx").predict_image(photo).faces[0]
    from_run = Predictor.from_run(gender_run, runtime="compiled").predict_image(photo).faces[0]
    assert from_export.box == from_run.box and from_export.label == from_run.label
    assert from_export.confidence == pytest.approx(from_run.confidence, abs=1e-4)


def test_onnx_runtime_of_a_run_is_converted_once_and_cached(gender_run):
    first = Predictor.from_run(gender_run, runtime="onnx")
    cached = gender_run / "exports" / "onnx-serving" / "model.onnx"
    stamp = cached.stat().st_mtime_ns
    second = Predictor.from_run(gender_run, runtime="onnx")
    assert cached.stat().st_mtime_ns == stamp
    images = np.random.default_rng(0).uniform(0, 255, (3, 72, 72, 3)).astype(np.float32)
    np.testing.assert_allclose(first.predict_crops(images)[0], second.predict_crops(images)[0])


def test_served_int8_runtime_is_checked_against_float32_and_cached(gender_run):
    predictor = Predictor.from_run(gender_run)  # the default runtime
    assert predictor.runtime.name == "onnx-int8"
    folder = gender_run / "exports" / "onnx-int8-serving"
    parity = json.loads((folder / PARITY_FILE).read_text())
    assert parity["top1_agreement"] >= INT8_MIN_AGREEMENT and parity["check_images"] >= 100
    assert parity["calibration_images"] >= 50
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    images = np.random.default_rng(0).uniform(0, 255, (3, 72, 72, 3)).astype(np.float32)
    again = Predictor.from_run(gender_run, runtime="onnx-int8")
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp  # not re-made
    np.testing.assert_allclose(predictor.predict_crops(images)[0], again.predict_crops(images)[0])


def test_int8_model_below_the_parity_bar_is_not_served(gender_run, monkeypatch):
    """The gate really decides: demand more agreement than the model has and float32 is served."""
    import tf_models.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "INT8_MIN_AGREEMENT", 1.01)  # more than any model can agree
    with pytest.warns(UserWarning, match="serving float32 'onnx' instead"):
        predictor = Predictor.from_run(gender_run, runtime="onnx-int8")
    assert predictor.runtime.name == "onnx"


def test_unsupported_quantisation_is_a_clear_error(gender_run, capsys):
    from scripts.export import main

    with pytest.raises(SystemExit):
        main(["--run", str(gender_run), "--format", "onnx", "--quantize", "float16"])
    assert "onnx exports cannot be quantised to float16 (supported: int8). Use --format tflite" in (
        capsys.readouterr().err)
    with pytest.raises(ValueError, match="float32 only"):
        export_run(gender_run, "savedmodel", quantize="int8")
    with pytest.raises(ValueError, match="format must be one of"):
        export_run(gender_run, "coreml")


def test_export_script_writes_a_servable_folder(gender_run, tmp_path, capsys):
    from scripts.export import main

    assert main(["--run", str(gender_run), "--format", "savedmodel", "--out", str(tmp_path / "sm")]) == 0
    assert "savedmodel" in capsys.readouterr().out
    predictor = Predictor.from_export(tmp_path / "sm")
    assert predictor.class_names == ["Female", "Male"] and predictor.crop is None


def test_read_only_run_folder_converts_into_a_temporary_folder(gender_run, tmp_path, monkeypatch):
    """Shared results can be read-only: the conversion goes elsewhere and the run still serves."""
    import shutil

    import tf_models.predictor as predictor_module

    run = tmp_path / "shared_run"
    shutil.copytree(gender_run, run, ignore=shutil.ignore_patterns("exports"))
    real_export = predictor_module.export_keras

    def export_outside_run_only(model, fmt, path, **kwargs):
        if Path(path).is_relative_to(run):  # what writing into a read-only folder raises
            raise PermissionError(13, "Permission denied", str(path))
        return real_export(model, fmt, path, **kwargs)

    monkeypatch.setattr(predictor_module, "export_keras", export_outside_run_only)
    predictor = Predictor.from_run(run, runtime="onnx")
    assert predictor.runtime.name == "onnx"
    assert not (run / "exports" / "onnx-serving" / "model.onnx").exists()
    images = np.random.default_rng(0).uniform(0, 255, (2, 72, 72, 3)).astype(np.float32)
    assert predictor.predict_crops(images)[0].shape == (2, 2)
