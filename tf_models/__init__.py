"""tf_models: transfer-learning face classifiers (CelebA gender, student identity) in Keras 3.

The public front door: every name below is importable from ``tf_models``. Names load on first use
(module ``__getattr__``), so ``import tf_models`` and every script's ``--help`` start without
TensorFlow. The layers, top to bottom (imports only point down; ``make test`` checks it):

    app/        the Gradio service, attendance log
    identity/   gallery of face embeddings, open-set evaluation
    serve/      runtimes, export, the served-runtime choice, Predictor   |  train/  training, metrics, compare, crossval
    runs.py     the run folder
    config.py   TrainConfig
    data/       images on disk -> tables -> tf.data      faces/  detector, framing, verification maths      models/  backbones, classifier
    images.py, cpu.py                                    (leaves: no tf_models imports)

``ARCHITECTURE.md`` at the repository root walks through them.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# TensorFlow's C++ start-up log lines bury real output; errors still show. Users can override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# public name -> module that defines it
_PUBLIC = {
    "AugmentConfig": "tf_models.data.augment",
    "BACKBONES": "tf_models.models.backbones",
    "BackboneSpec": "tf_models.models.backbones",
    "WeightsUnavailableError": "tf_models.models.backbones",
    "backbone_table": "tf_models.models.backbones",
    "get_backbone": "tf_models.models.backbones",
    "list_backbones": "tf_models.models.backbones",
    "load_celeba": "tf_models.data.celeba",
    "MODES": "tf_models.models.classifier",
    "REFERENCE_HEAD": "tf_models.models.classifier",
    "HeadConfig": "tf_models.models.classifier",
    "build_classifier": "tf_models.models.classifier",
    "TrainConfig": "tf_models.config",
    "SparseCrossentropy": "tf_models.models.losses",
    "make_dataset": "tf_models.data.pipeline",
    "ImagePreprocessing": "tf_models.models.preprocessing",
    "FacePrediction": "tf_models.serve.predictor",
    "ImagePrediction": "tf_models.serve.predictor",
    "Predictor": "tf_models.serve.predictor",
    "export_run": "tf_models.serve.export",
    "CropSettings": "tf_models.faces.framing",
    "load_students": "tf_models.data.folders",
    "load_run_model": "tf_models.runs",
    "read_run": "tf_models.runs",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tf_models' has no attribute {name!r}. Public names: {', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
