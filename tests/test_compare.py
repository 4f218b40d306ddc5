"""The comparison suite's sweeps (accuracy against epochs / dataset size / batch size) and resume."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT

from tf_models.train.compare import SWEEP_PARAMETERS, parse_sweep, run_suite, run_sweep
from tf_models.config import TrainConfig

CELEBA = str(REPO_ROOT / "datasets" / "celeba" / "sample")


def _script():
    spec = importlib.util.spec_from_file_location("compare_script", REPO_ROOT / "scripts" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _base(tmp_path, **overrides) -> TrainConfig:
    values = {"task": "gender", "data_dir": CELEBA, "subset": 120, "backbone": "alexnet_bn", "mode": "scratch",
              "weights": "none", "input_size": (67, 67), "head_units": (8,), "epochs": 1, "batch_size": 32,
              "cache_dir": str(tmp_path / "cache"), "seed": 2}
    values.update(overrides)
    return TrainConfig(**values).validate()


def test_epoch_sweep_from_the_script_writes_table_and_plot_and_resumes(tmp_path, capsys):
    argv = ["--sweeps-only", "--sweep", "epochs=1,2", "--backbones", "alexnet_bn", "--modes", "scratch",
            "--task", "gender", "--data-dir", CELEBA, "--subset", "120", "--input-size", "67", "67",
            "--head-units", "8", "--batch-size", "32", "--cache-dir", str(tmp_path / "cache"),
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"),
            "--dataset-name", "tiny"]
    assert _script().main(argv) == 0
    out = tmp_path / "results" / "tiny"
    assert not (out / "comparison_gender.csv").exists()  # --sweeps-only: no suite
    frame = pd.read_csv(out / "sweep_epochs.csv")
    assert frame["value"].tolist() == [1, 2]
    assert frame["parameter"].unique().tolist() == ["epochs"]
    assert frame["epochs_run"].tolist() == [1, 2]
    assert frame["accuracy"].between(0, 1).all() and frame["balanced_accuracy"].between(0, 1).all()
    assert (frame["images"] == 120).all()
    assert (out / "sweep_epochs.png").stat().st_size > 1000
    markdown = (out / "sweep_epochs.md").read_text()
    assert "| epochs |" in markdown and markdown.count("\n| ") == 3  # header + 2 rows
    for value in (1, 2):
        run = tmp_path / "runs" / f"gender_alexnet_bn_scratch_epochs{value}"
        assert (run / "metrics.json").is_file()
        assert (pd.read_csv(run / "history.csv")["epoch_seconds"] > 0).sum() == value  # per-epoch wall time
    capsys.readouterr()
    assert _script().main(argv) == 0  # resume: nothing retrained
    assert capsys.readouterr().out.count("finished earlier") == 2


def test_subset_sweep_records_dataset_size(tmp_path):
    frame = run_sweep(_base(tmp_path), "subset", [60, 120], tmp_path / "results", tmp_path / "runs", "tiny")
    assert frame["value"].tolist() == ["60", "120"]
    assert frame["images"].tolist() == [60, 120]
    assert frame["train_images"].iloc[0] < frame["train_images"].iloc[1]
    written = pd.read_csv(tmp_path / "results" / "tiny" / "sweep_subset.csv")
    assert written["images"].tolist() == [60, 120]
    config = TrainConfig.load(tmp_path / "runs" / "gender_alexnet_bn_scratch_subset60" / "config.yaml")
    assert config.subset == 60


def test_suite_writes_table_best_and_resumes(tmp_path, capsys):
    base = _base(tmp_path)
    frame = run_suite(base, ["alexnet_bn"], ["scratch"], tmp_path / "results", tmp_path / "runs", "tiny", verbose=0)
    assert frame["backbone"].tolist() == ["alexnet_bn"] and frame["inference_ms"].iloc[0] > 0
    assert (tmp_path / "results" / "tiny" / "comparison_gender.md").is_file()
    best = json.loads((tmp_path / "results" / "best" / "gender.json").read_text())
    assert best["backbone"] == "alexnet_bn" and best["accuracy"] == pytest.approx(frame["accuracy"].iloc[0])
    capsys.readouterr()
    again = run_suite(base, ["alexnet_bn"], ["scratch"], tmp_path / "results", tmp_path / "runs", "tiny")
    assert "finished earlier" in capsys.readouterr().out
    pd.testing.assert_frame_equal(again, frame)


def test_a_finished_run_is_reused_only_when_made_the_same_way(tmp_path):
    from tf_models.models.backbones import start_weights_id
    from tf_models.train.compare import reuse_blocker

    run = tmp_path / "run"
    run.mkdir()
    config = dataclasses.replace(_base(tmp_path, backbone="mobilenetv2", mode="transfer", weights="faces",
                                       input_size=(112, 112)), out=str(run))
    assert "unreadable" in reuse_blocker(config, {})  # no config.yaml: never reused blindly
    config.save(run / "config.yaml")
    same_start = {"start_weights": start_weights_id("mobilenetv2", "faces")}
    assert same_start["start_weights"].startswith("faces:") and len(same_start["start_weights"]) == 6 + 64
    assert reuse_blocker(config, same_start) is None
    # New shipped face weights (another hash), or a run folder from before the start was recorded.
    assert "started from faces:0d8c" in reuse_blocker(config, {"start_weights": "faces:0d8c" + "0" * 60})
    assert "unrecorded weights" in reuse_blocker(config, {})
    # Another recipe in the same folder: the changed setting is named.
    assert "epochs: 1 -> 3" in reuse_blocker(dataclasses.replace(config, epochs=3), same_start)


def test_a_run_made_differently_loses_its_old_figures_before_training_again(tmp_path, monkeypatch):
    from tf_models.train import compare

    run = tmp_path / "run"
    run.mkdir()
    config = dataclasses.replace(_base(tmp_path), out=str(run))
    dataclasses.replace(config, epochs=3).save(run / "config.yaml")  # made with another recipe
    (run / "metrics.json").write_text(json.dumps({"accuracy": 0.99, "start_weights": "none"}))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("stopped half-way")

    monkeypatch.setattr(compare, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare.train_or_reuse(config, table=lambda: None)
    assert not (run / "metrics.json").exists()  # never read back as this recipe's result


def test_bad_sweep_parameter_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"valid ones: epochs, subset, batch_size\. Received: parameter='lr'"):
        run_sweep(_base(tmp_path), "lr", [1e-3], tmp_path / "results", tmp_path / "runs")
    with pytest.raises(ValueError, match="Received: parameter='learning_rate'"):
        parse_sweep("learning_rate=1,2")
    assert _script().main(["--backbones", "alexnet_bn", "--sweep", "lr=1,2"]) == 2
    assert _script().main(["--backbones", "alexnet_bn", "--sweeps-only"]) == 2
    assert not (tmp_path / "runs").exists()


def test_parse_sweep():
    assert parse_sweep("epochs=2,4, 8") == ("epochs", [2, 4, 8])
    assert parse_sweep("batch-size=16,32") == ("batch_size", [16, 32])
    assert parse_sweep("subset=100,all") == ("subset", [100, None])
    assert SWEEP_PARAMETERS == ("epochs", "subset", "batch_size")
    with pytest.raises(ValueError, match="Received: epochs='many'"):
        parse_sweep("epochs=2,many")
    with pytest.raises(ValueError, match="PARAM=V1,V2"):
        parse_sweep("epochs")


def test_face_weight_rows_are_named_skipped_or_flagged_not_left_to_be_misread():
    from tf_models.train.compare import chance_note, run_name, skip_reason

    assert run_name("gender", "mobilenetv2", "transfer", "faces") == "gender_mobilenetv2_transfer_faces"
    assert run_name("gender", "mobilenetv2", "transfer", "imagenet") == "gender_mobilenetv2_transfer"
    assert run_name("gender", "mobilenetv2", "scratch", "none") == "gender_mobilenetv2_scratch"
    assert skip_reason("mobilenetv2", "finetune", "faces") is None
    assert skip_reason("alexnet_bn", "transfer", "faces") is None  # both demo backbones ship face weights
    assert skip_reason("vgg16", "scratch", "none") is None
    reason = skip_reason("vgg16", "transfer", "faces")
    assert reason and "vgg16" in reason and "mobilenetv2" in reason and "alexnet_bn" in reason
    # 22 people, one test photo each: 1/22 right is guessing; 20/22 is not
    eye = np.eye(22).tolist()
    assert "at chance" in chance_note({"accuracy": 1 / 22, "confusion_matrix": eye, "mode": "scratch"})
    assert chance_note({"accuracy": 20 / 22, "confusion_matrix": eye, "mode": "transfer"}) == ""
    # gender with a 70/30 test split: 0.70 is what always answering the larger class scores
    assert "0.700" in chance_note({"accuracy": 0.70, "confusion_matrix": [[70, 0], [30, 0]], "mode": "scratch"})
    assert chance_note({"accuracy": 0.90, "confusion_matrix": [[65, 5], [5, 25]], "mode": "scratch"}) == ""
