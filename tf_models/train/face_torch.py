"""Face pretraining on Keras's torch backend: the distill recipe on a GPU with PyTorch and no TensorFlow.

Imports no TensorFlow (``tests/test_face_export.py`` checks it): it reads the folder that
:func:`tf_models.train.face_export.export_pretraining_set` writes (``scripts/pretrain_faces.py --export``)
and trains the project's own model (:func:`~tf_models.models.face_embedder.build_face_embedder`), so
the weights it writes (``face_weights.npz``, float16; ``scripts/pack_face_weights.py`` packs it for the
package) load into the TensorFlow model unchanged. The recipe is the YAML the TensorFlow trainer reads
(:class:`~tf_models.train.face_recipe.PretrainConfig`) with its ``distill`` loss (1 - cosine to dlib's
centred embedding), its augmentation (down-scaling, JPEG, colour, rotation, crop, mirror) done on the
device in torch, AdamW with a warm-up and a cosine schedule, BatchNorm momentum 0.99.

A time budget (``minutes``) fixes the length by time (what a lent GPU allows): the schedule follows the
fraction of the budget spent, so it ends at 0 on time however the GPU's speed varies; otherwise the
recipe's epochs. The run folder gets ``face_weights.npz``, ``pretrain_config.yaml`` (what
``scripts/bench_faces.py --run`` reads) and ``history.csv`` (held-back people's pair accuracy and teacher
cosine, as the TensorFlow recipe logs). Keras must be on the torch backend before it is first imported
(``KERAS_BACKEND=torch``; ``scripts/pretrain_faces_torch.py`` sets it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from tf_models.faces.verification import pair_accuracy
from tf_models.train.face_recipe import (BATCHNORM_MOMENTUM, EXPORT_MANIFEST_FILE, FACE_WEIGHTS_FILE,
                                         PRETRAIN_CONFIG_FILE, PretrainConfig)

ROTATION_DEGREES = 10.0  # the augmentation of tf_models.train.face_pretraining.FACE_AUGMENT, in torch
CROP_AREA, CROP_RATIO = (0.8, 1.0), (0.9, 1.1)
COLOUR_JITTER = (0.3, 0.3, 0.3, 0.05)  # brightness, contrast, saturation, hue (a fraction of a turn)


def load_export(folder: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """(uint8 N x H x W x 3 faces, per-photo arrays, manifest) of a ``pretrain_faces.py --export`` folder."""
    folder = Path(folder)
    if not (folder / EXPORT_MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not an export (no {EXPORT_MANIFEST_FILE}): make one with "
                                f"scripts/pretrain_faces.py --export DIR. Received: data={str(folder)!r}")
    manifest = json.loads((folder / EXPORT_MANIFEST_FILE).read_text())
    blobs, columns = [], []
    for part in sorted(folder.glob("part-*.npz")):
        with np.load(part, allow_pickle=False) as stored:
            data, offsets = stored["blob"].tobytes(), stored["offsets"]
            blobs += [data[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
            columns.append({k: stored[k] for k in ("row", "person", "is_val", "teacher")})
    if not blobs:
        raise FileNotFoundError(f"No part-*.npz in {folder}: make it with scripts/pretrain_faces.py --export. "
                                f"Received: data={str(folder)!r}")
    meta = {k: np.concatenate([c[k] for c in columns]) for k in columns[0]}

    def decode(blob: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))

    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        faces = np.stack(list(pool.map(decode, blobs, chunksize=256)))
    return faces, meta, manifest


def learning_rate(done: float, peak: float, warmup: float) -> float:
    """The recipe's schedule at ``done`` (0..1) of the run: linear warm-up over the first ``warmup``, then
    cosine from ``peak`` to 0. ``done`` outside 0..1 is held at its end: the rate is never negative."""
    done = min(max(done, 0.0), 1.0)
    if done < warmup:
        return peak * (done + 1e-3) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (done - warmup) / max(1e-9, 1 - warmup))))


class FaceAugmenter:
    """The recipe's augmentation on a batch of uint8 faces, on their device: N x H x W x 3 -> float 0..255.

    Down-scaling to 24..H pixels and back, JPEG re-compression at quality 30-95 (each with its
    probability), then one affine warp (crop 80-100% of the area, ratio 0.9-1.1, rotation, mirror;
    reflected borders) and colour jitter: ``tf_models.train.face_pretraining``'s, in torch, with three
    differences: hue turns in YIQ (not HSV), one down-scale size and one JPEG quality per batch (not per
    face), and both act on the exported 112x112 faces (not the 160x160 crops before their resize)."""

    def __init__(self, downscale_probability: float, jpeg_probability: float, generator) -> None:
        import torch

        self.torch, self.generator = torch, generator
        self.downscale_probability, self.jpeg_probability = downscale_probability, jpeg_probability
        try:
            import torchvision.io  # noqa: F401  (JPEG on the GPU)
            self.jpeg = jpeg_probability > 0
        except ImportError:
            print("warning: no torchvision: JPEG re-compression left out of the augmentation", flush=True)
            self.jpeg = False

    def _uniform(self, n: int, low: float, high: float):
        return self.torch.empty(n, device=self.generator.device).uniform_(low, high, generator=self.generator)

    def _degrade(self, x):
        torch, n, size = self.torch, x.shape[0], x.shape[2:]
        fn = torch.nn.functional
        pick = self._uniform(n, 0, 1) < self.downscale_probability
        if pick.any():
            side = int(self._uniform(1, 24, size[0]).item())
            small = fn.interpolate(x[pick], size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            x[pick] = fn.interpolate(small, size=tuple(size), mode="bilinear", align_corners=False).round().clamp(0, 255)
        pick = torch.nonzero(self._uniform(n, 0, 1) < self.jpeg_probability).flatten()
        if self.jpeg and len(pick):
            import torchvision.io as tio

            quality = int(self._uniform(1, 30, 96).item())
            images = list(x[pick].round().clamp(0, 255).to(torch.uint8))
            try:
                encoded = tio.encode_jpeg(images, quality=quality)  # on the GPU where torchvision can
            except RuntimeError:
                encoded = tio.encode_jpeg([image.cpu() for image in images], quality=quality)
            encoded = [data.cpu() for data in encoded]
            try:
                decoded = tio.decode_jpeg(encoded, device=x.device)
            except RuntimeError:
                decoded = [image.to(x.device) for image in tio.decode_jpeg(encoded)]
            x[pick] = torch.stack(decoded).float()
        return x

    def _warp(self, x):
        torch, n = self.torch, x.shape[0]
        area = self._uniform(n, *CROP_AREA)
        ratio = torch.exp(self._uniform(n, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        width, height = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
        shift_x, shift_y = self._uniform(n, -1, 1) * (1 - width), self._uniform(n, -1, 1) * (1 - height)
        angle = self._uniform(n, -1, 1) * math.radians(ROTATION_DEGREES)
        mirror = torch.where(self._uniform(n, 0, 1) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([width * cos * mirror, -height * sin, shift_x], 1),
                             torch.stack([width * sin * mirror, height * cos, shift_y], 1)], 1)
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _colour(self, x):
        torch, n = self.torch, x.shape[0]
        brightness, contrast, saturation, hue = COLOUR_JITTER

        def factor(amount):
            return self._uniform(n, 1 - amount, 1 + amount).view(n, 1, 1, 1)

        def grey(image):
            return 0.299 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3]

        x = (x * factor(brightness)).clamp(0, 255)  # clamped after each step, as the TensorFlow augmenter
        mean = grey(x).mean(dim=(2, 3), keepdim=True)
        x = ((x - mean) * factor(contrast) + mean).clamp(0, 255)
        x = (grey(x) + (x - grey(x)) * factor(saturation)).clamp(0, 255)
        yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
        turn = self._uniform(n, -hue, hue) * 2 * math.pi  # hue: a rotation of the chroma plane of YIQ
        rotation = torch.zeros(n, 3, 3, device=x.device)
        rotation[:, 0, 0] = 1
        rotation[:, 1, 1], rotation[:, 1, 2] = torch.cos(turn), -torch.sin(turn)
        rotation[:, 2, 1], rotation[:, 2, 2] = torch.sin(turn), torch.cos(turn)
        x = torch.einsum("bij,bjhw->bihw", torch.linalg.inv(yiq) @ rotation @ yiq, x)
        return x.clamp(0, 255)

    def __call__(self, faces):
        x = faces.permute(0, 3, 1, 2).float()
        x = self._colour(self._warp(self._degrade(x)))
        return x.permute(0, 2, 3, 1).contiguous()


def pretrain_torch(config: PretrainConfig, data: str | Path, *, minutes: float | None = None,
                   eval_every: float = 1.0) -> Path:
    """Trains ``config``'s embedder on an export folder ``data``, for ``minutes`` or the recipe's epochs;
    evaluates the held-back people every ``eval_every`` minutes. Returns the run folder (``config.run_dir``,
    which must not hold a run already)."""
    started = time.time()
    import keras
    import torch
    import yaml

    from tf_models.models.backbones import load_face_arrays
    from tf_models.models.classifier import BACKBONE_LAYER
    from tf_models.models.face_embedder import assign_embedder_arrays, build_face_embedder, save_face_weights

    if keras.backend.backend() != "torch":
        raise ValueError(f"This trainer runs on Keras's torch backend: set KERAS_BACKEND=torch before Keras is "
                         f"imported. Received: KERAS_BACKEND={keras.backend.backend()}")
    if config.loss != "distill":
        raise ValueError(f"Only the distill loss is implemented on the torch backend. Received: loss={config.loss!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(config.run_dir)
    if (out / FACE_WEIGHTS_FILE).exists():
        raise FileExistsError(f"{out} already holds a run's {FACE_WEIGHTS_FILE}: give another run folder (or delete "
                              f"it). Received: run_dir={str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)
    faces, meta, manifest = load_export(data)
    if tuple(manifest["input_size"]) != config.input_size or manifest["crop_align"] != config.crop_align:
        raise ValueError(f"{data} was exported for input {manifest['input_size']}, align {manifest['crop_align']}; "
                     f"the recipe asks {list(config.input_size)}, align {config.crop_align}: export it again")
    train = np.flatnonzero(~meta["is_val"])
    held = np.flatnonzero(meta["is_val"])
    print(f"{len(train)} photos to train on, {len(held)} held back; {device}, torch {torch.__version__}, "
          f"keras {keras.__version__}; loaded in {time.time() - started:.0f} s", flush=True)
    pixels = torch.from_numpy(faces).to(device)
    targets = torch.nn.functional.normalize(torch.from_numpy(meta["teacher"].astype(np.float32)).to(device), dim=1)
    train_rows = torch.from_numpy(train).to(device)

    keras.utils.set_random_seed(config.seed)
    embedder = build_face_embedder(config.backbone, config.input_size, embedding_dim=config.embedding_dim,
                                   weights=None, dropout=config.dropout, mirror=False)
    for layer in embedder.get_layer(BACKBONE_LAYER).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, BATCHNORM_MOMENTUM)
    if config.init_from:
        assign_embedder_arrays(embedder, load_face_arrays(config.init_from), config.backbone)
    parameters = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    augment = FaceAugmenter(config.downscale_probability, config.jpeg_probability, generator)

    def train_step(lr: float):
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = train_rows[torch.randint(len(train), (config.batch_size,), generator=generator, device=device)]
        embedding = embedder(augment(pixels[rows]), training=True)
        loss = (1.0 - (embedding.float() * targets[rows]).sum(dim=1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def evaluate() -> dict[str, float]:
        if not len(held):
            return {}
        with torch.no_grad():
            vectors = np.concatenate([
                embedder(pixels[torch.from_numpy(held[i:i + 512]).to(device)].float(), training=False).float().cpu().numpy()
                for i in range(0, len(held), 512)])
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        cosine = float(np.mean(np.sum(vectors * targets[torch.from_numpy(held).to(device)].cpu().numpy(), axis=1)))
        figures = pair_accuracy(vectors, meta["person"][held])  # the TensorFlow recipe's progress figure
        return {"val_pair_accuracy": figures["pair_accuracy"], "val_teacher_cosine": cosine}

    steps_per_epoch = max(1, len(train) // config.batch_size)
    total = config.epochs * steps_per_epoch
    warmup = min(0.1, config.warmup_epochs / max(1, config.epochs))  # a fraction of the run
    # --minutes: the schedule follows the time left, not a step count fitted once (a shared GPU's speed drifts)
    budget_start, budget = time.time(), (minutes * 60 - (time.time() - started) - 30 if minutes else None)
    if budget is not None and budget <= 0:  # loading took the whole budget: nothing to fit a schedule to
        raise ValueError(f"--minutes {minutes:g} leaves no time to train: loading the data and building the "
                     f"model took {(time.time() - started) / 60:.1f} min, and the last evaluation needs about "
                     f"30 s. Give more minutes, or --epochs. Received: --minutes={minutes:g}")
    history: list[dict] = []
    last_eval, loss, lr, step = time.time(), torch.zeros(()), config.lr, 0

    def record(final: bool = False) -> None:
        row = {"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 2), "loss": round(float(loss), 5),
               "lr": lr, "minutes": round((time.time() - started) / 60, 2), **evaluate()}
        history.append(row)
        print(json.dumps(row), flush=True)
        save_face_weights(embedder, out / FACE_WEIGHTS_FILE)  # a run cut short keeps its latest weights
        if final:
            with open(out / "history.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(history[-1]))
                writer.writeheader()
                writer.writerows(history)

    step = -1
    while True:
        done = (time.time() - budget_start) / budget if budget is not None else (step + 1) / total
        if done >= 1.0:
            break
        step += 1
        lr = learning_rate(done, config.lr, warmup)
        loss = train_step(lr)
        if time.time() - last_eval > eval_every * 60:
            record()
            last_eval = time.time()
    record(final=True)
    device_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    trained = {**asdict(config), "input_size": list(config.input_size), "epochs": max(1, round((step + 1) / steps_per_epoch))}
    (out / PRETRAIN_CONFIG_FILE).write_text(
        f"# scripts/pretrain_faces_torch.py on {device_name}, torch {torch.__version__}, keras {keras.__version__} "
        f"(torch backend): {(step + 1) / steps_per_epoch:.1f} epochs in {(time.time() - started) / 60:.1f} min\n"
        + yaml.safe_dump(trained, sort_keys=False))
    print(f"face embedder written to {out} ({(time.time() - started) / 60:.1f} min on {device_name})")
    return out


__all__ = ["FaceAugmenter", "learning_rate", "load_export", "pretrain_torch"]
