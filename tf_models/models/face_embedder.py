"""Face embedders: a registry backbone + a small projection to a unit vector, and their shipped weights.

``build_face_embedder("mobilenetv2")`` takes raw RGB face crops (0..255) and returns an L2-normalised
embedding (output ``embedding``): faces of one person lie close by cosine similarity. It is what
``scripts/pretrain_faces.py`` trains and what ``weights="faces"`` ships.

Shipped weights (``weights="faces"``) live inside the package (:data:`FACE_WEIGHTS_DIR`), one
``.npz`` per backbone (float16 arrays, the big kernels as 6-bit codes with a scale per channel), named by the backbone's registry row
(:class:`~tf_models.models.backbones.FaceWeights`: file, sha256, input size). They are read with
``allow_pickle=False`` and checked by hash before use: offline, no download, never partly loaded.
The file holds the backbone (``backbone/<variable path>``) and the projection (``head/<path>``), so
a classifier can start from the backbone alone and the gallery can use the whole embedder.

The margin softmax heads (:class:`MarginLogits`: ArcFace, CosFace) are for training only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from tf_models.models.backbones import (
    FACE_WEIGHTS_DIR,
    FaceWeightsError,
    assign_face_weights,
    backbones_with_face_weights,
    face_weights_path,
    get_backbone,
    read_face_weights,
    save_face_arrays,
)
from tf_models.models.classifier import BACKBONE_LAYER, build_backbone, normalize_input_shape
from tf_models.models.preprocessing import ImagePreprocessing, MirrorImage

EMBEDDING_OUTPUT = "embedding"
FACE_FEATURES_LAYER = "face_features"  # pooled backbone features
PROJECTION_LAYER = "projection"
PROJECTION_BN_LAYER = "projection_bn"
DEFAULT_EMBEDDING_DIM = 128
MARGIN_LOSSES = ("arcface", "cosface")


def save_face_weights(embedder: keras.Model, path: str | Path) -> str:
    """Writes ``embedder``'s weights as a float16 ``.npz`` (a run's; :func:`~tf_models.models.backbones.pack_face_weights`
    makes the package's form of it); returns its sha256."""
    base = embedder.get_layer(BACKBONE_LAYER)
    arrays = {f"backbone/{v.path}": np.asarray(v.numpy()) for v in base.weights}
    for name in (PROJECTION_LAYER, PROJECTION_BN_LAYER):
        arrays.update({f"head/{v.path}": np.asarray(v.numpy()) for v in embedder.get_layer(name).weights})
    return save_face_arrays(arrays, path, levels=None)


def build_face_embedder(backbone: str, input_size: Sequence[int] | None = None, *,
                        embedding_dim: int = DEFAULT_EMBEDDING_DIM, weights: str | None = "faces",
                        dropout: float = 0.0, mirror: bool | None = None) -> keras.Model:
    """Raw RGB face crops (N x H x W x 3, 0..255) -> unit ``embedding`` (N x embedding_dim, float32).

    Args:
        backbone: a registry name.
        input_size: (height, width); default: the face weights' size, else the backbone's own.
        embedding_dim: size of the embedding (the shipped weights fix it).
        weights: 'faces' (the shipped embedder, whole), None/'none' (random, to train), or 'imagenet'
            (the backbone only; the projection starts random).
        dropout: on the pooled features while training.
        mirror: also embed the left-right mirror image and average the pooled features (the usual
            test-time flip of face recognition: steadier embeddings for twice the backbone time).
            Default: on with ``weights="faces"`` (serving), off otherwise (training). Same weights either way.
    """
    spec = get_backbone(backbone)
    weights = None if weights in (None, "none") else weights
    if weights not in (None, "faces", "imagenet"):
        raise ValueError(f"weights must be 'faces', 'imagenet' or 'none'. Received: weights={weights!r}")
    arrays = read_face_weights(spec) if weights == "faces" else None  # hash checked; errors before building
    if weights == "faces":
        if input_size is None:
            input_size = spec.faces.input_size
        embedding_dim = spec.faces.embedding_dim
    shape = normalize_input_shape(spec, input_size)
    base = build_backbone(spec, shape, "imagenet" if weights == "imagenet" else None)
    inputs = keras.Input(shape=shape, name="image")
    x = ImagePreprocessing(spec.preprocessing, name="preprocess")(inputs)
    pool = layers.GlobalAveragePooling2D(name=FACE_FEATURES_LAYER)
    if mirror if mirror is not None else weights == "faces":
        x = layers.Average(name="mirror_average")([pool(base(x)), pool(base(MirrorImage(name="mirror")(x)))])
    else:
        x = pool(base(x))
    if dropout > 0:
        x = layers.Dropout(dropout, name="features_dropout")(x)
    x = layers.Dense(int(embedding_dim), use_bias=False, name=PROJECTION_LAYER)(x)
    x = layers.BatchNormalization(name=PROJECTION_BN_LAYER)(x)
    outputs = layers.UnitNormalization(axis=-1, dtype="float32", name=EMBEDDING_OUTPUT)(x)
    model = keras.Model(inputs, outputs, name=f"{spec.name}_face_embedder")
    assert base.name == BACKBONE_LAYER
    if arrays is not None:
        assign_embedder_arrays(model, arrays, spec.name)
    return model


def assign_embedder_arrays(embedder: keras.Model, arrays: dict[str, np.ndarray], backbone: str) -> None:
    """Sets ``embedder``'s backbone and projection from arrays in the shipped format (``backbone/<path>``,
    ``head/<path>``: :func:`save_face_weights`); a missing or misshapen array is an error, never a partial load."""
    assign_face_weights(embedder.get_layer(BACKBONE_LAYER).weights, arrays, "backbone/", backbone)
    for name in (PROJECTION_LAYER, PROJECTION_BN_LAYER):
        assign_face_weights(embedder.get_layer(name).weights, arrays, "head/", backbone)


def is_face_embedder(model: keras.Model) -> bool:
    """True for a model of :func:`build_face_embedder` (one output: the unit embedding)."""
    return not isinstance(model.output, dict) and model.layers[-1].name == EMBEDDING_OUTPUT \
        and isinstance(model.layers[-1], layers.UnitNormalization)


@keras.saving.register_keras_serializable(package="tf_models")
class MarginLogits(layers.Layer):
    """Margin softmax logits over identities (training only): ``[embedding, label] -> scaled logits``.

    ``arcface``: s * cos(theta + m) for the true class (Deng et al. 2019); ``cosface``: s * (cos(theta) - m)
    (Wang et al. 2018). Other classes get s * cos(theta). The embedding must be unit length.
    """

    def __init__(self, num_classes: int, loss: str = "arcface", scale: float = 30.0, margin: float = 0.3, **kwargs):
        super().__init__(**kwargs)
        if loss not in MARGIN_LOSSES:
            raise ValueError(f"loss must be one of {MARGIN_LOSSES}. Received: loss={loss!r}")
        self.num_classes, self.loss, self.scale, self.margin = int(num_classes), loss, float(scale), float(margin)

    def build(self, input_shape):
        dim = int(input_shape[0][-1])
        self.centres = self.add_weight(shape=(dim, self.num_classes), initializer="glorot_normal", name="centres")

    def call(self, inputs):
        embedding, labels = inputs
        cosine = ops.matmul(ops.cast(embedding, "float32"), ops.normalize(ops.cast(self.centres, "float32"), axis=0))
        cosine = ops.clip(cosine, -1.0 + 1e-7, 1.0 - 1e-7)
        one_hot = ops.one_hot(ops.cast(ops.reshape(labels, (-1,)), "int32"), self.num_classes)
        if self.loss == "cosface":
            target = cosine - self.margin
        else:
            # cos(theta + m), and the usual fallback where theta + m passes pi (the curve must keep falling).
            sine = ops.sqrt(1.0 - ops.square(cosine))
            target = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
            target = ops.where(cosine > math.cos(math.pi - self.margin), target,
                               cosine - math.sin(math.pi - self.margin) * self.margin)
        return self.scale * (one_hot * target + (1.0 - one_hot) * cosine)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "loss": self.loss,
                "scale": self.scale, "margin": self.margin}


__all__ = ["DEFAULT_EMBEDDING_DIM", "EMBEDDING_OUTPUT", "FACE_WEIGHTS_DIR", "FaceWeightsError", "MarginLogits",
           "assign_embedder_arrays", "backbones_with_face_weights", "build_face_embedder", "face_weights_path",
           "is_face_embedder", "save_face_weights"]
