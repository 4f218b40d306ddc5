"""Stratified K-fold cross-validation on the bundled CelebA sample (tiny model, one epoch per fold)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT

from tf_models.config import TrainConfig
from tf_models.train.crossval import cross_validate, fold_tables
from tf_models.config import load_table

CELEBA = str(REPO_ROOT / "datasets" / "celeba" / "sample")


def _config(tmp_path, **overrides) -> TrainConfig:
    values = {"task": "gender", "data_dir": CELEBA, "subset": 150, "backbone": "alexnet_bn", "mode": "scratch",
              "weights": "none", "input_size": (67, 67), "head_units": (8,), "epochs": 1, "batch_size": 32,
              "out": str(tmp_path / "cv"), "cache_dir": str(tmp_path / "cache"), "seed": 3}
    values.update(overrides)
    return TrainConfig(**values).validate()


def test_three_folds_summary_and_resume(tmp_path, capsys):
    config = _config(tmp_path)
    table = load_table(config)
    result = cross_validate(config, 3, table=table, verbose=0)
    out = tmp_path / "cv"
    assert sorted(p.name for p in out.glob("fold_*")) == ["fold_0", "fold_1", "fold_2"]
    for k in range(3):
        assert (out / f"fold_{k}" / "metrics.json").is_file()
    folds = result[~result["fold"].isin(["mean", "std"])]
    assert len(folds) == 3
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
        values = folds[metric].astype(float)
        assert result.set_index("fold").loc["mean", metric] == pytest.approx(values.mean())
        assert result.set_index("fold").loc["std", metric] == pytest.approx(values.std(ddof=1))
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["folds"] == 3
    assert summary["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean(summary["metrics"]["accuracy"]["values"]))
    assert "accuracy" in (out / "cv_summary.md").read_text() and "±" in (out / "cv_summary.md").read_text()
    assert pd.read_csv(out / "cv_summary.csv")["fold"].astype(str).tolist() == ["0", "1", "2", "mean", "std"]
    # Each fold's metrics are on its held-out images only.
    assert folds["n_test"].tolist() == [json.loads((out / f"fold_{k}" / "metrics.json").read_text())["n"]
                                        for k in range(3)]
    # Resume: finished folds are reused, nothing is retrained.
    capsys.readouterr()
    again = cross_validate(config, 3, table=table, verbose=0)
    assert capsys.readouterr().out.count("finished earlier") == 3
    pd.testing.assert_frame_equal(again, result)


def test_folds_are_disjoint_cover_the_pool_and_are_stratified(tmp_path):
    config = _config(tmp_path, subset=300)
    table = load_table(config)
    tables, assignment = fold_tables(table, 3, seed=config.seed)
    pool = table.frame[table.frame["split"] != "test"]
    held_out = [set(t.split("test")["path"]) for t in tables]
    assert not (held_out[0] & held_out[1] or held_out[0] & held_out[2] or held_out[1] & held_out[2])
    assert set().union(*held_out) == set(pool["path"])
    assert not set(table.split("test")["path"]) & set(assignment["path"])  # the run's test split stays out
    overall = pool["label"].mean()
    for fold_table in tables:
        test = fold_table.split("test")
        assert abs(test["label"].mean() - overall) < 0.12  # stratified: each fold near the pool's class mix
        trained_on = set(fold_table.split("train")["path"]) | set(fold_table.split("val")["path"])
        assert not set(test["path"]) & trained_on
        # group-disjoint: no identity both held out and trained on
        assert not set(test["group"]) & set(fold_table.split("train")["group"])
        assert len(fold_table.split("train")) + len(fold_table.split("val")) + len(test) == len(pool)


def test_class_smaller_than_k_is_a_clear_error(tmp_path):
    config = _config(tmp_path)
    table = load_table(config)
    pool_test = table.frame["split"] == "test"
    male = table.frame.index[(table.frame["label"] == 1) & ~pool_test]
    table.frame = table.frame.drop(male[2:])  # two Male images left in the pool
    with pytest.raises(ValueError, match="'Male' has 2"):
        fold_tables(table, 3, seed=0)


def test_script_parses_folds_and_config_flags(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("crossval_script", REPO_ROOT / "scripts" / "crossval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.build_parser().parse_args(["--folds", "4", "--backbone", "vgg16", "--input-size", "64", "64"])
    assert args.folds == 4 and args.backbone == "vgg16" and args.input_size == [64, 64]
    assert module.main(["--folds", "1", "--data-dir", CELEBA, "--out", str(tmp_path / "x"),
                        "--cache-dir", str(tmp_path / "cache"), "--subset", "60"]) == 2
