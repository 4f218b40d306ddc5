"""Run folders written before the package had layers still load, serve and answer the same.

``tests/fixtures/run_flat_layout/`` was written by ``tf_models.training.train`` of the flat package
(commit ad510f5; see its README.md): an identity run whose ``model.keras`` names the modules of
that time (``tf_models.preprocessing``, ``tf_models.losses``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "run_flat_layout"


def test_the_fixture_names_the_old_module_paths():
    import zipfile

    with zipfile.ZipFile(FIXTURE / "model.keras") as archive:
        config = archive.read("config.json").decode()
    assert '"module": "tf_models.preprocessing"' in config  # what makes this test worth having


def test_old_run_folder_loads_with_the_public_names(tmp_path):
    import tf_models

    run = shutil.copytree(FIXTURE, tmp_path / "run")
    files = tf_models.read_run(run)
    assert files.config.task == "identity" and files.crop is not None and files.crop.size == (32, 32)
    # Written before alignment existed: it cut box squares, and its config and crop.json agree on that.
    assert files.crop.align is False and files.config.crop_settings() == files.crop
    assert files.class_names == json.loads((FIXTURE / "class_names.json").read_text())
    model = tf_models.load_run_model(run)
    assert model.get_layer("preprocess").__class__ is tf_models.ImagePreprocessing
    probabilities = np.asarray(model(np.zeros((2, 32, 32, 3), np.float32)))
    assert probabilities.shape == (2, len(files.class_names))
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    predictor = tf_models.Predictor.from_run(run, runtime="compiled")
    assert predictor.input_size == (32, 32) and predictor.crop == files.crop


def test_plain_keras_loads_an_old_model_file_once_the_models_package_is_imported():
    """User code that calls keras.saving.load_model itself: importing ``tf_models.models`` registers the
    custom layers (``import tf_models`` alone stays light and registers nothing)."""
    code = ("import keras, sys, tf_models.models; "
            "m = keras.saving.load_model(sys.argv[1], safe_mode=True, compile=False); "
            "print(type(m.get_layer('preprocess')).__module__)")
    out = subprocess.run([sys.executable, "-c", code, str(FIXTURE / "model.keras")], capture_output=True,
                         text=True, check=True, cwd=REPO_ROOT).stdout.strip()
    assert out == "tf_models.models.preprocessing"


def test_import_tf_models_loads_neither_tensorflow_nor_keras():
    code = ("import sys, tf_models; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)); "
            "tf_models.TrainConfig; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT).stdout.split()
    assert out[0] == "[]"  # nothing heavy on import
    with pytest.raises(AttributeError, match="Public names: "):
        import tf_models

        tf_models.NoSuchThing  # noqa: B018
