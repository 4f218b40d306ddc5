"""Release models: a finished run made small enough to ship inside the package, with its card.

A release folder is a run folder (:mod:`tf_models.runs`) holding ``model.int8.npz`` instead of
``model.keras``: the same weights in int8 at a quarter of the size, rebuilt from ``config.yaml`` on load, so every
reader of run folders (the predictor, the app, the exports) serves it unchanged. Before a release is
written, the int8 model is checked against the float32 one on the run's own test photos.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tf_models.runs import (
    CLASS_NAMES_FILE,
    CONFIG_FILE,
    CROP_FILE,
    METRICS_FILE,
    RELEASE_CARD_FILE,
    load_run_model,
    read_metrics,
    read_run,
    write_metrics,
    write_release_weights,
)

# The int8 release must name the same class as the float32 run on at least this share of test photos.
MIN_RELEASE_AGREEMENT = 0.995
# metrics.json keys a release keeps (the rest describe the training machine, not the model)
RELEASE_METRICS = ("n", "accuracy", "balanced_accuracy", "macro_f1", "per_class", "split", "backbone", "mode",
                   "params", "input_size", "epochs_run")


def release_agreement(original, release_dir: Path, inputs: np.ndarray) -> float:
    """Share of ``inputs`` (model inputs, N x H x W x 3) on which the run's model ``original`` and the
    release in ``release_dir`` predict the same class."""
    from tf_models.models.classifier import inference_function

    release = load_run_model(release_dir)
    size = original.input_shape[1:3]
    a = inference_function(original, size)(inputs.astype(np.float32)).numpy()
    b = inference_function(release, size)(inputs.astype(np.float32)).numpy()
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def write_release(run_dir: str | Path, out_dir: str | Path, check_inputs: np.ndarray, *, command: str,
                  trained_by: str = "") -> Path:
    """Writes the release folder of the finished run ``run_dir`` to ``out_dir`` (replacing it).

    ``check_inputs``: framed test photos the int8 weights are checked on; ``command``: what wrote the
    release and ``trained_by``: what trained the run (when another command did), for the card. Raises ValueError when the int8 model disagrees with the run.
    """
    run = read_run(run_dir)
    metrics = read_metrics(run.run_dir)
    if metrics is None:
        raise ValueError(f"{run.run_dir} has no {METRICS_FILE}: not a finished run. Received: run_dir={str(run_dir)!r}")
    out = Path(out_dir)
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (CONFIG_FILE, CLASS_NAMES_FILE, CROP_FILE):
        if (run.run_dir / name).is_file():
            shutil.copy2(run.run_dir / name, staging / name)
    model = load_run_model(run.run_dir)  # loaded once: written, then compared with what was written
    digest = write_release_weights(model, staging)
    agreement = release_agreement(model, staging, check_inputs)
    if agreement < MIN_RELEASE_AGREEMENT:
        shutil.rmtree(staging)
        raise ValueError(f"The int8 weights agree with {run.run_dir} on {agreement:.1%} of {len(check_inputs)} test "
                         f"photos (needed: {MIN_RELEASE_AGREEMENT:.1%}); nothing was written.")
    kept = {k: metrics[k] for k in RELEASE_METRICS if k in metrics}
    kept.update({"weights_storage": "int8 with one scale per output channel for kernels of >= 1024 weights; the rest float16",
                 "agreement": agreement, "agreement_photos": int(len(check_inputs)), "weights_sha256": digest})
    write_metrics(staging, kept)
    (staging / RELEASE_CARD_FILE).write_text(release_card(run.config, run.class_names, kept, command, trained_by), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def make_release(config, out_dir: str | Path, *, command: str, trained_by: str = "", check_photos: int = 400) -> Path:
    """Trains ``config`` (a TrainConfig; reused when its run folder is finished) and writes its release."""
    from tf_models.config import load_table
    from tf_models.data.pipeline import make_dataset
    from tf_models.train.training import train

    run_dir = Path(config.out)
    if read_metrics(run_dir) is None:
        train(config)
    else:
        print(f"[release] {run_dir} finished earlier: releasing it as it is")
    table = load_table(config)
    paths, labels = table.paths_labels("test" if len(table.split("test")) else "val")
    size = tuple(read_metrics(run_dir)["input_size"])  # what the model takes (training records it)
    batches = make_dataset(paths[:check_photos], labels[:check_photos], size, 64, training=False)
    inputs = np.concatenate([images.numpy() for images, _ in batches])
    return write_release(run_dir, out_dir, inputs, command=command, trained_by=trained_by)


def release_card(config, class_names: list[str], metrics: dict, command: str, trained_by: str = "") -> str:
    """MODEL_CARD.md of a release: what it is, how it was made, how well it does, and its limits."""
    size = "x".join(map(str, metrics.get("input_size", config.input_size or [])))
    per_class = metrics.get("per_class", {})
    rows = "".join(f"| {name} | {per_class.get(name, {}).get('recall', float('nan')):.3f} |\n" for name in class_names)
    faces_limit = ("- Its start, `weights=\"faces\"`, was pretrained on face photos that include CelebA's (identity\n"
                   "  labels only, never this task's), the test people's among them (`tf_models/models/weights/MODEL_CARD.md`).\n"
                   "- The face-pretrained start and CelebA are research / non-commercial data: so is this model.\n"
                   if config.weights == "faces" else "- CelebA is research / non-commercial data: so is this model.\n")
    return f"""# Release model: {config.task} ({config.backbone}, {config.mode} from weights="{config.weights}")

The model `app_gradio.py` serves for {config.task} when no trained run is recorded in `results/best/`.
Kernels in int8 with a scale per output channel, small arrays in float16 (`model.int8.npz`), rebuilt from
`config.yaml`;
sha256 `{metrics['weights_sha256']}`.

## How it was made
```
{command}
```
{f"The run it releases was trained by `{trained_by}`." + chr(10) if trained_by else ""}Data: `{Path(config.data_dir).name}` ({config.split} split: a person is never in both training and test),
input {size}, recipe in `config.yaml`.

## How well it does (its own held-out test split, {metrics.get('n', '?')} photos)
- accuracy **{metrics['accuracy']:.4f}**, balanced accuracy {metrics['balanced_accuracy']:.4f}
- the int8 weights name the same class as the float32 run on {metrics['agreement']:.1%} of {metrics['agreement_photos']} test photos

| class | recall |
|---|---|
{rows}
## Limits
- Trained on CelebA: celebrities, mostly young adults, skewed in age and skin tone; expect lower accuracy on
  people unlike them. Labels are binary as CelebA's `Male` attribute gives them; it predicts appearance,
  not anyone's gender identity.
{faces_limit}"""


__all__ = ["MIN_RELEASE_AGREEMENT", "make_release", "release_agreement", "release_card", "write_release"]
