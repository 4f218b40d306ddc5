"""Shared fixtures. Tests run on CPU with tiny inputs; real data lives in ../shared/data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pathlib import Path

import keras
import pytest

from tf_models import get_backbone, list_backbones

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

ALL_BACKBONES = list_backbones()
MODES = ("transfer", "finetune", "scratch")


def small_input(backbone: str) -> tuple[int, int]:
    """The smallest input each backbone accepts, but never below 32: keeps tests fast."""
    spec = get_backbone(backbone)
    return (max(spec.min_input[0], 32), max(spec.min_input[1], 32))


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Each test starts with a clean Keras graph state and a fixed seed."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield
