"""The face pretraining recipe (``configs/pretrain_faces*.yaml``): every setting, in one dataclass.

Kept apart from :mod:`tf_models.train.face_pretraining` (which needs TensorFlow) so that the same
recipe drives :mod:`tf_models.train.face_torch` on a GPU machine with PyTorch and no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from tf_models.faces.crop import CropSettings

LOSSES = ("distill", "arcface", "cosface", "distill+arcface", "distill+cosface")
# What both trainers write and read (the TensorFlow one, face_pretraining; the torch one, face_torch).
FACE_WEIGHTS_FILE = "face_weights.npz"  # a run's weights, float16 (scripts/pack_face_weights.py packs them)
PRETRAIN_CONFIG_FILE = "pretrain_config.yaml"  # the recipe a run was trained with (bench_faces.py --run reads it)
EXPORT_MANIFEST_FILE = "manifest.json"  # of a pretrain_faces.py --export folder
BATCHNORM_MOMENTUM = 0.99  # the builders' 0.999 lags a short run's statistics


@dataclass
class PretrainConfig:
    """Every setting of a face pretraining run (the YAML recipe's keys)."""

    data_root: str = "../shared/data"  # the shared data folder (faces/, celeba/)
    include_celeba: bool = True  # CelebA's 4,657 anonymous identities as training people
    run_dir: str = "runs/faces/mobilenetv2_distill"
    cache_dir: str = ".cache/face_pretraining"  # framed faces + teacher embeddings
    crop_align: bool = CropSettings.align  # faces turned upright on their 5 keypoints (FaceWeights.aligned when shipped)
    backbone: str = "mobilenetv2"
    input_size: tuple[int, int] = (112, 112)  # the usual face-recognition size; ~3 ms a face on 2 cores
    embedding_dim: int = 128  # = dlib's, so distillation compares like with like
    loss: str = "distill"  # one of LOSSES
    margin_weight: float = 0.1  # weight of the margin softmax in the combined losses
    margin: float = 0.3
    scale: float = 30.0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-5
    warmup_epochs: int = 1
    dropout: float = 0.1
    downscale_probability: float = 0.5  # a face shrunk to 24..full pixels and blown back up
    jpeg_probability: float = 0.5  # re-compressed at quality 30..95
    val_people_fraction: float = 0.03  # training people held back to watch progress (not the benchmark's)
    workers: int = 2  # processes framing faces
    seed: int = 0
    init_from: str | None = None  # an earlier run's embedder.keras or face_weights.npz: a second schedule

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}. Received: loss={self.loss!r}")
        self.input_size = tuple(int(v) for v in self.input_size)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "PretrainConfig":
        values = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Unknown keys in {path}: {sorted(unknown)}. Valid: {[f.name for f in fields(cls)]}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def uses_teacher(self) -> bool:
        return self.loss.startswith("distill")

    @property
    def margin_loss(self) -> str | None:
        return next((name for name in ("arcface", "cosface") if name in self.loss), None)


__all__ = ["LOSSES", "PretrainConfig"]
