"""The backbone registry: one table, one spec per backbone, and the weights resolution.

Every builder has the ``keras.applications`` signature (``include_top``, ``weights``,
``input_shape``, ...), so the classifier builder treats them all alike. Each spec carries the
backbone's own ``preprocess_input``; the classifier puts the matching
:class:`~tf_models.models.preprocessing.ImagePreprocessing` layer inside the model.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from tf_models.files import atomic_write
from tf_models.models import alexnet

_KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications"
FACE_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # package data: weights="faces"
_MOBILENET_V2_ROWS = (96, 128, 160, 192, 224)


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither cached nor downloadable. Never falls back to random weights."""


@dataclass(frozen=True)
class ImagenetWeights:
    """Where a backbone's no-top ImageNet weights are published, and their hash."""

    url: str  # the file's address; may hold "{rows}" (MobileNetV2 has one file per input size)
    file_hash: str | None  # Keras's published md5 or sha256 (get_file tells them apart); None where none

    def file_name(self, rows: int) -> str:
        return self.url.rsplit("/", 1)[1].format(rows=rows)


@dataclass(frozen=True)
class FaceWeights:
    """A face-pretrained embedder shipped inside the package (``weights="faces"``); see MODEL_CARD.md there."""

    file: str  # file name in FACE_WEIGHTS_DIR: .npz of backbone/<path> and head/<path> arrays (pack_face_arrays)
    sha256: str  # checked before every load
    input_size: tuple[int, int]  # (height, width) it was trained at
    embedding_dim: int  # size of the embedding its projection makes
    # faces were turned upright on their five keypoints before cropping (CropSettings.align); the
    # other crop settings are CropSettings' defaults (20% margin, 160x160), as face pretraining cut them
    aligned: bool = True
    # cosine similarity to a person's 5-photo centroid at which 5% of their faces are rejected, measured
    # on people never trained on (scripts/bench_faces.py): the app's gallery threshold for these weights
    gallery_threshold: float = 0.5


class FaceWeightsError(ValueError):
    """Face weights are not shipped for a backbone, are corrupt, or do not fit the model."""


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the suite needs to know about one backbone: one registry row."""

    name: str  # registry key, used on the command line
    source: str  # where the architecture comes from, for the table
    builder: Callable[..., keras.Model]  # keras.applications-style builder
    preprocess_input: Callable  # the model's own preprocess_input (numpy reference)
    preprocessing: str  # mode of the in-model ImagePreprocessing layer: caffe | tf | torch | none
    default_input: tuple[int, int]  # (height, width) the architecture was designed for
    min_input: tuple[int, int]  # smallest (height, width) the builder accepts
    feature_size: int  # channels after global pooling
    finetune_from: str  # default first trainable layer in finetune mode: the top block
    imagenet: ImagenetWeights | None  # None: no published ImageNet weights
    faces: FaceWeights | None = None  # face-pretrained weights shipped in the package (weights="faces")

    def imagenet_file_name(self, input_shape: tuple[int, ...]) -> str:
        """File name Keras downloads and caches for this backbone's no-top ImageNet weights."""
        if self.imagenet is None:
            raise WeightsUnavailableError(
                f"No ImageNet weights are published for {self.name}. Use weights='none' or a "
                f"path to a weights file. Received: weights='imagenet'"
            )
        return self.imagenet.file_name(input_shape[0] if input_shape[0] in _MOBILENET_V2_ROWS else 224)

    def imagenet_url(self, input_shape: tuple[int, ...]) -> str:
        assert self.imagenet is not None
        return self.imagenet.url.rsplit("/", 1)[0] + "/" + self.imagenet_file_name(input_shape)


def _keras_notop(path: str, file_hash: str | None) -> ImagenetWeights:
    """A no-top weights file in the keras-applications bucket."""
    return ImagenetWeights(f"{_KERAS_WEIGHTS}/{path}", file_hash)


def _classic_notop(folder: str, stem: str, md5: str) -> ImagenetWeights:
    return _keras_notop(f"{folder}/{stem}_weights_tf_dim_ordering_tf_kernels_notop.h5", md5)


_apps = keras.applications


# EfficientNetV2 and ConvNeXt normalise inside themselves (ImageNet mean and std, "torch" style) with a
# Normalization layer whose constants ONNX conversion cannot freeze. They are built without it and our
# ImagePreprocessing layer does the same arithmetic; their ImageNet weight files hold no weights for
# those layers, so they load alike.
_torch_preprocess_input = functools.partial(_apps.imagenet_utils.preprocess_input, mode="torch")


def _efficientnetv2_b0(*, name: str = "efficientnetv2-b0", **kwargs) -> keras.Model:
    """EfficientNetV2B0 under any model name (Keras's builder reads its block layout from ``name``)."""
    model = _apps.EfficientNetV2B0(include_preprocessing=False, **kwargs)
    model.name = name
    return model


def _convnext_tiny(**kwargs) -> keras.Model:
    return _apps.ConvNeXtTiny(include_preprocessing=False, **kwargs)

# One row per backbone. Adding one is adding a row: its keras.applications builder, the mode of
# preprocessing it expects ("none" where a builder must keep normalising inside itself), its sizes,
# the first layer of its top block, and its weights file.
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("vgg16", "keras.applications.vgg16", _apps.VGG16, _apps.vgg16.preprocess_input,
                     "caffe", (224, 224), (32, 32), 512, "block5_conv1",
                     _classic_notop("vgg16", "vgg16", "6d6bbae143d832006294945121d1f1fc")),
        BackboneSpec("vgg19", "keras.applications.vgg19", _apps.VGG19, _apps.vgg19.preprocess_input,
                     "caffe", (224, 224), (32, 32), 512, "block5_conv1",
                     _classic_notop("vgg19", "vgg19", "253f8cb515780f3b799900260a226db6")),
        BackboneSpec("resnet50", "keras.applications.resnet50", _apps.ResNet50,
                     _apps.resnet50.preprocess_input, "caffe", (224, 224), (32, 32), 2048,
                     "conv5_block1_1_conv",
                     _classic_notop("resnet", "resnet50", "4d473c1dd8becc155b73f8504c6f6626")),
        BackboneSpec("resnet101", "keras.applications.resnet", _apps.ResNet101,
                     _apps.resnet.preprocess_input, "caffe", (224, 224), (32, 32), 2048,
                     "conv5_block1_1_conv",
                     _classic_notop("resnet", "resnet101", "88cf7a10940856eca736dc7b7e228a21")),
        BackboneSpec("inceptionv3", "keras.applications.inception_v3", _apps.InceptionV3,
                     _apps.inception_v3.preprocess_input, "tf", (299, 299), (75, 75), 2048, "mixed8",
                     _classic_notop("inception_v3", "inception_v3", "bcbd6486424b2319ff4ef7d526e38f63")),
        BackboneSpec("densenet201", "keras.applications.densenet", _apps.DenseNet201,
                     _apps.densenet.preprocess_input, "torch", (224, 224), (32, 32), 1920,
                     "conv5_block1_0_bn",
                     _classic_notop("densenet", "densenet201", "c13680b51ded0fb44dff2d8f86ac8bb1")),
        BackboneSpec("mobilenetv2", "keras.applications.mobilenet_v2", _apps.MobileNetV2,
                     _apps.mobilenet_v2.preprocess_input, "tf", (224, 224), (32, 32), 1280,
                     "block_16_expand",
                     _keras_notop("mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
                                  None),
                     faces=FaceWeights("mobilenetv2_faces.npz", "4b3897ca4ce1c48bf59051ca197d38f60768281badeeb690f92444617b8b9f51",
                                       (112, 112), 128, aligned=True, gallery_threshold=0.4879)),
        BackboneSpec("efficientnetv2b0", "keras.applications.efficientnet_v2", _efficientnetv2_b0,
                     _torch_preprocess_input, "torch", (224, 224), (32, 32), 1280,
                     "block6a_expand_conv",
                     _keras_notop("efficientnet_v2/efficientnetv2-b0_notop.h5", "893217f2bb855e2983157299931e43ff")),
        BackboneSpec("convnexttiny", "keras.applications.convnext", _convnext_tiny,
                     _torch_preprocess_input, "torch", (224, 224), (32, 32), 768,
                     "backbone_downsampling_block_2",  # ConvNeXt prefixes its layers with the model name
                     _keras_notop("convnext/convnext_tiny_notop.h5",
                                  "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1")),
        BackboneSpec("alexnet", "tf_models.models.alexnet (2012 layout)", alexnet.AlexNet,
                     alexnet.preprocess_input, "torch", (alexnet.DEFAULT_SIZE,) * 2,
                     (alexnet.MIN_SIZE,) * 2, 256, "conv5", None),
        BackboneSpec("alexnet_bn", "tf_models.models.alexnet (BatchNorm variant)", alexnet.AlexNetBN,
                     alexnet.preprocess_input, "torch", (alexnet.DEFAULT_SIZE,) * 2,
                     (alexnet.MIN_SIZE,) * 2, 256, "conv5", None,
                     faces=FaceWeights("alexnet_bn_faces.npz", "db4fda044cef50a6f97ed484a4d8c33ecf60f4324927b84f13b8167ff28d0974",
                                       (112, 112), 128, aligned=True, gallery_threshold=0.3908)),
    )
}


def list_backbones() -> list[str]:
    """Names of every registered backbone, in table order."""
    return list(BACKBONES)


def get_backbone(name: str) -> BackboneSpec:
    """Returns the spec for ``name``; an unknown name raises a ValueError listing the valid ones."""
    # Accept the spellings people type: "ResNet50", "mobilenet_v2", "inception-v3", "alexnet-bn".
    squashed = {key.replace("_", ""): key for key in BACKBONES}
    key = re.sub(r"[-_\s]", "", name.lower()) if isinstance(name, str) else None
    if key in squashed:
        return BACKBONES[squashed[key]]
    hint = difflib.get_close_matches(str(name).lower(), BACKBONES, n=1)
    did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(
        f"Unknown backbone: {name!r}.{did_you_mean} Valid names: {', '.join(BACKBONES)}."
    )


def backbone_table() -> str:
    """The registry as a plain-text table (what ``train.py --list-backbones`` prints)."""
    header = ("name", "preprocessing", "default input", "min input", "features", "imagenet", "faces", "source")
    rows = [
        (
            spec.name,
            spec.preprocessing,
            "x".join(map(str, spec.default_input)),
            "x".join(map(str, spec.min_input)),
            str(spec.feature_size),
            "yes" if spec.imagenet else "no",
            "x".join(map(str, spec.faces.input_size)) if spec.faces else "no",
            spec.source,
        )
        for spec in BACKBONES.values()
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def keras_home() -> Path:
    """The Keras cache folder: ``$KERAS_HOME``, else ``~/.keras`` (``/tmp/.keras`` if home is read-only)."""
    if os.environ.get("KERAS_HOME"):
        return Path(os.environ["KERAS_HOME"])
    home = Path.home()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def resolve_imagenet_weights(spec: BackboneSpec, input_shape: tuple[int, ...]) -> Path:
    """Path of the cached ImageNet weights for ``spec``, downloading them with Keras if needed.

    A file already in ``$KERAS_HOME/models`` is used as is (that is how offline machines get
    weights). Otherwise Keras's own ``get_file`` downloads and caches it, checking Keras's hash.
    If that fails, :class:`WeightsUnavailableError` says which file to put where.
    """
    file_name = spec.imagenet_file_name(input_shape)
    cache_dir = keras_home()
    cached = cache_dir / "models" / file_name
    if cached.is_file():
        return cached
    url = spec.imagenet_url(input_shape)
    try:
        path = keras.utils.get_file(
            file_name, origin=url, cache_subdir="models", cache_dir=str(cache_dir),
            file_hash=spec.imagenet.file_hash if spec.imagenet else None,
        )
    except Exception as err:  # urllib, socket and hash errors all mean the same to the user
        raise WeightsUnavailableError(
            f"Could not get the ImageNet weights for {spec.name}: {err}\n"
            f"Keras expects the file {file_name} in {cache_dir / 'models'} "
            f"($KERAS_HOME/models). Download it from {url} on a machine with internet access "
            f"and copy it there, or pass weights='none' to train from random weights."
        ) from err
    return Path(path)


def backbones_with_face_weights() -> list[str]:
    """Registry names of the backbones that ship ``weights="faces"``."""
    return [name for name, spec in BACKBONES.items() if spec.faces is not None]


def face_weights_path(spec: BackboneSpec) -> Path:
    """The hash-checked file of ``spec``'s face weights. Raises :class:`FaceWeightsError` saying what to do."""
    if spec.faces is None:
        have = ", ".join(backbones_with_face_weights()) or "none yet"
        raise FaceWeightsError(
            f"No face-pretrained weights are shipped for {spec.name}. Backbones with weights='faces': {have}. "
            f"Use one of those, or weights='imagenet', 'none' or a file. Received: backbone={spec.name!r}, weights='faces'"
        )
    path = FACE_WEIGHTS_DIR / spec.faces.file
    if not path.is_file():
        raise FaceWeightsError(f"The face weights file {path.name} is missing from the installed package "
                               f"(expected in {path.parent}); reinstall tf_models.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != spec.faces.sha256:
        raise FaceWeightsError(f"The face weights file {path} is corrupt: sha256 {digest}, expected "
                               f"{spec.faces.sha256}. Reinstall tf_models.")
    return path


# The shipped face weights format: one array per variable, float16, or -- for the big kernels, most of
# the file -- int8 codes times a float16 scale per output channel (the last axis). 6-bit codes keep the
# benchmark figures within their noise (MODEL_CARD.md: both embedders, packed beside float16) and take
# AlexNet-BN's 7.0 MB to 2.6 MB and MobileNetV2's 4.5 MB to 2.0 MB: deflate packs small integers far
# better than float16 bits. scripts/pack_face_weights.py packs a run's weights for shipping.
PACKED_CODES, PACKED_SCALE = ":codes", ":scale"  # suffixes of a packed array's two parts in the .npz
PACK_MIN_VALUES = 20_000  # smaller arrays (batch norm, biases, small kernels) stay float16
DEFAULT_PACK_LEVELS = 31  # codes in [-31, 31]: 6 bits


def _channel_scales(key: str, peak: np.ndarray, levels: int) -> np.ndarray:
    """float16 scales with every |weight| <= levels * scale (so none is clipped by more than half a step)."""
    with np.errstate(over="ignore"):
        scale = (peak / levels).astype(np.float16)
    if not np.all(np.isfinite(scale)):
        raise ValueError(f"{key!r} has weights beyond float16's range: not a trained face embedder? "
                         f"Received: largest |weight| {float(peak.max()):.3g}")
    # Below float16's normal range the scale rounds coarsely, down to 0 for the tiniest channels: one
    # float16 step up keeps each of their weights within half a step (normal scales are already close).
    low = (scale.astype(np.float32) * levels < peak) & (scale < np.finfo(np.float16).smallest_normal)
    scale = np.where(low, np.nextafter(scale, np.float16(np.inf)), scale)
    return np.where(peak > 0, scale, np.float16(1.0)).astype(np.float16)


def pack_face_arrays(arrays: dict[str, np.ndarray], levels: int | None = DEFAULT_PACK_LEVELS) -> dict[str, np.ndarray]:
    """The arrays as the shipped file stores them: float16, and with ``levels`` every array of two or more
    axes and :data:`PACK_MIN_VALUES` or more values as int8 codes in [-levels, levels] with a float16
    scale per output channel (the last axis; symmetric, so zero stays exactly zero). A kernel with one
    output channel (depthwise) stays float16: one scale for all of it would be too coarse.
    ``levels=None``: float16 only. NaN or infinite weights are an error, never packed."""
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, (int, np.integer))
                               or not 1 <= levels <= 127):
        raise ValueError(f"levels is the largest int8 code, an int in 1..127 (None: float16 only). Received: levels={levels!r}")
    packed = {}
    for key, value in arrays.items():
        if key.endswith((PACKED_CODES, PACKED_SCALE)):
            raise ValueError(f"Variable names may not end in {PACKED_CODES!r} or {PACKED_SCALE!r} (the packed "
                             f"format's suffixes). Received: key={key!r}")
        value = np.asarray(value, np.float32)
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{key!r} holds NaN or infinite weights (a diverged run?). Received: key={key!r}")
        if levels is None or value.size < PACK_MIN_VALUES or value.ndim < 2 or value.shape[-1] == 1:
            packed[key] = value.astype(np.float16)
            continue
        scale = _channel_scales(key, np.abs(value).max(axis=tuple(range(value.ndim - 1))), int(levels))
        packed[key + PACKED_CODES] = np.clip(np.rint(value / scale.astype(np.float32)), -levels, levels).astype(np.int8)
        packed[key + PACKED_SCALE] = scale
    return packed


def unpack_face_arrays(stored: dict[str, np.ndarray] | np.lib.npyio.NpzFile) -> dict[str, np.ndarray]:
    """float32 arrays by variable key from the stored form (:func:`pack_face_arrays`; plain float16 too)."""
    keys = set(stored.keys())
    arrays = {}
    for key in stored.keys():  # the stored order: packing the result again gives the same bytes
        if key.endswith(PACKED_SCALE):
            if key[: -len(PACKED_SCALE)] + PACKED_CODES not in keys:
                raise FaceWeightsError(f"The face weights hold a scale without its codes: a damaged file. Received: key={key!r}")
            continue
        if not key.endswith(PACKED_CODES):
            arrays[key] = np.asarray(stored[key], np.float32)
            continue
        name = key[: -len(PACKED_CODES)]
        if name + PACKED_SCALE not in keys:
            raise FaceWeightsError(f"The face weights hold codes without their scale: a damaged file. Received: key={key!r}")
        arrays[name] = np.asarray(stored[key], np.float32) * np.asarray(stored[name + PACKED_SCALE], np.float32)
    return arrays


def load_face_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """float32 arrays of a face weights ``.npz`` (a run folder's or the package's; no pickles, no hash check)."""
    with np.load(path, allow_pickle=False) as stored:
        return unpack_face_arrays(stored)


def save_face_arrays(arrays: dict[str, np.ndarray], path: str | Path,
                     levels: int | None = DEFAULT_PACK_LEVELS) -> str:
    """Writes arrays in the shipped format (:func:`pack_face_arrays`) atomically; returns the file's sha256."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **pack_face_arrays(arrays, levels))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def pack_face_weights(source: str | Path, target: str | Path, levels: int = DEFAULT_PACK_LEVELS) -> dict[str, object]:
    """Packs a run's ``face_weights.npz`` into the shipped form (6-bit kernels by default) for the package.

    Returns the new file's sha256 (for the registry row), both sizes, how many arrays became codes, and
    the largest weight error relative to its channel's largest value. The benchmark tells what it costs:
    ``scripts/bench_faces.py --run "float16=SOURCE"`` beside the shipped row.
    """
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise ValueError(f"Pack into another file: the source is read while the target is written. Received: {source}")
    arrays = load_face_arrays(source)
    digest = save_face_arrays(arrays, target, levels)
    packed = load_face_arrays(target)
    error = 0.0
    for key, value in arrays.items():
        peak = np.abs(value).max(axis=tuple(range(value.ndim - 1))) if value.ndim else np.abs(value)
        error = max(error, float(np.max(np.abs(packed[key] - value) / np.maximum(peak, 1e-12))))
    with np.load(target, allow_pickle=False) as stored:
        codes = sum(key.endswith(PACKED_CODES) for key in stored.keys())
    return {"sha256": digest, "bytes_before": source.stat().st_size, "bytes_after": target.stat().st_size,
            "arrays_packed": codes, "arrays": len(arrays), "max_relative_error": error}


def read_face_weights(spec: BackboneSpec) -> dict[str, np.ndarray]:
    """The float32 arrays of ``spec``'s face weights (hash checked; no pickles)."""
    return load_face_arrays(face_weights_path(spec))


def assign_face_weights(variables, arrays: dict[str, np.ndarray], prefix: str, backbone: str) -> None:
    """Sets every variable from ``arrays[prefix + variable.path]``; a missing or misshapen one is an error."""
    for variable in variables:
        key = f"{prefix}{variable.path}"
        if key not in arrays:
            raise FaceWeightsError(f"The {backbone} face weights hold no {variable.path!r}: the file is for "
                                   "another architecture. Never loaded in part.")
        value = arrays[key]
        if tuple(value.shape) != tuple(variable.shape):
            raise FaceWeightsError(f"The {backbone} face weights give {variable.path!r} shape {tuple(value.shape)}; "
                                   f"the model has {tuple(variable.shape)}.")
        variable.assign(value.astype(variable.dtype))


def start_weights_id(backbone: str, weights: str | None) -> str:
    """What a model of ``backbone`` built with ``weights`` starts from, in a form that changes when the
    weights do: ``'none'``, ``'imagenet'``, ``'faces:<sha256>'`` (the shipped file's registry hash), or
    ``'<file>:<sha256>'``. Run folders record it, so a finished run is not reused after its start changed."""
    if weights in (None, "none", "imagenet"):
        return str(weights or "none")
    if weights == "faces":
        spec = get_backbone(backbone)
        return f"faces:{spec.faces.sha256}" if spec.faces is not None else "faces:missing"
    path = Path(weights)
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    return f"{path.name}:{digest}"
