"""scripts/evaluate.py on a trained tiny run: the JSON keys results/README.md documents, plots, held-out CSV."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO_ROOT

from tf_models.data.celeba import load_celeba
from tf_models.config import TrainConfig
from tf_models.train.training import train

CELEBA = REPO_ROOT / "datasets" / "celeba" / "sample"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    config = TrainConfig(task="gender", data_dir=str(CELEBA), subset=120, backbone="alexnet_bn", mode="scratch",
                         weights="none", input_size=(67, 67), head_units=(8,), epochs=1, batch_size=32,
                         out=str(root / "run"), cache_dir=str(root / "cache"), seed=4).validate()
    return train(config, verbose=0).run_dir


def _evaluate_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO_ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_metrics(metrics: dict, n: int) -> None:
    assert metrics["n"] == n
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
        assert isinstance(metrics[key], float) and 0 <= metrics[key] <= 1, key
    assert set(metrics["per_class"]) == {"Female", "Male"}
    assert sum(c["support"] for c in metrics["per_class"].values()) == n
    for scores in metrics["per_class"].values():
        assert {"precision", "recall", "f1", "support"} <= set(scores)
    matrix = metrics["confusion_matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    assert sum(map(sum, matrix)) == n
    assert metrics["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / n)
    assert metrics["class_names"] == ["Female", "Male"]


def test_evaluate_cli_split_all_on_the_sample(run_dir, tmp_path):
    out = tmp_path / "eval" / "sample_all.json"
    done = subprocess.run([sys.executable, "scripts/evaluate.py", "--run", str(run_dir), "--data-dir", str(CELEBA),
                           "--split", "all", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(out.read_text())
    # --split all: every usable image of the folder, not the run's 120-image subset.
    config = TrainConfig.load(run_dir / "config.yaml")
    usable = load_celeba(CELEBA, seed=config.seed, cache_dir=config.cache_dir).frame
    _check_metrics(metrics, len(usable))
    assert metrics["n"] > 120 and metrics["split"] == "all" and metrics["unknown_class_images"] == 0
    assert f"(n={metrics['n']})" in done.stdout
    # Subgroups: the sample ships list_attr_celeba.txt; with + without covers every image.
    assert {"Young", "Eyeglasses", "Pale_Skin", "Heavy_Makeup"} <= set(metrics["subgroups"])
    for groups in metrics["subgroups"].values():
        assert groups["with"]["n"] + groups["without"]["n"] == metrics["n"]
    assert out.with_suffix(".confusion.png").stat().st_size > 1000
    assert out.with_suffix(".misclassified.png").stat().st_size > 1000


def test_evaluate_held_out_labels_csv(run_dir, tmp_path):
    # A held-out set described by a generic CSV: other column names, text labels.
    attributes = pd.read_csv(CELEBA / "list_attr_celeba.txt", sep=r"\s+", skiprows=1, usecols=["Male"])
    labels = pd.DataFrame({"file": attributes.index[:40],
                           "gender": ["Male" if v == 1 else "Female" for v in attributes["Male"][:40]]})
    labels.to_csv(tmp_path / "held_out.csv", index=False)
    out = tmp_path / "held_out.json"
    assert _evaluate_script().main(["--run", str(run_dir), "--data-dir", str(CELEBA), "--labels-csv",
                                    str(tmp_path / "held_out.csv"), "--x-col", "file", "--y-col", "gender",
                                    "--split", "all", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    _check_metrics(metrics, 40)
    counts = labels["gender"].value_counts()
    assert [metrics["per_class"][c]["support"] for c in ("Female", "Male")] == [counts["Female"], counts["Male"]]
    assert "subgroups" not in metrics  # no attribute columns in a plain labels CSV
