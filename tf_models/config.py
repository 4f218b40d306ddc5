"""The one configuration object of a training run: CLI flags and YAML keys are its fields.

``scripts/train.py --lr 3e-4`` and ``lr: 3e-4`` in a ``--config run.yaml`` set the same field; the
resolved config is saved as ``config.yaml`` in every run folder, so a run can always be repeated.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from tf_models.faces.crop import MULTIPLE_FACE_POLICIES, CropSettings

TASKS = ("gender", "identity")
# What training reads from the config and nothing below it owns:
SCHEDULES = ("plateau", "cosine", "constant")
MIXED_PRECISION = ("auto", "off", "float16", "bfloat16")


@dataclass
class TrainConfig:
    """Everything that defines a run. Field comments are the CLI help."""

    # --- data ---
    task: str = "gender"  # gender (CelebA-style attribute folder) | identity (folder per person)
    data_dir: str = "datasets/celeba/sample"  # the dataset folder
    labels_csv: str | None = None  # gender: a generic labels CSV instead of list_attr_celeba.txt
    x_col: str = "image_id"  # labels CSV: file-name column
    y_col: str | None = None  # labels CSV: label column (default: --attribute)
    attribute: str = "Male"  # gender task: the CelebA attribute to predict
    split: str = "auto"  # gender: auto | identity | official | random
    val_fraction: float = 0.1  # share of images (or identities) for validation
    test_fraction: float = 0.1  # share held out for the final metrics
    subset: int | None = None  # use a stratified random subset of N images
    balance: str = "none"  # none | undersample (training split) | weights (class weights in the loss)
    dedup: str = "group"  # group (duplicates kept in one split) | drop | keep
    crop_margin: float = CropSettings.margin  # identity: face box margin on each side
    crop_size: int = CropSettings.size[0]  # identity: side of the saved face crop
    multiple_faces: str = CropSettings.multiple_faces  # identity: skip | largest
    keep_whole_if_no_face: bool = CropSettings.keep_whole_if_no_face  # identity: keep already-cropped photos where no face is found
    crop_align: bool = CropSettings.align  # identity: turn faces upright on their five keypoints before cropping
    # --- model ---
    backbone: str = "mobilenetv2"  # a registry name (--list-backbones)
    mode: str = "transfer"  # transfer | finetune | scratch
    weights: str = "imagenet"  # imagenet | faces (shipped face-pretrained, see --list-backbones) | none | a file
    input_size: tuple[int, int] | None = None  # H W; default: the backbone's own
    head_units: tuple[int, ...] = (256,)  # hidden Dense widths of the head (the flag with no value, YAML []: a linear classifier; REFERENCE_HEAD: 1024 256 64 32)
    head_dropout: float = 0.2  # dropout after each hidden head layer
    finetune_layers: int | None = None  # finetune: number of top backbone layers to train
    finetune_from: str | None = None  # finetune: first trainable backbone layer (default: the top block)
    mirror_average: bool = False  # test and serve each image with its mirror image (averaged features; twice the backbone time)
    # --- optimisation ---
    epochs: int = 10  # head epochs (phase 1)
    finetune_epochs: int = 0  # finetune mode: epochs of phase 2 at --finetune-lr (0: --epochs)
    batch_size: int = 32  # images per step (global batch under a distribution strategy)
    lr: float = 1e-3  # learning rate of phase 1
    finetune_lr: float = 1e-5  # learning rate of the fine-tuning phase (low: keep pretrained features)
    schedule: str = "plateau"  # plateau | cosine (with warm-up) | constant
    warmup_epochs: int = 1  # cosine: linear warm-up epochs
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    clipnorm: float | None = 1.0  # gradient clipping by global norm
    patience: int = 5  # early stopping patience (epochs without val improvement)
    augment: str = "none"  # none | moderate | aggressive
    cache_features: bool = True  # frozen base, no geometric augmentation: compute backbone features once
    cache: str = "auto"  # decoded images between epochs: auto (memory if they fit, else disk; the log says which) | memory | disk | none
    cache_path: str | None = None  # disk cache folder, shared by runs with the same inputs; unset: the run folder's image_cache/
    mixed_precision: str = "auto"  # auto (float16 on GPU, bfloat16 on TPU) | off | float16 | bfloat16
    deterministic: bool = False  # op determinism: same numbers on CPU for the same seed (slower)
    seed: int = 0  # drives split, shuffle, augmentation and initialisation
    out: str = "runs/run"  # the run folder
    cache_dir: str | None = None  # crops/scans cache (default ~/.cache/tf_models)

    def fractions(self) -> tuple[float, float, float]:
        return (1.0 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)

    def crop_settings(self) -> CropSettings:
        """How an identity run finds and cuts out faces (``crop.json`` in its run folder)."""
        return CropSettings(margin=self.crop_margin, size=(self.crop_size, self.crop_size),
                            multiple_faces=self.multiple_faces, keep_whole_if_no_face=self.keep_whole_if_no_face,
                            align=self.crop_align)

    def cut_like(self, crop: CropSettings) -> "TrainConfig":
        """This config with faces cut as ``crop`` cuts them (margin, size, alignment); which photos are kept is unchanged.

        For a model that was trained on other crops than this run's (the shipped face embedder on a run's photos).
        """
        return dataclasses.replace(self, crop_margin=crop.margin, crop_size=crop.size[0], crop_align=crop.align)

    def validate(self) -> "TrainConfig":
        """Raises ValueError for values no run can use, echoing the value."""
        # Imported here, not at the top: each owner's list is the one source, and `--help` of the
        # scripts should not wait for TensorFlow to start.
        from tf_models.data.augment.config import PRESETS
        from tf_models.data.cache import CACHE_MODES
        from tf_models.data.tables import BALANCE_MODES, DEDUP_MODES
        from tf_models.models.classifier import MODES

        choices = {"task": TASKS, "mode": MODES, "balance": BALANCE_MODES, "schedule": SCHEDULES,
                   "augment": tuple(PRESETS), "mixed_precision": MIXED_PRECISION, "dedup": DEDUP_MODES,
                   "multiple_faces": MULTIPLE_FACE_POLICIES, "cache": CACHE_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}. Received: {name}={getattr(self, name)!r}")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1. Received: "
                             f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"epochs >= 0 and batch_size >= 1 needed. Received: epochs={self.epochs}, batch_size={self.batch_size}")
        return self

    # --- YAML ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"Unknown config keys {unknown}. Valid keys: {', '.join(known)}")
        converted = {k: _coerce(v) for k, v in values.items()}
        return cls(**converted).validate()

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
        return cls.from_dict({k.replace("-", "_"): v for k, v in values.items()})


_HINTS: dict[str, Any] = {}


def _field_type(name: str) -> Any:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(TrainConfig))
    return _HINTS[name]


def _coerce(value: Any) -> Any:
    """YAML lists -> tuples (input_size, head_units); everything else as given."""
    return tuple(value) if isinstance(value, list) else value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one ``--flag`` per TrainConfig field (``data_dir`` -> ``--data-dir``), help from the comments."""
    comments = _field_comments()
    for f in fields(TrainConfig):
        hint = _field_type(f.name)
        flag = "--" + f.name.replace("_", "-")
        base, optional = _unwrap_optional(hint)
        help_text = comments.get(f.name, "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {default})")
        elif typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            # a variable-length tuple may be given empty: `--head-units` alone is a linear head
            nargs = "*" if typing.get_args(base)[-1] is Ellipsis else len(typing.get_args(base))
            parser.add_argument(flag, type=item, nargs=nargs, default=None, metavar="N",
                                help=f"{help_text} (default: {default})")
        else:
            parser.add_argument(flag, type=_none_or(base) if optional else base, default=None,
                                help=f"{help_text} (default: {default})")


def config_from_args(args: argparse.Namespace, yaml_path: str | None = None) -> TrainConfig:
    """Defaults <- YAML file <- flags given on the command line."""
    values: dict[str, Any] = {}
    if yaml_path:
        values.update(dataclasses.asdict(TrainConfig.load(yaml_path)))
    for f in fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return TrainConfig.from_dict(values)


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def _none_or(kind: type):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = kind.__name__
    return parse


def _field_comments() -> dict[str, str]:
    """The ``# comment`` after each field in this file: the single source of the CLI help."""
    import inspect

    comments = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        stripped = line.strip()
        if ":" in stripped and "#" in stripped and not stripped.startswith("#"):
            name = stripped.split(":", 1)[0].strip()
            comments[name] = stripped.split("#", 1)[1].strip()
    return comments


def load_table(config: TrainConfig) -> Any:
    """The dataset ``config`` describes (an :class:`~tf_models.data.tables.ImageTable`), split and checked."""
    if config.task == "gender":
        from tf_models.data.celeba import load_celeba

        return load_celeba(config.data_dir, labels_csv=config.labels_csv, x_col=config.x_col, y_col=config.y_col,
                           attribute=config.attribute, split=config.split, fractions=config.fractions(),
                           subset=config.subset, balance=config.balance, dedup=config.dedup, seed=config.seed,
                           cache_dir=config.cache_dir)
    from tf_models.data.folders import load_students

    return load_students(config.data_dir, crop=config.crop_settings(), fractions=config.fractions(),
                         balance=config.balance, dedup=config.dedup, seed=config.seed, cache_dir=config.cache_dir)
