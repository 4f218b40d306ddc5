"""scripts/check_accelerator.py on this CPU at tiny sizes, so the GPU check cannot rot where no GPU is."""

from __future__ import annotations

import csv
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_models.bench.accelerator import Device, layer_policies, xla_compiled
from tf_models.cpu import cpu_model

CPU = Device("CPU", "test CPU", 1, "", "/CPU:0")


def read_rows(path) -> list[dict]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines))


@pytest.mark.slow  # ~40 s on 2 busy cores: TensorFlow start-up, augmentation and two tiny backbones
def test_check_accelerator_writes_a_table_named_after_the_device(tmp_path, capsys):
    from scripts.check_accelerator import main

    backbones = ["alexnet", "alexnet_bn"]
    # bfloat16 forced: the table must show it in the layers; jit off: XLA must be reported false.
    assert main(["--backbones", ",".join(backbones), "--input-size", "67", "67", "--batch", "4", "--warmup", "1",
                 "--steps", "2", "--mixed-precision", "bfloat16", "--jit", "off", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()

    csv_file, md_file = sorted(tmp_path.glob("*.csv")), sorted(tmp_path.glob("*.md"))
    assert len(csv_file) == len(md_file) == 1 and csv_file[0].stem == md_file[0].stem
    stem = csv_file[0].stem
    assert stem.startswith("cpu-") and stem.endswith("-cores")
    assert all(word in stem for word in re.findall(r"[a-z0-9]+", cpu_model().lower()))  # named after this CPU

    rows = read_rows(csv_file[0])
    assert [r["backbone"] for r in rows] == backbones
    for row in rows:
        assert row["input"] == "67x67" and row["batch"] == "4" and row["replicas"] == "1"
        for column in ("train_img_s", "augment_device_img_s", "augment_host_img_s", "peak_memory_mb", "step_ms",
                       "cpu_ms_per_img"):
            assert float(row[column]) > 0, (column, row[column])
        assert row["dtype_policy"] == "mixed_bfloat16"
        counts = dict(item.split(":") for item in row["layer_policies"].split())
        assert int(counts["mixed_bfloat16"]) > 10 and row["compute_dtype"] == "bfloat16"
        assert "predictions" in row["other_policy_layers"].split()  # the float32 softmax, read from the layer
        assert row["jit_compile"] == row["xla_compiled"] == "False"
        assert "jit_compile=False requested" in row["xla_note"]
        assert "peak RSS" in row["peak_memory_of"]
    assert rows[0]["augment_device_img_s"] == rows[1]["augment_device_img_s"]  # one size: measured once

    markdown = md_file[0].read_text(encoding="utf-8")
    assert all(f"| {name} | 67x67 | 4 |" in markdown for name in backbones)
    assert "--mixed-precision bfloat16 --jit off" in markdown and "| placement | /CPU:0 |" in markdown
    assert printed[-1] in markdown  # the headline, printed last
    assert keras.mixed_precision.dtype_policy().name == "float32"  # the global policy is given back


def _tiny_model(jit) -> tuple[keras.Model, tuple]:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    images, labels = tf.ones([8, 4]), tf.constant(np.arange(8) % 2, tf.int32)
    return model, (images, labels)


def test_xla_compiled_is_read_from_the_step_that_ran():
    strategy = tf.distribute.get_strategy()
    model, (x, y) = _tiny_model(True)
    compiled, note = xla_compiled(model, (x, y, None), "on", CPU, strategy)
    assert not compiled and "not found" in note  # requested but not run yet: not claimed
    model.train_on_batch(x, y)
    compiled, note = xla_compiled(model, (x, y, None), "on", CPU, strategy)
    assert compiled and "_XlaMustCompile" in note

    model, (x, y) = _tiny_model(False)
    model.train_on_batch(x, y)
    assert xla_compiled(model, (x, y, None), "off", CPU, strategy) == (False, "jit_compile=False requested (--jit off)")

    model, (x, y) = _tiny_model("auto")  # what training does: Keras keeps XLA off on a CPU-only machine
    model.train_on_batch(x, y)
    compiled, note = xla_compiled(model, (x, y, None), "auto", CPU, strategy)
    assert not compiled and "without a GPU" in note


def test_layer_policies_come_from_the_layers_not_the_global_setting():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                                  keras.layers.Dense(2, dtype="float32", name="out")])
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert layer_policies(model) == {"mixed_float16": 1, "float32": 1}


@pytest.mark.parametrize(("kind", "name", "count", "slug"), [
    ("GPU", "NVIDIA A100-SXM4-40GB", 1, "gpu-nvidia-a100-sxm4-40gb"),
    ("GPU", "Tesla T4", 2, "gpu-tesla-t4-x2"),
])
def test_gpu_tables_are_named_after_the_gpu(kind, name, count, slug):
    assert Device(kind, name, count, "", "/GPU:0").slug == slug
    assert Device("CPU", "Intel(R) Xeon(R) CPU @ 2.20GHz", 1, "", "/CPU:0").slug.startswith(
        "cpu-intel-xeon-cpu-2-20ghz-")


def test_out_of_memory_is_a_row_not_a_crash(monkeypatch):
    """densenet201 at batch 128 can exceed a 16 GB Colab GPU: the table says so and the next backbone runs."""
    from tf_models.bench.accelerator import AcceleratorSettings, measure_backbone

    def out_of_memory(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(keras.Model, "train_on_batch", out_of_memory)
    settings = AcceleratorSettings(backbones=("alexnet_bn",), input_size=(67, 67), batch=8)
    row = measure_backbone("alexnet_bn", settings, 8, CPU, tf.distribute.get_strategy(), "float32")
    assert row["train_img_s"] == "" and row["error"] == "out of memory at batch 8; try --batch 4"
    assert row["xla_compiled"] is False and row["layer_policies"].startswith("float32:")
