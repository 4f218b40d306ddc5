"""The run folder: what training writes and everything else reads. Its file names live here only.

A run folder holds everything needed to use, judge and repeat a run::

    config.yaml            the resolved TrainConfig (scripts/train.py --config takes it back)
    class_names.json       label index -> class name
    crop.json              identity runs: how faces were found and cut out (CropSettings)
    model.keras            the trained classifier (preprocessing inside)
    model.int8.npz         instead of model.keras in a release folder (scripts/make_release.py): the same
                           weights in int8 per output channel, rebuilt from config.yaml on load; a quarter
                           of the size to ship
    backbone.weights.h5    the trained headless backbone: --weights for another task
    history.csv, metrics.json, data_report.{json,md}, plots, tensorboard/, backup/
    exports/               serving files made from model.keras (see tf_models.serve); a release
                           folder's go to the user cache (it may sit read-only inside the package)
    image_cache/           --cache disk without --cache-path: decoded images, keyed by the inputs
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tf_models.config import TrainConfig
from tf_models.data.filescan import default_cache_dir
from tf_models.files import atomic_write
from tf_models.faces.crop import CropSettings

CONFIG_FILE = "config.yaml"
CLASS_NAMES_FILE = "class_names.json"
CROP_FILE = "crop.json"
MODEL_FILE = "model.keras"
RELEASE_WEIGHTS_FILE = "model.int8.npz"  # a release folder's model: weights by variable path (write_release_weights)
_SCALE_SUFFIX = "@scale"  # model.int8.npz: the per-channel scales of the int8 array of the same variable path
RELEASE_CARD_FILE = "MODEL_CARD.md"
BACKBONE_WEIGHTS_FILE = "backbone.weights.h5"
HISTORY_FILE = "history.csv"
DATA_REPORT_STEM = "data_report"  # .json and .md, written by DataReport.save
METRICS_FILE = "metrics.json"
EXPORTS_DIR = "exports"
IMAGE_CACHE_DIR = "image_cache"
# Release models shipped inside the package, a run folder per task (scripts/make_release.py writes them):
# what the app serves when no trained run is recorded.
RELEASES_DIR = Path(__file__).resolve().parent / "release"
# What a finished run must hold for anything to serve or judge it (and one of MODEL_FILES).
REQUIRED_FILES = (CONFIG_FILE, CLASS_NAMES_FILE)
MODEL_FILES = (MODEL_FILE, RELEASE_WEIGHTS_FILE)


@dataclass(frozen=True)
class RunFiles:
    """What a run folder says about its model (everything but the weights)."""

    run_dir: Path
    config: TrainConfig
    class_names: list[str]
    crop: CropSettings | None  # identity runs: how training cut faces out; None: gender (CelebA framing)

    @property
    def is_release(self) -> bool:
        """A release folder: int8 weights and no model.keras (scripts/make_release.py)."""
        return not (self.run_dir / MODEL_FILE).is_file()

    @property
    def model_path(self) -> Path:
        """The file holding the weights: what exports are keyed on."""
        return self.run_dir / (RELEASE_WEIGHTS_FILE if self.is_release else MODEL_FILE)

    @property
    def exports_dir(self) -> Path:
        if self.is_release:  # the package folder may be read-only, and a checkout should stay clean
            return default_cache_dir() / "release_exports" / file_sha1(self.model_path)[:16]
        return self.run_dir / EXPORTS_DIR


# ---- writing (training) --------------------------------------------------------------------------


def write_config(run_dir: Path, config: TrainConfig) -> None:
    """The run's resolved config, written first: even a run that fails loading its data can be repeated."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / CONFIG_FILE)


def write_run_start(run_dir: Path, class_names: list[str], crop: CropSettings | None) -> None:
    """What a run folder holds from its first epoch on, next to the config: class names and (identity) the crop."""
    write_class_names(run_dir, class_names)
    if crop is not None:
        write_crop_settings(run_dir, crop)


def write_class_names(folder: Path, class_names: list[str]) -> None:
    (folder / CLASS_NAMES_FILE).write_text(json.dumps(list(class_names), ensure_ascii=False, indent=1),
                                           encoding="utf-8")


def write_crop_settings(folder: Path, crop: CropSettings) -> None:
    (folder / CROP_FILE).write_text(json.dumps(asdict(crop)), encoding="utf-8")


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    # Whole or not at all: metrics.json marks a run as finished (compare, crossval and make_release skip those).
    atomic_write(run_dir / METRICS_FILE, json.dumps(metrics, indent=2, ensure_ascii=False))


def image_cache_folder(run_dir: Path, config: TrainConfig) -> Path:
    """Where a disk image cache goes: ``config.cache_path``, else the run folder's ``image_cache/``."""
    return Path(config.cache_path).expanduser() if config.cache_path else Path(run_dir) / IMAGE_CACHE_DIR


# ---- reading -------------------------------------------------------------------------------------


def read_crop_settings(path: Path) -> CropSettings:
    """``crop.json`` (``dataclasses.asdict`` of CropSettings) back to CropSettings."""
    values = json.loads(Path(path).read_text(encoding="utf-8"))
    values["size"] = tuple(int(v) for v in values["size"])
    values.setdefault("align", False)  # written before alignment existed: those runs cropped box squares
    return CropSettings(**values)


def read_class_names(path: Path) -> list[str]:
    names = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path} must hold a JSON list of at least 2 class names. Received: {names!r}")
    return names


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """``metrics.json`` of a finished run, or None while it is missing (not finished, or crashed)."""
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_data_report(run_dir: str | Path) -> dict[str, Any]:
    """``data_report.json``: what the run's data loader kept, dropped and why, and the split counts."""
    return json.loads((Path(run_dir) / f"{DATA_REPORT_STEM}.json").read_text(encoding="utf-8"))


def read_run(run_dir: str | Path) -> RunFiles:
    """Reads config, class names and crop settings of a finished run folder; checks ``model.keras``."""
    run_dir = Path(run_dir).expanduser()
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if not any((run_dir / name).is_file() for name in MODEL_FILES):
        missing.append(MODEL_FILE)
    if missing:
        raise FileNotFoundError(
            f"{run_dir} is not a finished run folder (missing {', '.join(missing)}). Pass the --out folder of "
            f"scripts/train.py. Received: run_dir={str(run_dir)!r}"
        )
    config = TrainConfig.load(run_dir / CONFIG_FILE)
    crop_path = run_dir / CROP_FILE
    crop = read_crop_settings(crop_path) if crop_path.is_file() else None
    if crop is not None and "crop_align" not in (yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}):
        # Saved before alignment existed: the run cut box squares, as its crop.json says (not today's default).
        config = dataclasses.replace(config, crop_align=crop.align)
    return RunFiles(run_dir, config, read_class_names(run_dir / CLASS_NAMES_FILE), crop)


def release_run(task: str, releases_dir: str | Path = RELEASES_DIR) -> Path | None:
    """The release folder for ``task`` (``gender``, ...) under ``releases_dir`` (default: the package's), or None."""
    folder = Path(releases_dir) / task
    return folder if (folder / RELEASE_WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file() else None


def load_run_model(run_dir: str | Path) -> Any:
    """The run's model (a ``keras.Model``): ``model.keras`` loaded with ``safe_mode=True`` (no code from
    the file), or for a release folder the classifier its config describes with its int8 weights set."""
    import keras

    import tf_models.models  # noqa: F401  registers the custom layers and losses the file names

    run = read_run(run_dir)
    if not run.is_release:
        return keras.saving.load_model(run.model_path, safe_mode=True, compile=False)
    from tf_models.models.classifier import HeadConfig, build_classifier

    config = run.config
    model = build_classifier(config.backbone, len(run.class_names), config.input_size, mode=config.mode,
                             weights="none", head=HeadConfig(units=tuple(config.head_units), dropout=config.head_dropout),
                             mirror_average=config.mirror_average)
    with np.load(run.model_path, allow_pickle=False) as arrays:
        stored = dict(arrays)
    scales = {path[:-len(_SCALE_SUFFIX)]: stored.pop(path) for path in list(stored) if path.endswith(_SCALE_SUFFIX)}
    variables = {v.path: v for v in model.weights}
    if set(scales) - set(stored) or any(stored[p].dtype == np.int8 and p not in scales for p in stored):
        raise ValueError(f"{run.model_path}: int8 arrays and their scales do not pair up: remake the release.")
    if set(stored) != set(variables):
        raise ValueError(f"{run.model_path} does not match the {config.backbone} classifier of {run.run_dir / CONFIG_FILE} "
                         f"({len(set(stored) ^ set(variables))} weights differ by name): remake the release.")
    for path, value in stored.items():
        if tuple(value.shape) != tuple(variables[path].shape):
            raise ValueError(f"{run.model_path}: {path} has shape {value.shape}, the model {variables[path].shape}.")
        if path in scales:  # int8 x its channel's scale
            value = value.astype(np.float32) * scales[path]
        variables[path].assign(value.astype(variables[path].dtype))
    return model


def write_release_weights(model: Any, folder: Path) -> str:
    """``model``'s weights as ``model.int8.npz`` (a release folder's model); returns its sha256.

    Kernels are stored in int8 with one float32 scale per output channel (symmetric, the largest
    magnitude of the channel maps to 127), everything small (biases, BatchNorm) in float16: about a
    quarter of float32's size. The caller checks the answers against the float32 model before shipping.
    """
    arrays: dict[str, np.ndarray] = {}
    for variable in model.weights:
        weights = np.asarray(variable.numpy(), np.float32)
        if weights.ndim < 2 or weights.size < 1024:
            arrays[variable.path] = weights.astype(np.float16)
            continue
        # Output channels are the last axis; a depthwise kernel (H, W, C, 1) has them on the one before.
        axis = weights.ndim - 1 if weights.shape[-1] > 1 else weights.ndim - 2
        scale = np.abs(weights).max(axis=tuple(i for i in range(weights.ndim) if i != axis), keepdims=True) / 127
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        arrays[variable.path] = np.clip(np.round(weights / scale), -127, 127).astype(np.int8)
        arrays[variable.path + _SCALE_SUFFIX] = scale
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RELEASE_WEIGHTS_FILE
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_sha1(path: Path) -> str:
    """Content hash of a file: what cached exports and choices are keyed on.

    Remembered per (path, size, modification time): serving one run asks for its model's hash once
    per candidate runtime, and a large model.keras takes about a second to hash.
    """
    stat = Path(path).stat()
    return _sha1(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha1(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = [
    "BACKBONE_WEIGHTS_FILE",
    "CLASS_NAMES_FILE",
    "CONFIG_FILE",
    "CROP_FILE",
    "EXPORTS_DIR",
    "IMAGE_CACHE_DIR",
    "DATA_REPORT_STEM",
    "HISTORY_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "MODEL_FILES",
    "RELEASE_CARD_FILE",
    "RELEASE_WEIGHTS_FILE",
    "RELEASES_DIR",
    "RunFiles",
    "file_sha1",
    "image_cache_folder",
    "load_run_model",
    "read_class_names",
    "read_crop_settings",
    "read_data_report",
    "read_metrics",
    "read_run",
    "release_run",
    "write_class_names",
    "write_crop_settings",
    "write_metrics",
    "write_config",
    "write_release_weights",
    "write_run_start",
]
