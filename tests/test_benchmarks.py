"""The benchmark scripts run end to end on tiny settings and write what results/README.md promises.

Their figures are not asserted (timings are for the scripts, not tests); the tables' structure is.
"""

from __future__ import annotations

import csv

import pytest
from conftest import SHARED_DATA

from tf_models.models.backbones import backbones_with_face_weights

pytestmark = pytest.mark.slow


def _rows(path):
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


def test_bench_inference_writes_every_runtime_side_by_side(tmp_path, capsys):
    from scripts.bench_inference import main

    runtimes = ["keras-predict", "onnx", "onnx-int8"]
    assert main(["--backbones", "alexnet_bn", "--runtimes", ",".join(runtimes), "--repeats", "2",
                 "--batch", "2", "--batch-repeats", "1", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "bench_inference.csv")
    assert [r["runtime"] for r in rows] == runtimes
    assert all(float(r["p50_ms"]) > 0 and float(r["images_per_s"]) > 0 for r in rows)
    by = {r["runtime"]: r for r in rows}
    assert float(by["onnx-int8"]["file_mb"]) < float(by["onnx"]["file_mb"]) / 2  # int8 weights are really int8
    # The served row is the fastest candidate measured (what runtime="auto" serves); the baseline never is.
    served = [r for r in rows if r["served"] == "True"]
    assert len(served) == 1 and served[0]["runtime"] != "keras-predict"
    assert float(served[0]["p50_ms"]) == min(float(r["p50_ms"]) for r in rows if r["runtime"] != "keras-predict")
    markdown = (tmp_path / "bench_inference.md").read_text(encoding="utf-8")
    assert "| cpu |" in markdown and "| cpu flags (speed-relevant) |" in markdown
    assert (tmp_path / "bench_inference.png").stat().st_size > 10_000
    headline = capsys.readouterr().out.strip().splitlines()[-1]
    assert headline.startswith("served path (fastest runtime per backbone on ") and served[0]["runtime"] in headline


def test_bench_inference_times_the_shipped_face_embedder_per_face(tmp_path, capsys):
    from scripts.bench_inference import main

    assert main(["--face-embedder", "--runtimes", "keras-predict,compiled,onnx", "--repeats", "2", "--batch", "2",
                 "--batch-repeats", "1", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "bench_inference.csv")
    shipped = set(backbones_with_face_weights())  # by default every backbone with face weights, at their size
    assert {r["backbone"] for r in rows} == shipped == {"mobilenetv2", "alexnet_bn"}
    assert {r["input"] for r in rows} == {"112x112"}
    headline = capsys.readouterr().out.strip().splitlines()[-1]
    assert headline.startswith("face embedder served on ") and "target <= 10 ms" in headline
    for backbone in shipped:
        mine = [r for r in rows if r["backbone"] == backbone]
        served = [r for r in mine if r["served"] == "True"]
        assert len(served) == 1 and served[0]["runtime"] != "keras-predict"  # one each, never the baseline
        assert float(served[0]["p50_ms"]) == min(float(r["p50_ms"]) for r in mine if r["runtime"] in ("compiled", "onnx"))
        assert f"{backbone} 112x112: {served[0]['runtime']} " in headline and "ms a face" in headline
    markdown = (tmp_path / "bench_inference.md").read_text(encoding="utf-8")
    assert "--face-embedder" in markdown and "mirror view" in markdown
    with pytest.raises(SystemExit):  # no face weights for alexnet: a usage error naming the ones that have them
        main(["--face-embedder", "--backbones", "alexnet", "--out", str(tmp_path)])


@pytest.mark.skipif(not (SHARED_DATA / "celeba" / "gender_labels.csv").is_file(), reason="needs ../shared/data")
def test_bench_pipeline_measures_legacy_and_ours_on_the_same_images(tmp_path, capsys):
    from scripts.bench_pipeline import main

    assert main(["--n", "64", "--batch-size", "32", "--repeats", "1", "--out-dir", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "bench_pipeline.csv")
    variants = [r["variant"] for r in rows]
    assert variants[0] == "legacy" and {"ours", "augment_only", "augment_only_kernel"} <= set(variants)
    assert all(float(r["img_per_s"]) > 0 for r in rows)
    assert "vs legacy ImageDataGenerator" in capsys.readouterr().out.strip().splitlines()[-1]
