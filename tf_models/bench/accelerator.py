"""The accelerator check (``scripts/check_accelerator.py``): what training gets from the device that is there.

On the device training would use (``training.select_strategy``: a GPU, several GPUs, or the CPU) it reports:

- **device**: its name (GPU model, or the CPU model and cores), the strategy and its replicas;
- **mixed precision in the layers**: the policy ``training.select_precision`` picks, and the dtype
  policies the built model's layers actually carry (counted per policy, nested backbone included);
- **XLA**: whether Keras ran the train step as an XLA-compiled function, checked on the function
  that ran (its traced graph must carry ``_XlaMustCompile``), with the reason when not;
- **augmentation img/s, device vs host**: ``build_augmenter`` as a ``tf.function`` on the device on a batch
  already there (the device's own speed, no transfer), and the same augmenter as a parallel
  ``tf.data`` map on ``/CPU:0`` (how ``data/pipeline.make_dataset`` runs it), decode excluded on both;
- **training img/s** per backbone at its own input size: ``train_on_batch`` on a batch already on the
  device (the train step alone: input pipeline excluded), median of the timed steps after warm-up;
- **peak memory** per backbone: on a GPU the peak bytes TensorFlow's allocator handed out (not the
  pool it reserves); on a CPU the process's peak resident set (VmHWM, reset before each backbone).

Random weights and images: speed does not depend on them, and nothing is downloaded.
"""

from __future__ import annotations

import csv
import gc
import inspect
import os
import re
import resource
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from tf_models.benchmarking import cpu_seconds, machine_info, machine_markdown
from tf_models.config import TrainConfig
from tf_models.cpu import cpu_model, usable_cores
from tf_models.data.augment import AugmentConfig, build_augmenter
from tf_models.models.backbones import get_backbone
from tf_models.models.classifier import build_classifier, normalize_input_shape
from tf_models.models.losses import SparseCrossentropy
from tf_models.train.training import select_precision, select_strategy

BACKBONES = ("mobilenetv2", "resnet50", "densenet201")
ACCELERATOR_BATCH = 128  # the sizes: what a GPU needs to be kept busy
CPU_BATCH = 16
JIT_SETTINGS = {"auto": "auto", "on": True, "off": False}  # --jit -> model.compile(jit_compile=...)
PACKAGES = ("tensorflow", "keras", "numpy")
NUM_CLASSES = 2
COLUMNS = ("device", "backbone", "input", "batch", "mode", "replicas", "params", "dtype_policy", "layer_policies",
           "other_policy_layers", "compute_dtype", "jit_compile", "xla_compiled", "xla_note", "augment",
           "augment_device_img_s", "augment_host_img_s", "first_step_s", "step_ms", "train_img_s", "cpu_ms_per_img",
           "peak_memory_mb", "peak_memory_of", "error")


@dataclass(frozen=True)
class AcceleratorSettings:
    """What is measured and how often; ``None`` sizes follow the device and the backbones."""

    backbones: tuple[str, ...] = BACKBONES
    input_size: tuple[int, int] | None = None  # (H, W) for every backbone; None: each backbone's own
    batch: int | None = None  # per device (replica); None: 128 on an accelerator, 16 on a CPU
    warmup: int = 2  # untimed steps (the first traces, and compiles with XLA when on)
    steps: int = 10  # timed steps; the median is reported
    mode: str = "scratch"  # every layer trains: the full backward pass, the work an accelerator is for
    precision: str = "auto"  # TrainConfig.mixed_precision: auto | off | float16 | bfloat16
    jit: str = "auto"  # auto (what training does: Keras's default) | on | off
    augment: str = "moderate"  # an AugmentConfig preset


@dataclass(frozen=True)
class Device:
    """The device the check runs on."""

    kind: str  # "GPU" or "CPU"
    name: str  # GPU model ("NVIDIA A100-SXM4-40GB") or CPU model
    count: int  # GPUs used (1 on a CPU)
    details: str  # compute capability, cores
    placement: str  # tf.device string of the (first) device: "/GPU:0" or "/CPU:0"

    @property
    def slug(self) -> str:
        """File-name stem: ``gpu-nvidia-a100-sxm4-40gb`` (``-x2`` for two), ``cpu-amd-epyc-2-cores``."""
        name = re.sub(r"\((r|tm)\)", "", self.name.lower())
        stem = f"{self.kind.lower()}-{re.sub(r'[^a-z0-9]+', '-', name).strip('-')}"
        if self.kind == "CPU":
            return f"{stem}-{usable_cores()}-cores"  # CPU speed scales with the cores this process may use
        return f"{stem}-x{self.count}" if self.count > 1 else stem

    @property
    def is_accelerator(self) -> bool:
        return self.kind != "CPU"


@dataclass(frozen=True)
class AcceleratorResult:
    """One row per backbone, where the tables went, and the headline (the last line printed)."""

    rows: list[dict]
    device: Device
    csv_path: Path
    md_path: Path
    headline: str


def describe_device(strategy: tf.distribute.Strategy) -> Device:
    """The GPUs when there are any, else the CPU. A TPU strategy is refused: this check does not measure TPUs."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        raise NotImplementedError("TPUs are not measured by this check (GPU and CPU only).")
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        capability = details.get("compute_capability")
        return Device("GPU", details.get("device_name", gpus[0].name), len(gpus),
                      f"compute capability {'.'.join(map(str, capability))}" if capability else "", "/GPU:0")
    return Device("CPU", cpu_model(), 1, f"{usable_cores()} usable cores", "/CPU:0")


def model_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every computing layer of ``model``, those of nested models (the backbone) included."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers += model_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):  # holds no computation
            layers.append(layer)
    return layers


def layer_policies(model: keras.Model) -> Counter:
    """How many layers carry each dtype policy: what the model computes in, not the global setting."""
    return Counter(layer.dtype_policy.name for layer in model_layers(model))


def majority_compute_dtype(model: keras.Model) -> str:
    """The compute dtype most layers run in (the float32 output layer is the usual exception)."""
    return Counter(layer.dtype_policy.compute_dtype for layer in model_layers(model)).most_common(1)[0][0]


def xla_probe(placement: str) -> tuple[bool, str]:
    """Whether XLA compiles and runs a small function on this device at all: what ``--jit on`` could get."""
    @tf.function(jit_compile=True)
    def probe(values: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(tf.sin(values) * 2.0)

    try:
        with tf.device(placement):
            probe(tf.ones([8])).numpy()
        return True, f"a jit_compile=True tf.function compiled and ran on {placement}"
    except Exception as err:  # noqa: BLE001  any failure is the answer, reported with its reason
        return False, f"XLA failed on {placement}: {type(err).__name__}: {str(err).splitlines()[0][:160]}"


def _why_not_jit(model: keras.Model, jit: str, device: Device, strategy: tf.distribute.Strategy) -> str:
    """Why Keras resolved ``jit_compile`` to False (its ``_resolve_auto_jit_compile`` and ``model_supports_jit`` rules)."""
    if jit == "off":
        return "jit_compile=False requested (--jit off)"
    unsupported = sorted({layer.name for layer in model_layers(model) if not layer.supports_jit})
    if unsupported:
        return f"layers without XLA support: {', '.join(unsupported[:5])}"
    if jit == "auto" and not device.is_accelerator:
        return "Keras's jit_compile='auto' (what training uses) keeps XLA off on machines without a GPU/TPU"
    if jit == "auto" and strategy.num_replicas_in_sync > 1:
        return f"Keras's jit_compile='auto' keeps XLA off under {type(strategy).__name__}"
    return "Keras resolved jit_compile to False"


def _keras_step_function(model: keras.Model) -> tf.types.experimental.PolymorphicFunction | None:
    """The tf.function Keras 3 calls per training step (``one_step_on_data``, inside ``model.train_function``).

    Keras keeps it in a closure; None when its layout changed or the model runs eagerly.
    """
    if model.train_function is None:
        return None
    try:
        wrapper = inspect.getclosurevars(model.train_function).nonlocals.get("one_step_on_data")
    except TypeError:  # not a Python function
        return None
    step = getattr(wrapper, "__wrapped__", None)  # Keras wraps it to convert tf Optionals (functools.wraps)
    return step if isinstance(step, tf.types.experimental.PolymorphicFunction) else None


def xla_compiled(model: keras.Model, data: tuple, jit: str, device: Device,
                 strategy: tf.distribute.Strategy) -> tuple[bool, str]:
    """(compiled, reason): whether the train step that ran (``data``: what it was called with) was compiled by XLA.

    True only when Keras's step function is found and its traced graph for ``data`` carries
    ``_XlaMustCompile``: TensorFlow then compiles it with XLA or raises, and the step ran. Never assumed
    from the setting alone.
    """
    if not model.jit_compile:
        return False, _why_not_jit(model, jit, device, strategy)
    step = _keras_step_function(model)
    if step is None or step.experimental_get_tracing_count() == 0:
        return False, "jit_compile=True but Keras's traced train step was not found (Keras internals changed?)"
    try:  # the trace that ran: same arguments, so no new tracing
        traced = step.get_concrete_function(data)
    except Exception as err:  # noqa: BLE001  unverifiable is reported as not compiled, with why
        return False, f"jit_compile=True but its trace could not be read: {type(err).__name__}: {err}"
    if not traced.function_def.attr["_XlaMustCompile"].b:
        return False, "jit_compile=True but the traced train step has no _XlaMustCompile attribute"
    return True, (f"the train step ran as a tf.function traced with _XlaMustCompile on {device.placement} "
                  "(TensorFlow compiles it with XLA or raises)")


def reset_peak_memory(device: Device) -> bool:
    """Starts a new peak: the GPU allocator's statistics, or the process's VmHWM (Linux ``clear_refs`` 5).

    False where the CPU peak cannot be reset (not Linux, or not allowed): it then counts from the start.
    """
    if device.is_accelerator:
        for index in range(device.count):
            tf.config.experimental.reset_memory_stats(f"GPU:{index}")
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory(device: Device, was_reset: bool) -> tuple[float, str]:
    """(MiB, what it is): the peak since :func:`reset_peak_memory` (``was_reset``: what it returned)."""
    if device.is_accelerator:
        peak = max(tf.config.experimental.get_memory_info(f"GPU:{i}")["peak"] for i in range(device.count))
        return peak / 2**20, "GPU allocator peak (bytes in use, max over GPUs; not the reserved pool)"
    since = "reset before the backbone" if was_reset else "since the process started"
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):  # kB
                return int(line.split()[1]) / 1024, f"CPU: process peak RSS (VmHWM, {since})"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return maxrss / (2**20 if sys.platform == "darwin" else 1024), "CPU: process peak RSS since start (ru_maxrss)"


def _timed_calls(call, warmup: int, steps: int, finish) -> list[float]:
    """Seconds per call of ``steps`` calls after ``warmup`` untimed ones; ``finish(result)`` waits for the device."""
    result = None
    for index in range(warmup):
        result = call(index)
    if result is not None:
        finish(result)
    seconds = []
    for index in range(steps):
        start = time.perf_counter()
        finish(call(warmup + index))
        seconds.append(time.perf_counter() - start)
    return seconds


def augment_on_device(config: AugmentConfig, size: tuple[int, int], batch: int, placement: str,
                      warmup: int, steps: int) -> float:
    """img/s of the augmenter as a tf.function on ``placement`` over a batch already there (no transfer)."""
    augment = tf.function(build_augmenter(config))
    with tf.device(placement):
        images = tf.random.stateless_uniform([batch, *size, 3], seed=[0, 0], maxval=255.0)

        def call(step: int) -> tf.Tensor:
            return augment(images, tf.constant([step, 0], tf.int64))

        # Reading one value waits for the work queued before it: the device is asynchronous.
        seconds = _timed_calls(call, warmup, steps, lambda out: out[0, 0, 0, 0].numpy())
    return batch / statistics.median(seconds)


def augment_on_host(config: AugmentConfig, size: tuple[int, int], batch: int, warmup: int, steps: int) -> float:
    """img/s of the same augmenter as a parallel tf.data map on /CPU:0, as ``make_dataset`` runs it (decode excluded)."""
    augment = build_augmenter(config)
    with tf.device("/CPU:0"):
        images = tf.cast(tf.random.stateless_uniform([batch, *size, 3], seed=[0, 0], maxval=255.0), tf.uint8)
    seeds = tf.data.Dataset.random(seed=0).batch(2)
    dataset = (tf.data.Dataset.zip((tf.data.Dataset.from_tensors(images).repeat(), seeds))
               .map(augment, num_parallel_calls=2 * usable_cores(), deterministic=True)  # the pipeline's setting
               .prefetch(2))
    iterator = iter(dataset)
    seconds = _timed_calls(lambda _: next(iterator), warmup, steps, lambda out: out.numpy())
    return batch / statistics.median(seconds)


def measure_backbone(name: str, settings: AcceleratorSettings, batch: int, device: Device,
                     strategy: tf.distribute.Strategy, policy: str) -> dict:
    """One row: layer policies, XLA, training img/s and peak memory of backbone ``name``."""
    keras.backend.clear_session()  # also resets Keras's global dtype policy: set it again below
    gc.collect()  # the previous backbone's tensors go before the new peak starts
    keras.mixed_precision.set_dtype_policy(policy)  # what training does: layers take it when built
    was_reset = reset_peak_memory(device)
    defaults = TrainConfig()  # the optimiser, loss and metric training.py compiles with
    with strategy.scope():
        model = build_classifier(name, NUM_CLASSES, settings.input_size, mode=settings.mode, weights="none")
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=defaults.lr, clipnorm=defaults.clipnorm),
                      loss=SparseCrossentropy(NUM_CLASSES, defaults.label_smoothing), metrics=["accuracy"],
                      jit_compile=JIT_SETTINGS[settings.jit])
    size = tuple(model.input_shape[1:3])
    with tf.device(device.placement):  # on the device already: the step alone is timed
        images = tf.random.stateless_uniform([batch, *size, 3], seed=[0, 1], maxval=255.0)
        labels = tf.random.stateless_uniform([batch], seed=[0, 2], maxval=NUM_CLASSES, dtype=tf.int32)
    policies = layer_policies(model)
    row = {"device": device.name, "backbone": name, "input": "x".join(map(str, size)), "batch": batch,
           "mode": settings.mode, "replicas": strategy.num_replicas_in_sync, "params": int(model.count_params()),
           "dtype_policy": policy, "layer_policies": " ".join(f"{p}:{n}" for p, n in policies.most_common()),
           "other_policy_layers": " ".join(layer.name for layer in model_layers(model)
                                           if layer.dtype_policy.name != policy),
           "compute_dtype": majority_compute_dtype(model), "jit_compile": bool(model.jit_compile),
           "augment": settings.augment, "augment_device_img_s": "", "augment_host_img_s": "", "error": ""}
    try:
        start = time.perf_counter()
        model.train_on_batch(images, labels)  # traces (and compiles, with XLA) the step
        first_step = time.perf_counter() - start
        for _ in range(settings.warmup - 1):
            model.train_on_batch(images, labels)
        cpu_start = cpu_seconds()
        # train_on_batch returns Python floats: each call waits for its step to finish.
        seconds = _timed_calls(lambda _: model.train_on_batch(images, labels), 0, settings.steps, lambda _: None)
        cpu_used = cpu_seconds() - cpu_start
    except tf.errors.OpError as err:
        # Out of device memory at this batch (densenet201 at 128 on a 16 GB GPU): a row saying so, and
        # the next backbone still measured. Any other failure is a bug and stops the check.
        if not isinstance(err, tf.errors.ResourceExhaustedError) and "RESOURCE_EXHAUSTED" not in str(err):
            raise
        memory, memory_of = peak_memory(device, was_reset)
        return {**row, "xla_compiled": False, "xla_note": "the train step did not run: out of memory",
                "first_step_s": "", "step_ms": "", "train_img_s": "", "cpu_ms_per_img": "",
                "peak_memory_mb": round(memory, 1),
                "peak_memory_of": memory_of, "error": f"out of memory at batch {batch}; try --batch {batch // 2}"}
    compiled, note = xla_compiled(model, (images, labels, None), settings.jit, device, strategy)
    memory, memory_of = peak_memory(device, was_reset)
    step = statistics.median(seconds)
    # Keras's train_on_batch hands every replica the whole batch (no split): N replicas train on N batches a step.
    images_per_step = batch * strategy.num_replicas_in_sync
    return {**row, "xla_compiled": compiled, "xla_note": note, "first_step_s": round(first_step, 2),
            "step_ms": round(1e3 * step, 1), "train_img_s": round(images_per_step / step, 1),
            "cpu_ms_per_img": round(1e3 * cpu_used / (settings.steps * images_per_step), 1),
            "peak_memory_mb": round(memory, 1), "peak_memory_of": memory_of}


def headline(rows: list[dict], device: Device) -> str:
    """The device, the layers' compute dtype, XLA, training and augmentation img/s, peak memory: one line."""
    compiled = sum(bool(r["xla_compiled"]) for r in rows)
    train = ", ".join(f"{r['backbone']} {r['train_img_s'] or r['error']}" for r in rows)
    augment = "; ".join(sorted({f"{r['input']} {r['augment_device_img_s']:.0f} vs {r['augment_host_img_s']:.0f}"
                                for r in rows}))
    return (f"{device.name} ({device.kind} x{device.count}): layers compute in "
            f"{'/'.join(sorted({r['compute_dtype'] for r in rows}))}, XLA compiled the train step for "
            f"{compiled}/{len(rows)} backbones; training img/s at batch {rows[0]['batch']}: {train}; "
            f"augmentation ({rows[0]['augment']}) device vs host img/s: {augment}; "
            f"peak memory {max(r['peak_memory_mb'] for r in rows):.0f} MiB")


def write_csv(rows: list[dict], info: dict[str, str], path: Path) -> None:
    """The machine as ``#`` comment lines, then one row per backbone."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        handle.write("".join(f"# {key}: {value}\n" for key, value in info.items()))
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(rows: list[dict], info: dict[str, str], settings: AcceleratorSettings, command: str,
                   text: str, path: Path) -> None:
    """The setup, what each figure measures, the machine, the headline and the table."""
    notes = sorted({r["xla_note"] for r in rows})
    lines = [f"# Accelerator check: {info['device']}", "",
             f"Made by `{command}`. Random weights and images, {NUM_CLASSES} classes, mode `{settings.mode}`, "
             f"warm-up steps: {settings.warmup}, then the median of {settings.steps} timed steps.", "",
             f"**{text}**", "",
             "| backbone | input | batch | params | layer dtype policies | XLA compiled | train img/s | step ms | "
             "CPU-ms / img | first step s | augment img/s device | augment img/s host | peak MiB |",
             "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['backbone']} | {r['input']} | {r['batch']} | {r['params']:,} | {r['layer_policies']} | "
              f"{r['xla_compiled']} | {r['train_img_s'] or r['error']} | {r['step_ms']} | {r['cpu_ms_per_img']} | "
              f"{r['first_step_s']} | "
              f"{r['augment_device_img_s']} | {r['augment_host_img_s']} | {r['peak_memory_mb']} |" for r in rows]
    lines += ["", "## What each figure is", "",
              f"- **layer dtype policies**: `layer.dtype_policy` of every layer of the built model (nested "
              f"backbone included; count per policy); the policy chosen (`select_precision`, "
              f"`--mixed-precision {settings.precision}`) was `{rows[0]['dtype_policy']}`. Layers on another "
              "policy: " + "; ".join(f"{r['backbone']}: {r['other_policy_layers'] or 'none'}" for r in rows) + ".",
              f"- **XLA compiled** (`--jit {settings.jit}`; training compiles with Keras's `jit_compile='auto'`): "
              "true only when the step function Keras ran was traced with `_XlaMustCompile`. Why: "
              + "; ".join(notes) + ".",
              "- **train img/s**: batch x replicas / median seconds of `model.train_on_batch` (forward, loss, "
              "gradients, Adam update) on a batch already on the device: the train step alone, no input pipeline "
              "(`train_on_batch` gives every replica the whole batch, so `batch` is per device). **CPU-ms / img**: "
              "this process's CPU time (all threads) per trained image over the timed steps: on a CPU the work, "
              "which other jobs on the machine barely change while img/s depends on the cores they leave free; "
              "on a GPU the host's share. **first step s**: tracing (and XLA compilation) plus the first step.",
              f"- **augment img/s device**: `build_augmenter(AugmentConfig.preset('{settings.augment}'))` as a "
              f"`tf.function` on `{info['placement']}`, the batch already there, one call at a time. **host**: the "
              "same augmenter as a parallel `tf.data` map on `/CPU:0` (how `make_dataset` runs it), uint8 batch "
              "in memory; decoding excluded from both. Same batch size as training.",
              f"- **peak MiB**: {rows[0]['peak_memory_of']}.", "", machine_markdown(info)]
    path.write_text("\n".join(lines), encoding="utf-8")


def check_accelerator(settings: AcceleratorSettings, out: Path, command: str) -> AcceleratorResult:
    """Measures every backbone on this machine's device; writes ``<device slug>.{csv,md}`` under ``out``."""
    if not settings.backbones:
        raise ValueError("Name at least one backbone. Received: backbones=()")
    for name in settings.backbones:
        normalize_input_shape(get_backbone(name), settings.input_size)  # bad names and sizes fail before any work
    config = AugmentConfig.preset(settings.augment)
    info = machine_info(PACKAGES)  # before we load the machine ourselves
    strategy = select_strategy()
    device = describe_device(strategy)
    batch = settings.batch or (ACCELERATOR_BATCH if device.is_accelerator else CPU_BATCH)
    policy = select_precision(settings.precision, strategy)
    probe_ok, probe_note = xla_probe(device.placement)
    info = {"device": f"{device.name} x{device.count}" if device.count > 1 else device.name,
            "device details": device.details, "placement": device.placement,
            "strategy": f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replicas)",
            "XLA usable here (probe)": f"{probe_ok}: {probe_note}", **info}

    augment_rates: dict[tuple[int, int], tuple[float, float]] = {}
    rows: list[dict] = []
    previous = keras.mixed_precision.dtype_policy()
    try:
        for name in settings.backbones:
            size = normalize_input_shape(get_backbone(name), settings.input_size)[:2]
            if size not in augment_rates:  # the augmenter's cost depends on the size only
                augment_rates[size] = (augment_on_device(config, size, batch, device.placement, settings.warmup,
                                                         settings.steps),
                                       augment_on_host(config, size, batch, settings.warmup, settings.steps))
            row = measure_backbone(name, settings, batch, device, strategy, policy)
            row["augment_device_img_s"], row["augment_host_img_s"] = (round(v, 1) for v in augment_rates[size])
            rows.append(row)
            print(f"{name} {row['input']} batch {batch}: train {row['train_img_s'] or row['error']} img/s "
                  f"(first step {row['first_step_s']} s), layers {row['layer_policies']}, XLA {row['xla_compiled']}, "
                  f"augment device/host {row['augment_device_img_s']}/{row['augment_host_img_s']} img/s, "
                  f"peak {row['peak_memory_mb']} MiB", flush=True)
    finally:
        keras.backend.clear_session()
        keras.mixed_precision.set_dtype_policy(previous)

    if hasattr(os, "getloadavg"):  # with the start's: how busy the machine was while it was measured
        info["load average at end (1/5/15 min)"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{device.slug}.csv", out / f"{device.slug}.md"
    text = headline(rows, device)
    write_csv(rows, info, csv_path)
    write_markdown(rows, info, settings, command, text, md_path)
    return AcceleratorResult(rows, device, csv_path, md_path, text)
