"""Training runs end to end on the bundled samples (tiny inputs, few steps)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO_ROOT
from tf_models.config import TrainConfig
from tf_models.train.training import train

CELEBA = str(REPO_ROOT / "datasets" / "celeba" / "sample")
STUDENTS = str(REPO_ROOT / "datasets" / "students" / "sample")


def _config(tmp_path, **overrides) -> TrainConfig:
    values = dict(task="gender", data_dir=CELEBA, subset=120, backbone="alexnet_bn", mode="scratch", weights="none",
                  input_size=(67, 67), head_units=(16,), epochs=1, batch_size=16, out=str(tmp_path / "run"),
                  cache_dir=str(tmp_path / "cache"), seed=1)
    values.update(overrides)
    return TrainConfig(**values).validate()


def test_run_folder_has_everything(tmp_path):
    result = train(_config(tmp_path), verbose=0)
    run = result.run_dir
    for name in ("config.yaml", "class_names.json", "model.keras", "history.csv", "metrics.json", "data_report.json",
                 "data_report.md", "learning_curves.png", "confusion_matrix.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "class_names.json").read_text()) == ["Female", "Male"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["balanced_accuracy"] <= 1
    assert metrics["n"] == sum(sum(r) for r in metrics["confusion_matrix"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["backbone"] == "alexnet_bn" and config["input_size"] == [67, 67]
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert model.output_shape == (None, 2)
    assert not any(p.suffix == ".pkl" for p in run.rglob("*"))


def test_finetune_runs_two_phases_with_cached_features(tmp_path):
    result = train(_config(tmp_path, backbone="mobilenetv2", mode="finetune", input_size=(64, 64),
                           finetune_epochs=1, lr=1e-3, finetune_lr=1e-5), verbose=0)
    history = pd.read_csv(result.run_dir / "history.csv")
    assert history["phase"].tolist() == ["head", "finetune"]
    assert result.metrics["feature_cache"] is True


def test_a_run_killed_while_fine_tuning_resumes_there_and_ends_as_if_never_killed(tmp_path, monkeypatch):
    import tf_models.train.training as training

    # Augmented, so the head phase iterates the training data (no feature cache): the data order and the
    # dropout state after it must be replayed for the fine-tuning phase to match an uninterrupted run.
    settings = dict(backbone="mobilenetv2", mode="finetune", input_size=(64, 64), epochs=2, finetune_epochs=2,
                    lr=1e-3, finetune_lr=1e-4, augment="moderate", head_dropout=0.5, deterministic=True)
    whole = train(_config(tmp_path / "whole", **settings), verbose=0)
    config = _config(tmp_path / "killed", **settings)
    run = tmp_path / "killed" / "run"

    class Killed(Exception):
        pass

    class KillAtFinetuneStart(keras.callbacks.Callback):  # before phase 2 has any backup of its own
        def on_epoch_begin(self, epoch, logs=None):
            raise Killed

    real_callbacks, real_fit = training._callbacks, training._fit
    monkeypatch.setattr(training, "_callbacks", lambda config, run_dir, phase, epochs, lr: [
        *real_callbacks(config, run_dir, phase, epochs, lr), *([KillAtFinetuneStart()] if phase == "phase2" else [])])
    with pytest.raises(Killed):
        train(config, verbose=0)
    assert (run / "backup" / "phase1.done.npz").is_file() and not (run / "metrics.json").exists()

    monkeypatch.setattr(training, "_callbacks", real_callbacks)
    phases_fitted = []
    monkeypatch.setattr(training, "_fit", lambda *args, **kwargs: phases_fitted.append(args[5]) or real_fit(*args, **kwargs))
    resumed = train(config, verbose=0)
    assert phases_fitted == ["phase2"]  # the head phase was loaded, not trained again
    assert resumed.metrics["confusion_matrix"] == whole.metrics["confusion_matrix"]
    a, b = (pd.read_csv(r.run_dir / "history.csv") for r in (whole, resumed))
    assert a["phase"].tolist() == b["phase"].tolist() == ["head", "head", "finetune", "finetune"]
    np.testing.assert_array_equal(a["loss"], b["loss"])  # bit for bit: same data order, dropout and weights
    np.testing.assert_array_equal(a["val_loss"], b["val_loss"])
    assert training.weights_checksum(keras.saving.load_model(run / "model.keras")) == \
        training.weights_checksum(keras.saving.load_model(whole.run_dir / "model.keras"))
    assert not (run / "backup").exists()  # finished: nothing left to resume


def test_identity_task_saves_crop_settings(tmp_path):
    result = train(_config(tmp_path, task="identity", data_dir=STUDENTS, subset=None, val_fraction=0.17,
                           test_fraction=0.17), verbose=0)
    crop = json.loads((result.run_dir / "crop.json").read_text())
    assert crop["margin"] == 0.2 and crop["size"] == [160, 160]
    assert len(json.loads((result.run_dir / "class_names.json").read_text())) >= 20


def test_same_seed_same_numbers_with_determinism(tmp_path):
    a = train(_config(tmp_path / "a", deterministic=True), verbose=0).metrics
    b = train(_config(tmp_path / "b", deterministic=True), verbose=0).metrics
    assert a["confusion_matrix"] == b["confusion_matrix"]
    ha = pd.read_csv(tmp_path / "a" / "run" / "history.csv")
    hb = pd.read_csv(tmp_path / "b" / "run" / "history.csv")
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-6)


def test_yaml_config_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("backbone: vgg16\nepochs: 3\ninput_size: [64, 64]\nhead_units: [1024, 256, 64, 32]\n")
    config = TrainConfig.load(path)
    assert config.backbone == "vgg16" and config.input_size == (64, 64) and config.head_units == (1024, 256, 64, 32)
    path.write_text("backbone: vgg16\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="Unknown config keys \\['learning_rate'\\]"):
        TrainConfig.load(path)
    with pytest.raises(ValueError, match="Received: mode='frozen'"):
        TrainConfig(mode="frozen").validate()


def test_head_units_flag_takes_widths_or_none_for_a_linear_head(tmp_path):
    import argparse

    from tf_models.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    path = tmp_path / "run.yaml"
    path.write_text("head_units: [64]\n")
    assert config_from_args(parser.parse_args([])).head_units == TrainConfig.head_units
    assert config_from_args(parser.parse_args(["--head-units", "128", "32"])).head_units == (128, 32)
    assert config_from_args(parser.parse_args(["--head-units"]), str(path)).head_units == ()  # flag beats YAML
    assert config_from_args(parser.parse_args([]), str(path)).head_units == (64,)


def test_mixed_precision_policy_keeps_float32_outputs(tmp_path):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        from tf_models import build_classifier

        model = build_classifier("mobilenetv2", 2, (32, 32), mode="scratch", weights=None)
        out = model(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32"))
        assert out.dtype == "float32"
        assert model.get_layer("preprocess").compute_dtype == "float32"
        assert model.get_layer("backbone").layers[2].compute_dtype == "float16"
        np.testing.assert_allclose(np.asarray(out).sum(axis=1), 1.0, atol=1e-3)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tf_models.config import TrainConfig
        from tf_models.train.training import train
        config = TrainConfig(task="gender", data_dir={CELEBA!r}, subset=64, backbone="alexnet_bn", mode="scratch",
                             weights="none", input_size=(67, 67), head_units=(8,), epochs=1, batch_size=16,
                             out={str(tmp_path / 'run')!r}, cache_dir={str(tmp_path / 'cache')!r})
        result = train(config, verbose=0)
        print("STRATEGY", result.metrics["strategy"], result.metrics["epochs_run"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "STRATEGY MirroredStrategy 1" in done.stdout
