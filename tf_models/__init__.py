"""tf_models: transfer-learning face classifiers (CelebA gender, student identity) in Keras 3.

The public front door. Everything a script or the app needs is importable from here.
"""

import os

# TensorFlow's C++ start-up log lines bury real output; errors still show. Users can override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_models.augment import AugmentConfig
from tf_models.backbones import (
    BACKBONES,
    BackboneSpec,
    WeightsUnavailableError,
    backbone_table,
    get_backbone,
    list_backbones,
)
from tf_models.celeba import load_celeba
from tf_models.classifier import MODES, REFERENCE_HEAD, HeadConfig, build_classifier
from tf_models.config import TrainConfig
from tf_models.losses import SparseCrossentropy  # registered: saved run models need it to load
from tf_models.pipeline import make_dataset
from tf_models.preprocessing import ImagePreprocessing
from tf_models.predictor import FacePrediction, ImagePrediction, Predictor
from tf_models.export import export_run
from tf_models.students import CropSettings, load_students

__all__ = [
    "FacePrediction",
    "ImagePrediction",
    "Predictor",
    "export_run",
    "BACKBONES",
    "MODES",
    "REFERENCE_HEAD",
    "AugmentConfig",
    "BackboneSpec",
    "CropSettings",
    "HeadConfig",
    "ImagePreprocessing",
    "SparseCrossentropy",
    "TrainConfig",
    "WeightsUnavailableError",
    "backbone_table",
    "build_classifier",
    "get_backbone",
    "list_backbones",
    "load_celeba",
    "load_students",
    "make_dataset",
]
