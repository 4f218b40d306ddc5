"""The portable face pretraining set (pretrain_faces.py --export) and the torch-backend trainer that reads it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tf_models.images import resize_images
from tf_models.train import face_torch
from tf_models.train.face_data import FramedFaces
from tf_models.train.face_export import MANIFEST_FILE, export_pretraining_set
from tf_models.train.face_pretraining import PretrainConfig, centred_teacher, training_people

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_faces_torch.py"


def _torch_script():
    spec = importlib.util.spec_from_file_location("pretrain_faces_torch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports neither torch nor TensorFlow until main() runs
    return module


def _faces(n_people: int = 12, per_person: int = 3) -> FramedFaces:
    """Smooth synthetic 'faces' (gradients: what WebP keeps well), people in the train and eval splits."""
    rng = np.random.default_rng(0)
    n = n_people * per_person
    people = np.repeat([f"person{k:02d}" for k in range(n_people)], per_person)
    split = np.where(np.repeat(np.arange(n_people), per_person) < n_people - 2, "train", "eval")
    rows = pd.DataFrame({"source": [f"p{i}.jpg" for i in range(n)], "person": people, "split": split})
    ramp = np.linspace(0, 1, 160, dtype=np.float32)
    base = rng.uniform(40, 200, size=(n, 1, 1, 3)).astype(np.float32)
    crops = np.clip(base + 50 * ramp[None, :, None, None] - 30 * ramp[None, None, :, None], 0, 255).astype(np.uint8)
    teacher = rng.normal(size=(n, 128)).astype(np.float32) + 3.0  # a narrow cone, like dlib's
    teacher[-1] = np.nan  # an eval photo the teacher missed: not exported, so no error
    return FramedFaces(rows, crops, np.full((n, 5, 2), np.nan, np.float32), teacher, [])


def test_export_holds_what_pretraining_trains_on_and_the_torch_trainer_reads_it_back(tmp_path):
    faces = _faces()
    config = PretrainConfig(val_people_fraction=0.3, input_size=(112, 112))
    folder = export_pretraining_set(faces, config, tmp_path / "set", progress=False)
    assert (folder / MANIFEST_FILE).is_file()
    pixels, meta, manifest = face_torch.load_export(folder)

    is_train, is_val = (m.to_numpy() for m in training_people(faces.rows, config))
    assert is_val.any() and is_train.any()  # the fraction holds some people back here
    exported = np.flatnonzero(is_train | is_val)
    np.testing.assert_array_equal(meta["row"], exported)  # the eval split's people stay out
    np.testing.assert_array_equal(meta["is_val"], is_val[exported])
    assert list(meta["person"]) == list(faces.rows["person"].to_numpy()[exported])
    targets, mean = centred_teacher(faces.teacher, is_train)
    np.testing.assert_allclose(meta["teacher"].astype(np.float32), targets[exported], atol=2e-3)
    np.testing.assert_allclose(manifest["teacher_mean"], mean, atol=1e-5)
    assert manifest["photos_trained_on"] == is_train.sum() and manifest["input_size"] == [112, 112]

    assert pixels.shape == (len(exported), 112, 112, 3) and pixels.dtype == np.uint8
    reference = np.asarray(resize_images(faces.crops[exported], (112, 112)))
    assert np.abs(pixels.astype(np.float32) - reference).mean() < 3.0  # the suite's resize, then WebP


def test_export_refuses_faces_without_teacher_targets(tmp_path):
    faces = _faces()
    without = FramedFaces(faces.rows, faces.crops, faces.keypoints, None, [])
    with pytest.raises(ValueError, match="teacher"):
        export_pretraining_set(without, PretrainConfig(), tmp_path / "set", progress=False)
    nan_in_training = FramedFaces(faces.rows, faces.crops, faces.keypoints, np.full_like(faces.teacher, np.nan), [])
    with pytest.raises(ValueError, match="NaN"):
        export_pretraining_set(nan_in_training, PretrainConfig(), tmp_path / "set2", progress=False)


def test_torch_trainer_augmentation_keeps_shape_and_range():
    torch = pytest.importorskip("torch")  # the trainer's own dependency, not the suite's
    generator = torch.Generator().manual_seed(0)
    augment = face_torch.FaceAugmenter(1.0, 1.0, generator)
    faces = torch.from_numpy(_faces().crops[:8])
    out = augment(faces)
    assert out.shape == (8, 160, 160, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 255
    assert not torch.equal(out, faces.float())  # something changed


def test_export_leaves_a_foreign_folder_alone_and_replaces_an_earlier_export(tmp_path):
    faces, config = _faces(), PretrainConfig(val_people_fraction=0.3)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier export"):
        export_pretraining_set(faces, config, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    folder = export_pretraining_set(faces, config, tmp_path / "set", progress=False)
    (folder / "part-099.npz").write_bytes(b"stale part of a bigger export")
    export_pretraining_set(faces, config, folder, progress=False)
    assert not (folder / "part-099.npz").exists()
    assert len(face_torch.load_export(folder)[0]) == len(faces.rows) - 6  # 2 eval people x 3 photos


def test_torch_trainer_schedule_warms_up_then_falls_to_zero():
    learning_rate = face_torch.learning_rate
    values = [learning_rate(k / 100, 0.002, 0.1) for k in range(101)]
    assert values[0] < 0.0001 and max(values) == pytest.approx(0.002, rel=0.02)
    peak = int(np.argmax(values))
    assert 9 <= peak <= 11
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))  # no rise after the warm-up
    assert values[-1] == pytest.approx(0.0, abs=1e-9)
    # Outside 0..1 (a clock read before the start, or past the budget) the rate is held, never negative.
    assert learning_rate(-0.5, 0.002, 0.1) == pytest.approx(values[0]) and learning_rate(1.5, 0.002, 0.1) == 0.0


def test_torch_trainer_refuses_a_budget_that_loading_used_up(tmp_path, capsys):
    pytest.importorskip("torch")  # the trainer's own dependency, not the suite's
    folder = export_pretraining_set(_faces(), PretrainConfig(val_people_fraction=0.3), tmp_path / "set", progress=False)
    with pytest.raises(SystemExit):
        _torch_script().main(["--data", str(folder), "--backbone", "alexnet_bn", "--minutes", "0.001",
                              "--run-dir", str(tmp_path / "run")])
    assert "leaves no time to train" in capsys.readouterr().err


def test_torch_trainer_imports_no_tensorflow():
    """The GPU machine it is for has no TensorFlow: nothing it imports from the package may import it at load."""
    import ast

    root = SCRIPT.parents[1]
    # The script and its trainer module import inside functions too (keras waits for KERAS_BACKEND): all of theirs count.
    trainer = [SCRIPT, root / "tf_models" / "train" / "face_torch.py"]
    todo = {n.module for path in trainer for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("tf_models")}
    assert not any(a.name.split(".")[0] == "tensorflow" for path in trainer for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, ast.Import) for a in n.names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for k in range(1, len(parts) + 1):  # a module and the packages above it
            module = ".".join(parts[:k])
            if module in seen:
                continue
            seen.add(module)
            path = root.joinpath(*module.split("."))
            path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            if not path.is_file():
                continue
            for node in ast.parse(path.read_text()).body:  # top level only: imports inside functions wait for a call
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):  # the module, and its names that may be submodules
                    names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                else:
                    names = []
                assert not any(n.split(".")[0] == "tensorflow" for n in names), f"{module} imports TensorFlow at load"
                todo |= {n for n in names if n.startswith("tf_models")}
    assert {"tf_models.train.face_torch", "tf_models.models.face_embedder", "tf_models.models.alexnet",
            "tf_models.train.face_recipe"} <= seen
