"""The transfer-learning classifier: raw image -> preprocessing -> backbone -> pooled head -> softmax.

Output convention, used for every task including binary ones: a softmax over ``num_classes >= 2``
units, trained on integer class indices. One convention means one loss, one metric set and one
prediction decoder everywhere (gender is simply a 2-class task), and the output layer is float32 so
mixed-precision training stays numerically safe.

Modes (each does exactly what its name says; the reference notebooks froze the layers they meant
to unfreeze):

- ``transfer``: the whole backbone is frozen and called with ``training=False``; only the head trains.
- ``finetune``: the top of the backbone (the last N layers, or from a named layer up) trains with the
  head. BatchNorm layers stay frozen and the backbone still runs with ``training=False``, so their
  statistics are not wrecked by small batches (the keras-io transfer-learning guide's advice).
- ``scratch``: random initialisation, every layer trainable, BatchNorm in training mode.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from tf_models.models.backbones import (
    BackboneSpec,
    assign_face_weights,
    get_backbone,
    read_face_weights,
    resolve_imagenet_weights,
)
from tf_models.models.preprocessing import ImagePreprocessing, MirrorImage

MODES = ("transfer", "finetune", "scratch")
BACKBONE_LAYER = "backbone"  # name of the backbone sub-model inside every classifier
PREPROCESS_LAYER = "preprocess"  # name of the ImagePreprocessing layer
FEATURES_LAYER = "features"  # pooled backbone features (the embedding before the head)
PREDICTIONS_LAYER = "predictions"  # the float32 softmax output layer
MIRROR_LAYER = "mirror"  # mirror_averaged: the MirrorImage layer
EMBEDDING_OUTPUTS = ("probabilities", "embedding")  # output names of with_embedding(model)
_PARTIAL_LOAD = re.compile(r"skipping|freshly.initiali[sz]ed|mismatch|not (be )?loaded", re.IGNORECASE)


@dataclass(frozen=True)
class HeadConfig:
    """The layers between the pooled backbone features and the output layer."""

    units: tuple[int, ...] = (256,)  # hidden Dense widths; () = linear classifier on the features
    dropout: float = 0.2  # dropout after each hidden layer
    activation: str = "relu"  # hidden-layer activation


# A deep head (1024-256-64-32, as common transfer-learning notebooks use), for like-for-like comparisons.
REFERENCE_HEAD = HeadConfig(units=(1024, 256, 64, 32), dropout=0.2)


def normalize_weights(weights: str | Path | None) -> str | Path | None:
    """``None``/'none' -> None, 'imagenet' and 'faces' stay, anything else is a path that must exist."""
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in ("none", "")):
        return None
    if isinstance(weights, str) and weights.strip().lower() in ("imagenet", "faces"):
        return weights.strip().lower()
    path = Path(weights).expanduser()
    if path.suffix.lower() not in (".h5", ".hdf5", ".keras"):
        raise ValueError(
            "weights must be 'imagenet', 'faces', 'none' or a path to a .h5 / .weights.h5 / .keras file. "
            f"Received: weights={str(weights)!r}"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file not found: {path}. Pass an existing file, 'imagenet' or 'none'. "
            f"Received: weights={str(weights)!r}"
        )
    return path


def normalize_input_shape(spec: BackboneSpec, input_shape: Sequence[int] | None) -> tuple[int, int, int]:
    """(H, W) or (H, W, 3) -> (H, W, 3), checked against the backbone's minimum size."""
    if input_shape is None:
        return (*spec.default_input, 3)
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 2:
        shape = (*shape, 3)
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"input_shape must be (height, width) or (height, width, 3). Received: input_shape={input_shape}")
    if shape[0] < spec.min_input[0] or shape[1] < spec.min_input[1]:
        raise ValueError(
            f"{spec.name} needs inputs of at least {spec.min_input[0]}x{spec.min_input[1]}. "
            f"Received: input_shape={input_shape}"
        )
    return shape


def build_backbone(spec: BackboneSpec, input_shape: tuple[int, int, int], weights: str | Path | None) -> keras.Model:
    """The headless backbone with the requested weights loaded. Never silently random.

    ``weights``: 'imagenet' (Keras's file, cached or downloaded), 'faces' (the face-pretrained weights
    shipped in the package, hash checked), None, or a path.
    """
    if weights == "faces":
        arrays = read_face_weights(spec)  # raises, naming the backbones that have them, before building
        base = spec.builder(include_top=False, weights=None, input_shape=input_shape, name=BACKBONE_LAYER)
        assign_face_weights(base.weights, arrays, "backbone/", spec.name)
        return base
    weights_path = resolve_imagenet_weights(spec, input_shape) if weights == "imagenet" else weights
    base = spec.builder(include_top=False, weights=None, input_shape=input_shape, name=BACKBONE_LAYER)
    if weights_path is not None:
        try:
            # Keras 3 only *warns* when parts of a file do not match the model and keeps those
            # layers random; here that is an error, never a silent partial load.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                base.load_weights(str(weights_path))
            partial = [str(w.message) for w in caught if _PARTIAL_LOAD.search(str(w.message))]
            if partial:
                raise ValueError(f"only part of the file matches the model ({partial[0][:200]})")
        except Exception as err:
            raise ValueError(
                f"Could not load weights from {weights_path} into {spec.name} with input_shape="
                f"{input_shape}: {err}. The file must hold a headless (include_top=False) {spec.name}; "
                "a corrupt download can be deleted and fetched again."
            ) from err
    return base


def _set_finetune_trainability(base: keras.Model, spec: BackboneSpec, finetune_layers: int | None,
                               finetune_from: str | None) -> None:
    names = [layer.name for layer in base.layers]
    if finetune_layers is not None and finetune_from is not None:
        raise ValueError(
            "Give finetune_layers or finetune_from, not both. "
            f"Received: finetune_layers={finetune_layers}, finetune_from={finetune_from!r}"
        )
    if finetune_layers is not None:
        if not 0 < finetune_layers <= len(names):
            raise ValueError(
                f"finetune_layers must be between 1 and {len(names)} (the layers in {spec.name}). "
                f"Received: finetune_layers={finetune_layers}"
            )
        start = len(names) - finetune_layers
    else:
        first = finetune_from or spec.finetune_from
        if first not in names:
            hint = ", ".join(names[-8:])
            raise ValueError(
                f"{spec.name} has no layer named {first!r} (its last layers: {hint}). "
                f"Received: finetune_from={first!r}"
            )
        start = names.index(first)
    base.trainable = True
    for index, layer in enumerate(base.layers):
        is_batch_norm = isinstance(layer, layers.BatchNormalization)
        layer.trainable = index >= start and not is_batch_norm


def build_classifier(
    backbone: str,
    num_classes: int,
    input_shape: Sequence[int] | None = None,
    mode: str = "transfer",
    weights: str | Path | None = "imagenet",
    head: HeadConfig | None = None,
    *,
    finetune_layers: int | None = None,
    finetune_from: str | None = None,
    mirror_average: bool = False,
) -> keras.Model:
    """Builds a classifier that takes raw RGB images in 0..255 and returns class probabilities.

    Args:
        backbone: a registry name (see ``tf_models.list_backbones()``).
        num_classes: number of classes, at least 2 (binary tasks use 2 softmax units).
        input_shape: (height, width[, 3]); default: the backbone's own (with 'faces': their training size).
        mode: 'transfer', 'finetune' or 'scratch' (see the module docstring).
        weights: 'imagenet', 'faces' (shipped face-pretrained weights), 'none'/None, or a path to a
            weights file for the headless backbone.
        head: the hidden layers of the head; default ``HeadConfig()``.
        finetune_layers: finetune mode: train the top N backbone layers.
        finetune_from: finetune mode: train from this backbone layer up (default: the top block).
        mirror_average: answer for each image and its mirror image (:func:`mirror_averaged`): an inference
            model, whose backbone always runs with ``training=False``; train the plain one.
    """
    spec = get_backbone(backbone)
    weights = _checked_arguments(spec, int(num_classes), mode, weights, finetune_layers, finetune_from)
    if input_shape is None and weights == "faces" and spec.faces is not None:
        input_shape = spec.faces.input_size  # the size the face weights were trained at
    shape = normalize_input_shape(spec, input_shape)
    head = head or HeadConfig()

    base = build_backbone(spec, shape, weights)
    if mode == "transfer":
        base.trainable = False
    elif mode == "finetune":
        _set_finetune_trainability(base, spec, finetune_layers, finetune_from)
    else:
        base.trainable = True

    inputs = keras.Input(shape=shape, name="image")
    x = ImagePreprocessing(spec.preprocessing, name=PREPROCESS_LAYER)(inputs)
    # Frozen or partly frozen bases run in inference mode so BatchNorm keeps its statistics.
    x = base(x, training=False) if mode in ("transfer", "finetune") else base(x)
    x = layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x)
    for index, units in enumerate(head.units, start=1):
        x = layers.Dense(units, activation=head.activation, name=f"head_dense{index}")(x)
        if head.dropout > 0:
            x = layers.Dropout(head.dropout, name=f"head_dropout{index}")(x)
    outputs = layers.Dense(int(num_classes), activation="softmax", dtype="float32", name=PREDICTIONS_LAYER)(x)
    model = keras.Model(inputs, outputs, name=f"{spec.name}_{mode}")
    return mirror_averaged(model) if mirror_average else model


def mirror_averaged(model: keras.Model) -> keras.Model:
    """``model`` answering from the average of each image's and its mirror image's pooled features.

    The test-time flip of face models: a face and its mirror are the same face, so averaging the two
    views steadies the answer, for twice the backbone time (``configs/quality_gender_faces.yaml``
    measures it). An inference model (the backbone runs with ``training=False``), built from
    ``model``'s own layers: the weights are shared, nothing is copied, the variable paths are the
    same. Train the plain model (half the cost) and serve this one.
    """
    base, preprocess = model.get_layer(BACKBONE_LAYER), model.get_layer(PREPROCESS_LAYER)
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    x = preprocess(inputs)
    pool = layers.GlobalAveragePooling2D(name="pooled")
    views = [pool(base(view, training=False)) for view in (x, MirrorImage(name=MIRROR_LAYER)(x))]
    x = layers.Average(name=FEATURES_LAYER)(views)
    for layer in head_layers(model):
        x = layer(x)
    return keras.Model(inputs, x, name=f"{model.name}_mirrored")


def _checked_arguments(spec: BackboneSpec, num_classes: int, mode: str, weights: str | Path | None,
                       finetune_layers: int | None, finetune_from: str | None) -> str | Path | None:
    """Raises for arguments no model can be built from; returns the normalised ``weights``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}. Received: mode={mode!r}")
    if num_classes < 2:
        raise ValueError(
            "num_classes must be at least 2 (binary tasks use a 2-unit softmax). "
            f"Received: num_classes={num_classes}"
        )
    if mode != "finetune" and (finetune_layers is not None or finetune_from is not None):
        raise ValueError(f"finetune_layers / finetune_from only apply to mode='finetune'. Received: mode={mode!r}")
    weights = normalize_weights(weights)
    if mode == "scratch" and weights is not None:
        raise ValueError(
            "mode='scratch' trains from random initialisation; pass weights='none', or use "
            f"mode='finetune' to start from pretrained weights. Received: weights={str(weights)!r}"
        )
    if mode == "transfer" and weights is None:
        warnings.warn(
            f"mode='transfer' with random weights: the frozen {spec.name} base is random and only "
            "the head will learn. Use weights='imagenet' (or a file), or mode='scratch'.",
            stacklevel=3,
        )
    return weights


def unfreeze_top(model: keras.Model, backbone: str, finetune_layers: int | None = None,
                 finetune_from: str | None = None) -> None:
    """Switches a ``transfer`` classifier to ``finetune`` trainability (phase 2). Recompile afterwards."""
    _set_finetune_trainability(model.get_layer(BACKBONE_LAYER), get_backbone(backbone), finetune_layers, finetune_from)


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers after the pooled features, in order (hidden Dense/Dropout, then predictions)."""
    names = [layer.name for layer in model.layers]
    return model.layers[names.index(FEATURES_LAYER) + 1:]


def inference_function(model: keras.Model, input_size: Sequence[int] | None = None):
    """``model(images, training=False)`` as one ``tf.function``: the inference call of the suite.

    With ``input_size`` (H, W) it is traced once for float32 ``[None, H, W, 3]``, whatever the batch;
    without, it retraces only for new shapes. Never ``model.predict`` per call (its fixed overhead
    dominates small batches).
    """
    import tensorflow as tf

    call = lambda images: model(images, training=False)  # noqa: E731
    if input_size is None:
        return tf.function(call, reduce_retracing=True)
    height, width = (int(v) for v in input_size)
    return tf.function(call, input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)])


def with_embedding(model: keras.Model) -> keras.Model:
    """The classifier with two outputs: ``probabilities`` and ``embedding``.

    The embedding is the penultimate layer (the input of the softmax layer), L2-normalised in
    float32: what open-set identity compares with cosine similarity. Weights are shared with
    ``model``; nothing is copied. A model that already has both outputs is returned as is, so
    callers (predictor, export, gallery) can pass either form. A face embedder
    (:func:`~tf_models.models.face_embedder.build_face_embedder`) has no classes: its served form is its
    one output named ``embedding`` (the runtimes answer it with N x 0 probabilities).
    """
    from tf_models.models.face_embedder import is_face_embedder  # it builds on this module

    if isinstance(model.output, dict) and EMBEDDING_OUTPUTS[1] in model.output \
            and set(model.output) <= set(EMBEDDING_OUTPUTS):
        return model
    if is_face_embedder(model):
        return keras.Model(model.inputs, {EMBEDDING_OUTPUTS[1]: model.outputs[0]}, name=f"{model.name}_served")
    # The input of the output layer's call in *this* graph: a layer shared with another model (the plain
    # classifier inside mirror_averaged) has a call per model, and ``layer.input`` names the first one's.
    output_layer, node_index, _ = model.outputs[0]._keras_history
    if output_layer.name != PREDICTIONS_LAYER:
        raise ValueError(f"Not a classifier of build_classifier: its output layer is {output_layer.name!r}, "
                         f"not {PREDICTIONS_LAYER!r}.")
    penultimate = output_layer._inbound_nodes[node_index].input_tensors[0]
    embedding = layers.UnitNormalization(axis=-1, dtype="float32", name="embedding")(penultimate)
    return keras.Model(model.inputs, dict(zip(EMBEDDING_OUTPUTS, (model.outputs[0], embedding))),
                       name=f"{model.name}_with_embedding")
