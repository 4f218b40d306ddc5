"""Training-time image augmentation in TensorFlow ops: the replacement for ``ImageDataGenerator``.

Keras 3 removed ``ImageDataGenerator``. :class:`AugmentConfig` takes the same keyword arguments
with the same meaning (so an old notebook's settings paste in through
:meth:`AugmentConfig.from_dict`), plus the torchvision-style extras the presets use, and
:func:`build_augmenter` turns it into a pure-TensorFlow function on batches:

- **Fused geometry.** Rotation, shifts, shear, zoom, flips and random resized crop are composed into
  one 3x3 matrix per image and applied in a single resampling of the whole batch: each image is
  interpolated once (chaining Keras's Random* layers interpolates once per layer and blurs), and no
  Python runs per image (legacy looped over images and channels). Bilinear resampling is an
  XLA-compiled gather sampler (:func:`bilinear_warp`) with the output of TensorFlow's
  ``ImageProjectiveTransformV3`` kernel at a fraction of its CPU time (the ``augment_only`` and
  ``augment_only_kernel`` rows of ``scripts/bench_pipeline.py``); the kernel remains for images
  whose size is only known at run time.
- **Stateless randomness.** ``augment(images, seed)`` draws everything from ``seed`` with
  ``tf.random.stateless_*``: the same seed gives the same batch, on CPU and GPU, in eager mode,
  inside ``tf.function`` and inside ``tf.data`` maps.
- **Raw pixels stay raw.** Images go in and come out as float32 RGB in 0..255. ``rescale`` is
  accepted so old arguments paste in, but never applied: every tf_models model normalises its own
  input, and rescaling in the pipeline as well is the bug that gave a reference project 62%.

Where this deliberately differs from tf_keras 2.x (the last ``ImageDataGenerator``):

- tf_keras samples ``tx`` from ``height_shift_range`` x height but applies it along the columns
  (and ``ty`` from the width range along the rows), and pivots rotation/shear/zoom at
  ``(col=H/2, row=W/2)``. Both only show on non-square images; here ``width_shift_range`` moves
  pixels horizontally by a fraction of the width, as documented, and the pivot is the true centre.
- Brightness is applied to float pixels (``x * factor``, clipped at 255) without the legacy round
  trip through 8-bit PIL images, so values are not quantised.
- Borders: with ``fill_mode="constant"`` the outermost pixel row blends with ``cval`` (scipy cuts
  hard), and ``"wrap"`` repeats with period W (scipy's legacy ``"wrap"`` uses W - 1). Inside the
  image, bilinear output equals legacy's order-1 spline to float32 rounding (tested).
"""

from __future__ import annotations

import difflib
import math
import numbers
import sys
import warnings
from dataclasses import dataclass, fields
from typing import Any, Callable

import tensorflow as tf

__all__ = [
    "AugmentConfig",
    "PRESETS",
    "RescaleIgnoredWarning",
    "apply_affine",
    "bilinear_warp",
    "build_augmenter",
]

FILL_MODES = {"constant": "CONSTANT", "nearest": "NEAREST", "reflect": "REFLECT", "wrap": "WRAP"}
INTERPOLATIONS = ("bilinear", "nearest")

# Raw-pixel ImageNet mean. Random erasing fills with it: torchvision's RandomErasing(value=0) runs
# after Normalize, where 0 *is* the ImageNet mean, so this is the same fill in raw 0..255 space.
_IMAGENET_RGB_MEAN_255 = (123.675, 116.28, 103.53)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_ERASE_SCALE = (0.02, 0.33)  # torchvision RandomErasing defaults: area fraction ...
_ERASE_RATIO = (0.3, 3.3)  # ... and aspect ratio (h / w)
_TRIES = 10  # torchvision's rejection-sampling attempts for crops and erasing

# One fixed stream per random quantity, so adding a transform never changes the others' draws.
(
    _S_ROT,
    _S_TX,
    _S_TX_SIGN,
    _S_TY,
    _S_TY_SIGN,
    _S_SHEAR,
    _S_ZOOM,
    _S_HFLIP,
    _S_VFLIP,
    _S_CROP_AREA,
    _S_CROP_RATIO,
    _S_CROP_POS,
    _S_CHSHIFT,
    _S_BRIGHT,
    _S_JITTER,
    _S_ERASE,
    _S_ERASE_APPLY,
) = range(17)


class RescaleIgnoredWarning(UserWarning):
    """``rescale`` was given: accepted so legacy arguments paste in, but never applied."""


# Shown once per process per rescale value, however many configs carry it (pytest.warns still sees
# every one): a notebook that builds a config per epoch should not print it every epoch.
warnings.filterwarnings("once", category=RescaleIgnoredWarning)

# ImageDataGenerator arguments with no counterpart here: (value that is harmless, what to do instead).
_LEGACY_UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "featurewise_center": ((False, None), "every tf_models model normalises its input inside the model"),
    "samplewise_center": ((False, None), "every tf_models model normalises its input inside the model"),
    "featurewise_std_normalization": (
        (False, None),
        "every tf_models model normalises its input inside the model",
    ),
    "samplewise_std_normalization": (
        (False, None),
        "every tf_models model normalises its input inside the model",
    ),
    "zca_whitening": ((False, None), "ZCA whitening is not supported; models normalise their own input"),
    "zca_epsilon": ((), "only meaningful with zca_whitening, which is not supported"),  # always dropped
    "preprocessing_function": (
        (None,),
        "apply it as a tf.data map on the dataset or as a layer inside the model",
    ),
    "validation_split": ((0, 0.0, None), "split the data before building the pipeline (tf_models.pipeline)"),
    "data_format": ((None, "channels_last"), "the pipeline is channels-last only"),
}
_LEGACY_DTYPES = (None, "float32")  # anything else is ignored with a warning: images stay float32
_LEGACY_ORDERS = {0: "nearest", 1: "bilinear"}  # interpolation_order -> interpolation


def _user_stacklevel() -> int:
    """warnings.warn stacklevel of the first frame outside this module (the user's line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:  # dataclass __init__ included
        frame, level = frame.f_back, level + 1
    return level


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _pair(name: str, value: Any) -> tuple[float, float]:
    """A (low, high) pair from a tuple or list, validated; lists come from pasted legacy kwargs."""
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_number(v) for v in value):
        raise ValueError(f"`{name}` should be a pair of numbers (low, high). Received: {name}={value!r}")
    low, high = float(value[0]), float(value[1])
    if low > high:
        raise ValueError(f"`{name}` should have low <= high. Received: {name}={value!r}")
    return low, high


@dataclass(frozen=True)
class AugmentConfig:
    """What to augment and how much; field names and meanings follow ``ImageDataGenerator``.

    Build one directly, from a preset (:meth:`preset`) or from pasted ``ImageDataGenerator``
    keyword arguments (:meth:`from_dict`). Geometry is applied first (fused), then the legacy
    photometric transforms (channel shift, brightness), then colour jitter, then random erasing.
    """

    rotation_range: float = 0.0  # degrees, uniform in [-r, r]; positive turns counter-clockwise
    # fraction of the width if < 1, else pixels, uniform in [-r, r]. Legacy discrete forms too:
    # an int n draws from {0..n-1} with a random sign, a tuple draws one of its values with a random
    # sign (values all < 1 are fractions of the width).
    width_shift_range: float | int | tuple[float, ...] = 0.0
    height_shift_range: float | int | tuple[float, ...] = 0.0  # same forms, rows / height
    shear_range: float = 0.0  # shear angle in degrees, uniform in [-r, r] (legacy semantics)
    # float z -> zoom factors in [1 - z, 1 + z]; (lo, hi) as given. zx, zy drawn independently;
    # factors < 1 zoom in (legacy: the factor scales the sampling grid, not the picture).
    zoom_range: float | tuple[float, float] = 0.0
    horizontal_flip: bool = False  # mirror left-right with probability 0.5
    vertical_flip: bool = False  # mirror top-bottom with probability 0.5
    fill_mode: str = "nearest"  # outside the input: constant | nearest | reflect | wrap
    cval: float = 0.0  # fill value (raw 0..255 scale) for fill_mode="constant"
    # accepted so old arguments paste in; NOT applied (models preprocess inside; warns once)
    rescale: float | None = None
    # multiplicative brightness factor uniform in (lo, hi), as legacy's PIL ImageEnhance.Brightness
    brightness_range: tuple[float, float] | None = None
    # legacy channel shift: one offset uniform in [-r, r] added to every channel (0..255 units),
    # then clipped to the image's own min..max
    channel_shift_range: float = 0.0
    # random resized crop: area fraction (lo, hi) of the image, e.g. (0.7, 1.0); None = off
    random_resized_crop_scale: tuple[float, float] | None = None
    # crop aspect ratio (w/h relative to the image's own), log-uniform; 1 = no stretching
    random_resized_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # torchvision ColorJitter(brightness, contrast, saturation, hue), applied in that fixed order
    color_jitter: tuple[float, float, float, float] | None = None
    random_erasing: float = 0.0  # probability of erasing one rectangle (torchvision default area/aspect)
    interpolation: str = "bilinear"  # bilinear (legacy order 1) | nearest (legacy order 0, faster on CPU)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:  # normalise in place despite frozen=True
            object.__setattr__(self, name, value)

        for name in ("rotation_range", "shear_range", "channel_shift_range", "cval"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or (name != "cval" and value < 0):
                raise ValueError(f"`{name}` should be a finite number >= 0. Received: {name}={value!r}")
            put(name, float(value))
        for name in ("width_shift_range", "height_shift_range"):
            put(name, self._check_shift(name, getattr(self, name)))
        put("zoom_range", self._check_zoom(self.zoom_range))
        if self.fill_mode not in FILL_MODES:
            raise ValueError(
                f"Unknown fill_mode. Expected one of {tuple(FILL_MODES)}. "
                f"Received: fill_mode={self.fill_mode!r}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Unknown interpolation. Expected one of {INTERPOLATIONS}. "
                f"Received: interpolation={self.interpolation!r}"
            )
        if self.rescale is not None:
            if not _is_number(self.rescale):
                raise ValueError(f"`rescale` should be a number or None. Received: rescale={self.rescale!r}")
            if self.rescale != 1:
                warnings.warn(
                    f"rescale={self.rescale!r} is accepted but NOT applied: tf_models models take raw RGB "
                    "0..255 and do their own preprocessing inside the model. Rescaling the images as well "
                    "(feeding x/255 to a model that expects 0..255) is the bug that gave a reference "
                    "project 62% on a binary task. Remove `rescale` from your settings.",
                    RescaleIgnoredWarning,
                    stacklevel=_user_stacklevel(),
                )
        if self.brightness_range is not None:
            low, high = _pair("brightness_range", self.brightness_range)
            if low < 0:
                raise ValueError(
                    f"`brightness_range` factors should be >= 0. Received: {self.brightness_range!r}"
                )
            put("brightness_range", (low, high))
        if self.random_resized_crop_scale is not None:
            low, high = _pair("random_resized_crop_scale", self.random_resized_crop_scale)
            if not 0 < low <= high <= 1:
                raise ValueError(
                    "`random_resized_crop_scale` is an area fraction: 0 < low <= high <= 1. "
                    f"Received: {self.random_resized_crop_scale!r}"
                )
            put("random_resized_crop_scale", (low, high))
        low, high = _pair("random_resized_crop_ratio", self.random_resized_crop_ratio)
        if low <= 0:
            raise ValueError(
                f"`random_resized_crop_ratio` should be > 0. Received: {self.random_resized_crop_ratio!r}"
            )
        put("random_resized_crop_ratio", (low, high))
        if self.color_jitter is not None:
            jitter = self.color_jitter
            if (
                not isinstance(jitter, (tuple, list))
                or len(jitter) != 4
                or not all(_is_number(v) and v >= 0 for v in jitter)
                or jitter[3] > 0.5
            ):
                raise ValueError(
                    "`color_jitter` should be (brightness, contrast, saturation, hue), all >= 0 and "
                    f"hue <= 0.5 (torchvision ColorJitter). Received: color_jitter={jitter!r}"
                )
            put("color_jitter", tuple(float(v) for v in jitter))
        if not _is_number(self.random_erasing) or not 0 <= self.random_erasing <= 1:
            raise ValueError(
                f"`random_erasing` is a probability in [0, 1]. Received: {self.random_erasing!r}"
            )
        put("random_erasing", float(self.random_erasing))
        put("horizontal_flip", bool(self.horizontal_flip))
        put("vertical_flip", bool(self.vertical_flip))

    @staticmethod
    def _check_shift(name: str, value: Any) -> float | int | tuple[float, ...]:
        if isinstance(value, (tuple, list)):
            if not value or not all(_is_number(v) for v in value):
                raise ValueError(f"`{name}` as a list should hold numbers. Received: {name}={value!r}")
            return tuple(float(v) for v in value)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
            return int(value)  # legacy: int n -> integer pixels from {0..n-1} with a random sign
        if _is_number(value) and math.isfinite(value) and value >= 0:
            return float(value)
        raise ValueError(
            f"`{name}` should be a number >= 0 (fraction if < 1, else pixels), an int, or a list of "
            f"values. Received: {name}={value!r}"
        )

    @staticmethod
    def _check_zoom(value: Any) -> float | tuple[float, float]:
        if _is_number(value):
            if not 0 <= value < 1:
                raise ValueError(
                    "`zoom_range` as a float z gives factors [1 - z, 1 + z] and needs 0 <= z < 1; pass "
                    f"(low, high) for other ranges. Received: zoom_range={value!r}"
                )
            return float(value)
        low, high = _pair("zoom_range", value)
        if low <= 0:
            raise ValueError(f"`zoom_range` factors should be > 0. Received: zoom_range={value!r}")
        return low, high

    @property
    def zoom_bounds(self) -> tuple[float, float]:
        """Zoom factors (low, high) the way legacy expands a float ``zoom_range``."""
        if isinstance(self.zoom_range, tuple):
            return self.zoom_range
        return 1.0 - self.zoom_range, 1.0 + self.zoom_range

    @property
    def has_zoom(self) -> bool:
        return self.zoom_bounds != (1.0, 1.0)

    @property
    def has_affine(self) -> bool:
        """Any geometric transform that needs resampling (everything geometric except flips)."""
        shifts = (self.width_shift_range, self.height_shift_range)
        return bool(
            self.rotation_range
            or self.shear_range
            or self.has_zoom
            or any(s if not isinstance(s, tuple) else any(s) for s in shifts)
            or self.random_resized_crop_scale is not None
        )

    @property
    def has_geometry(self) -> bool:
        """Any geometric transform: pixels move, so features of a frozen base cannot be cached."""
        return self.has_affine or self.horizontal_flip or self.vertical_flip

    @property
    def has_photometric(self) -> bool:
        """Any pixel-value transform (brightness, channel shift, colour jitter, erasing)."""
        return bool(
            (self.brightness_range is not None and self.brightness_range != (1.0, 1.0))
            or self.channel_shift_range
            or (self.color_jitter is not None and any(self.color_jitter))
            or self.random_erasing
        )

    @property
    def is_identity(self) -> bool:
        """No transform at all: the caller can skip augmentation entirely."""
        return not (self.has_geometry or self.has_photometric)

    @classmethod
    def preset(cls, name: str) -> "AugmentConfig":
        """One of :data:`PRESETS` by name ('none', 'moderate', 'aggressive')."""
        if name not in PRESETS:
            raise ValueError(
                f"Unknown augmentation preset. Expected one of {tuple(PRESETS)}. Received: name={name!r}"
            )
        return PRESETS[name]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AugmentConfig":
        """A config from pasted ``ImageDataGenerator(...)`` keyword arguments (or this class's own).

        Legacy arguments with no counterpart are dropped when they hold their harmless default
        (``featurewise_center=False``, ``validation_split=0``, ...) and are an error otherwise, with
        what to do instead. Unknown keys are an error naming them and listing the valid ones.
        """
        own = {f.name for f in fields(cls)}
        legacy = set(_LEGACY_UNSUPPORTED) | {"dtype", "interpolation_order"}
        unknown = sorted(set(values) - own - legacy)
        if unknown:
            hints = [
                f"{key!r} (did you mean {close[0]!r}?)"
                if (close := difflib.get_close_matches(key, own | legacy, 1))
                else repr(key)
                for key in unknown
            ]
            raise ValueError(
                f"Unknown augmentation setting(s): {', '.join(hints)}. Valid keys: {sorted(own)}; "
                f"legacy ImageDataGenerator keys also accepted: {sorted(legacy)}."
            )
        kwargs: dict[str, Any] = {}
        problems = []
        for key, value in values.items():
            if key in _LEGACY_UNSUPPORTED:
                harmless, instead = _LEGACY_UNSUPPORTED[key]
                if key != "zca_epsilon" and value not in harmless:
                    problems.append(f"{key}={value!r}: not supported; {instead}")
            elif key == "dtype":
                if value not in _LEGACY_DTYPES and getattr(value, "name", None) != "float32":
                    warnings.warn(
                        f"dtype={value!r} is ignored: augmented images are always float32 in 0..255.",
                        UserWarning,
                        stacklevel=2,
                    )
            elif key == "interpolation_order":
                if value not in _LEGACY_ORDERS:
                    problems.append(
                        f"interpolation_order={value!r}: only 0 (nearest) and 1 (bilinear) are supported"
                    )
                elif "interpolation" in values and values["interpolation"] != _LEGACY_ORDERS[value]:
                    problems.append(
                        f"interpolation_order={value!r} contradicts interpolation={values['interpolation']!r}"
                    )
                else:
                    kwargs["interpolation"] = _LEGACY_ORDERS[value]
            else:
                kwargs[key] = value
        if problems:
            raise ValueError("Unsupported ImageDataGenerator setting(s): " + "; ".join(problems) + ".")
        return cls(**kwargs)


# The reference project's ImageDataGenerator arguments as they were pasted (the pipeline benchmark's
# settings): what AugmentConfig.from_dict must accept unchanged.
REFERENCE_GENERATOR_ARGS: dict = dict(
    rotation_range=15,
    width_shift_range=0.1,
    height_shift_range=0.1,
    shear_range=0.1,
    zoom_range=0.2,
    horizontal_flip=True,
    fill_mode="nearest",
    rescale=1.0 / 255,
)

PRESETS: dict[str, AugmentConfig] = {
    # No augmentation (evaluation, or a baseline run).
    "none": AugmentConfig(),
    # A reference project's torchvision recipe: RandomResizedCrop(scale=(0.7, 1)), horizontal flip,
    # ColorJitter(0.3, 0.3, 0.2, 0.1), RandomRotation(10), RandomErasing(p=0.1). Reflect fill keeps
    # rotated corners face-like instead of black wedges a model could learn as a cue.
    "moderate": AugmentConfig(
        random_resized_crop_scale=(0.7, 1.0),
        horizontal_flip=True,
        color_jitter=(0.3, 0.3, 0.2, 0.1),
        rotation_range=10.0,
        random_erasing=0.1,
        fill_mode="reflect",
    ),
    # For small datasets (a few photos per student) where overfitting dominates: half-area crops,
    # twice the rotation, a 10 degree shear, stronger colour changes and frequent erasing (occlusion
    # by hands, masks, glasses). Vertical flips stay off: upside-down faces never occur at test time.
    "aggressive": AugmentConfig(
        random_resized_crop_scale=(0.5, 1.0),
        horizontal_flip=True,
        color_jitter=(0.4, 0.4, 0.4, 0.1),
        rotation_range=20.0,
        shear_range=10.0,
        random_erasing=0.25,
        fill_mode="reflect",
    ),
}


# ----------------------------------------------------------------------------- geometry


def _matrices(rows: list[list[tf.Tensor | float]], batch: tf.Tensor) -> tf.Tensor:
    """[B, 3, 3] from a 3x3 nested list of scalars or [B] vectors."""
    flat = [tf.broadcast_to(tf.cast(v, tf.float32), [batch]) for row in rows for v in row]
    return tf.reshape(tf.stack(flat, axis=1), [batch, 3, 3])


def _legacy_affine(theta, shift_x, shift_y, shear, zoom_x, zoom_y, height, width, batch) -> tf.Tensor:
    """Output->input matrices of legacy ``apply_affine_transform``: R . T . Sh . Z about the centre.

    Coordinates are (x=column, y=row) pixel indices. Angles are degrees, shifts pixels.
    """
    theta = theta * (math.pi / 180.0)
    shear = shear * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    rotate = _matrices([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], batch)
    shift = _matrices([[1.0, 0.0, shift_x], [0.0, 1.0, shift_y], [0.0, 0.0, 1.0]], batch)
    shear_m = _matrices([[1.0, -tf.sin(shear), 0.0], [0.0, tf.cos(shear), 0.0], [0.0, 0.0, 1.0]], batch)
    zoom = _matrices([[zoom_x, 0.0, 0.0], [0.0, zoom_y, 0.0], [0.0, 0.0, 1.0]], batch)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    to_centre = _matrices([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]], batch)
    from_centre = _matrices([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]], batch)
    return from_centre @ rotate @ shift @ shear_m @ zoom @ to_centre


def _flip_matrices(flip_h, flip_v, height, width, batch) -> tf.Tensor:
    sx = tf.where(flip_h, -1.0, 1.0)
    sy = tf.where(flip_v, -1.0, 1.0)
    ox = tf.where(flip_h, width - 1.0, 0.0)
    oy = tf.where(flip_v, height - 1.0, 0.0)
    return _matrices([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]], batch)


def _map_coordinate(coordinate: tf.Tensor, size: int, fill_mode: str) -> tf.Tensor:
    """Source coordinate along one axis -> inside [0, size - 1]: TensorFlow's ``MapCoordinate``
    (``kernels/image/image_ops.h``) as elementwise ops, so the sampler fills borders exactly like
    ``ImageProjectiveTransformV3``. ``constant`` instead clamps to [-1, size]: one pixel into the
    ``cval`` ring :func:`bilinear_warp` pads, enough for every neighbour outside to read ``cval``."""
    n = float(size)
    if fill_mode == "nearest":
        return tf.clip_by_value(coordinate, 0.0, n - 1.0)
    if fill_mode == "constant":
        return tf.clip_by_value(coordinate, -1.0, n)
    if size == 1:
        return tf.zeros_like(coordinate)
    if fill_mode == "reflect":  # [abcd] -> [dcba|abcd|dcba]
        period = 2.0 * n
        below = period * tf.math.floor(-coordinate / period) + coordinate
        below = tf.where(below < -n, below + period, -below - 1.0)
        above = coordinate - period * tf.math.floor(coordinate / period)
        above = tf.where(above >= n, period - above - 1.0, above)
    else:  # wrap, with the kernel's own division by size - 1
        below = coordinate + n * (tf.math.floor(-coordinate / (n - 1.0)) + 1.0)
        above = coordinate - n * tf.math.floor(coordinate / (n - 1.0))
    mapped = tf.where(coordinate < 0.0, below, tf.where(coordinate > n - 1.0, above, coordinate))
    return tf.clip_by_value(mapped, 0.0, n - 1.0)


def _bilinear_warp(images: tf.Tensor, transforms: tf.Tensor, fill_mode: str, cval: float) -> tf.Tensor:
    _, height, width, channels = images.shape
    batch = tf.shape(images)[0]
    if fill_mode == "constant":  # a one-pixel cval ring: neighbours outside the image read cval
        images = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=tf.cast(cval, images.dtype))
        offset, source_h, source_w = 1.0, height + 2, width + 2
    else:
        offset, source_h, source_w = 0.0, height, width
    t = tf.cast(transforms, tf.float32)[:, :, None, None]
    xs = tf.range(width, dtype=tf.float32)[None, None, :]
    ys = tf.range(height, dtype=tf.float32)[None, :, None]
    x = _map_coordinate(t[:, 0] * xs + t[:, 1] * ys + t[:, 2], width, fill_mode) + offset
    y = _map_coordinate(t[:, 3] * xs + t[:, 4] * ys + t[:, 5], height, fill_mode) + offset
    # Keep the right / lower neighbour inside: on the last column (row) its weight is 1 anyway.
    x0 = tf.minimum(tf.math.floor(x), float(max(source_w - 2, 0)))
    y0 = tf.minimum(tf.math.floor(y), float(max(source_h - 2, 0)))
    fx = tf.reshape(x - x0, [batch, height * width, 1])
    fy = tf.reshape(y - y0, [batch, height * width, 1])
    index = tf.reshape(tf.cast(y0, tf.int32) * source_w + tf.cast(x0, tf.int32), [batch, height * width])
    flat = tf.reshape(images, [batch, source_h * source_w, channels])
    step_x = 1 if source_w > 1 else 0
    step_y = source_w if source_h > 1 else 0

    def pixels(at: tf.Tensor) -> tf.Tensor:  # whole pixels (all channels) per gathered index
        return tf.cast(tf.gather(flat, at, batch_dims=1), tf.float32)

    top_left, top_right = pixels(index), pixels(index + step_x)
    bottom_left, bottom_right = pixels(index + step_y), pixels(index + step_y + step_x)
    top = top_left + fx * (top_right - top_left)
    bottom = bottom_left + fx * (bottom_right - bottom_left)
    return tf.reshape(top + fy * (bottom - top), [batch, height, width, channels])


# XLA fuses the coordinate arithmetic, the four gathers and the blend into a few loops; run op by op
# the same code costs more than the kernel it replaces, as every step writes a full-size tensor.
_bilinear_warp_xla = tf.function(_bilinear_warp, jit_compile=True)


def bilinear_warp(images: tf.Tensor, transforms: tf.Tensor, fill_mode: str = "nearest", cval: float = 0.0) -> tf.Tensor:
    """Bilinear affine resampling of a batch, equal to ``ImageProjectiveTransformV3(interpolation="BILINEAR")``.

    ``images``: [B, H, W, C] uint8 or float with static H, W, C; ``transforms``: [B, 8] output->input
    rows ``a0 a1 a2 b0 b1 b2 c0 c1`` as the TensorFlow op takes them, affine (``c0 = c1 = 0``; the
    perspective divide is not done). Returns float32. Output differs from the kernel's by float32
    rounding (< 0.03 on 0..255, every fill mode, checked in tests). XLA compiles once per batch size.
    """
    if fill_mode not in FILL_MODES:
        raise ValueError(f"Unknown fill_mode. Expected one of {tuple(FILL_MODES)}. Received: fill_mode={fill_mode!r}")
    if not images.shape[1:].is_fully_defined():
        raise ValueError(f"bilinear_warp needs static H, W, C. Received shape: {images.shape}")
    return _bilinear_warp_xla(images, transforms, fill_mode, float(cval))


def _resample(
    images: tf.Tensor, matrices: tf.Tensor, fill_mode: str, cval: float, interpolation: str
) -> tf.Tensor:
    """The single resampling: every image through its own output->input matrix."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    transforms = tf.reshape(matrices, [batch, 9])[:, :8]  # [2, 2] is 1: no perspective
    if interpolation == "bilinear" and images.shape[1:].is_fully_defined():
        return bilinear_warp(images, transforms, fill_mode, cval)
    if interpolation == "bilinear":  # sizes only known at run time: the kernel (XLA needs static shapes)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=tf.stack([height, width]),
            fill_value=tf.constant(cval, tf.float32),
            interpolation="BILINEAR",
            fill_mode=FILL_MODES[fill_mode],
        )
    # Nearest: resample a 1-channel map of source pixel indices with the same kernel, then gather
    # whole RGB pixels. Bit-identical to NEAREST on the image but a third of the kernel's per-value
    # work (it recomputes the coordinates for every channel): on a 2-core CPU ~0.7 CPU-ms per
    # 218x178 image, vs ~1.0 for NEAREST on the image and ~1.6 for BILINEAR.
    index = tf.reshape(tf.range(height * width, dtype=tf.int32), [1, height, width, 1])
    source = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.broadcast_to(index, [batch, height, width, 1]),
        transforms=transforms,
        output_shape=tf.stack([height, width]),
        fill_value=tf.constant(-1.0),
        interpolation="NEAREST",
        fill_mode=FILL_MODES[fill_mode],
    )
    source = tf.reshape(source, [batch, height * width])
    flat = tf.reshape(images, [batch, height * width, -1])
    if fill_mode != "constant":  # the other modes always map to a pixel inside the image
        return tf.reshape(tf.gather(flat, source, batch_dims=1), shape)
    pixels = tf.gather(flat, tf.maximum(source, 0), batch_dims=1)
    return tf.reshape(tf.where((source >= 0)[..., None], pixels, tf.cast(cval, images.dtype)), shape)


def apply_affine(
    images: tf.Tensor,
    *,
    theta: float | tf.Tensor = 0.0,
    shift_x: float | tf.Tensor = 0.0,
    shift_y: float | tf.Tensor = 0.0,
    shear: float | tf.Tensor = 0.0,
    zoom_x: float | tf.Tensor = 1.0,
    zoom_y: float | tf.Tensor = 1.0,
    flip_horizontal: bool | tf.Tensor = False,
    flip_vertical: bool | tf.Tensor = False,
    fill_mode: str = "nearest",
    cval: float = 0.0,
    interpolation: str = "bilinear",
) -> tf.Tensor:
    """Deterministic geometry with given parameters, like legacy ``ImageDataGenerator.apply_transform``.

    ``images`` is [B, H, W, C]; each parameter is a scalar or a [B] vector. ``theta`` and ``shear``
    are degrees, ``shift_x`` (columns) and ``shift_y`` (rows) pixels, with legacy's sign: the
    output samples the input at ``x + shift_x``, so a positive shift moves content left / up.
    Zoom factors < 1 zoom in. Flips come last, as in legacy. One resampling for everything.
    """
    if fill_mode not in FILL_MODES:
        raise ValueError(
            f"Unknown fill_mode. Expected one of {tuple(FILL_MODES)}. Received: fill_mode={fill_mode!r}"
        )
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"Unknown interpolation. Expected one of {INTERPOLATIONS}. "
            f"Received: interpolation={interpolation!r}"
        )
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    theta, shift_x, shift_y, shear, zoom_x, zoom_y = (
        tf.cast(v, tf.float32) for v in (theta, shift_x, shift_y, shear, zoom_x, zoom_y)
    )
    flips = _flip_matrices(
        tf.broadcast_to(flip_horizontal, [batch]),
        tf.broadcast_to(flip_vertical, [batch]),
        height,
        width,
        batch,
    )
    matrices = _legacy_affine(theta, shift_x, shift_y, shear, zoom_x, zoom_y, height, width, batch) @ flips
    out = _resample(images, matrices, fill_mode, float(cval), interpolation)
    out.set_shape(images.shape)
    return out


# ----------------------------------------------------------------------------- sampling


def _stream(seed: tf.Tensor, stream: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, stream)


def _uniform(
    seed: tf.Tensor, stream: int, shape, low: float | tf.Tensor = 0.0, high: float | tf.Tensor = 1.0
):
    return tf.random.stateless_uniform(shape, seed=_stream(seed, stream), minval=low, maxval=high)


def _sample_shift(spec, size: tf.Tensor, seed: tf.Tensor, stream: int, sign_stream: int, batch) -> tf.Tensor:
    """Pixels, per image, with ``ImageDataGenerator.get_random_transform``'s distribution."""
    if isinstance(spec, float):  # continuous: uniform in [-r, r]; a fraction of the size if r < 1
        shift = _uniform(seed, stream, [batch], -spec, spec)
        return shift * size if spec < 1 else shift
    values = tuple(range(spec)) if isinstance(spec, int) else spec  # legacy np.random.choice(n | list)
    pick = tf.random.stateless_uniform(
        [batch], seed=_stream(seed, stream), maxval=len(values), dtype=tf.int32
    )
    shift = tf.gather(tf.constant(values, tf.float32), pick)
    shift *= tf.where(_uniform(seed, sign_stream, [batch]) < 0.5, -1.0, 1.0)
    return shift * size if max(values) < 1 else shift


def _sample_crop(config: AugmentConfig, seed, height, width, batch) -> tf.Tensor:
    """Output->input matrices of a random resized crop (torchvision's sampling, vectorised).

    Up to 10 (area, aspect) candidates per image, the first that fits wins; none fits -> whole image.
    Aspect is relative to the image's own, so ratio 1 crops without stretching non-square faces.
    """
    low, high = config.random_resized_crop_scale
    r_low, r_high = config.random_resized_crop_ratio
    area = _uniform(seed, _S_CROP_AREA, [batch, _TRIES], low, high)
    ratio = tf.exp(_uniform(seed, _S_CROP_RATIO, [batch, _TRIES], math.log(r_low), math.log(r_high)))
    frac_w, frac_h = tf.sqrt(area * ratio), tf.sqrt(area / ratio)
    fits = (frac_w <= 1.0) & (frac_h <= 1.0)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fits = tf.reduce_any(fits, axis=1)
    frac_w = tf.where(any_fits, tf.gather(frac_w, first, batch_dims=1), 1.0)
    frac_h = tf.where(any_fits, tf.gather(frac_h, first, batch_dims=1), 1.0)
    position = _uniform(seed, _S_CROP_POS, [batch, 2])
    x0 = position[:, 0] * (1.0 - frac_w) * width
    y0 = position[:, 1] * (1.0 - frac_h) * height
    # Resize with pixel centres aligned (tf.image.resize's half-pixel convention).
    return _matrices(
        [[frac_w, 0.0, x0 + 0.5 * frac_w - 0.5], [0.0, frac_h, y0 + 0.5 * frac_h - 0.5], [0.0, 0.0, 1.0]],
        batch,
    )


def _geometry(config: AugmentConfig, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    shape = tf.shape(images)
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    flip_h = (_uniform(seed, _S_HFLIP, [batch]) < 0.5) & config.horizontal_flip
    flip_v = (_uniform(seed, _S_VFLIP, [batch]) < 0.5) & config.vertical_flip
    if not config.has_affine:  # flips alone are exact reversals: no resampling at all
        images = tf.where(flip_h[:, None, None, None], tf.reverse(images, axis=[2]), images)
        return tf.where(flip_v[:, None, None, None], tf.reverse(images, axis=[1]), images)

    zero = tf.zeros([batch])
    theta = _uniform(seed, _S_ROT, [batch], -config.rotation_range, config.rotation_range)
    shift_x = (
        _sample_shift(config.width_shift_range, width, seed, _S_TX, _S_TX_SIGN, batch)
        if config.width_shift_range
        else zero
    )
    shift_y = (
        _sample_shift(config.height_shift_range, height, seed, _S_TY, _S_TY_SIGN, batch)
        if config.height_shift_range
        else zero
    )
    shear = _uniform(seed, _S_SHEAR, [batch], -config.shear_range, config.shear_range)
    if config.has_zoom:
        zoom = _uniform(seed, _S_ZOOM, [batch, 2], *config.zoom_bounds)
        zoom_x, zoom_y = zoom[:, 0], zoom[:, 1]
    else:
        zoom_x = zoom_y = zero + 1.0
    # Output->input composition: crop(affine(flip(p))) i.e. the picture is cropped, then the
    # legacy affine acts on the crop, then flipped (legacy flips after the affine).
    matrices = _legacy_affine(theta, shift_x, shift_y, shear, zoom_x, zoom_y, height, width, batch)
    if config.random_resized_crop_scale is not None:
        matrices = _sample_crop(config, seed, height, width, batch) @ matrices
    if config.horizontal_flip or config.vertical_flip:
        matrices = matrices @ _flip_matrices(flip_h, flip_v, height, width, batch)
    return _resample(images, matrices, config.fill_mode, config.cval, config.interpolation)


# ----------------------------------------------------------------------------- photometric


def _per_image(values: tf.Tensor) -> tf.Tensor:
    return values[:, None, None, None]


def _grayscale(images: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(images * tf.constant(_GRAY_WEIGHTS, tf.float32), axis=-1, keepdims=True)


def _color_jitter(images: tf.Tensor, jitter: tuple[float, float, float, float], seed, batch) -> tf.Tensor:
    """torchvision ColorJitter on 0..255 pixels, in the fixed order brightness, contrast, saturation, hue."""
    brightness, contrast, saturation, hue = jitter
    factors = _uniform(seed, _S_JITTER, [batch, 4])

    def factor(column: int, amount: float) -> tf.Tensor:  # uniform in [max(0, 1 - a), 1 + a]
        return _per_image(
            max(0.0, 1.0 - amount) + factors[:, column] * (1.0 + amount - max(0.0, 1.0 - amount))
        )

    if brightness:
        images = tf.clip_by_value(images * factor(0, brightness), 0.0, 255.0)
    if contrast:
        mean = tf.reduce_mean(_grayscale(images), axis=[1, 2, 3], keepdims=True)
        images = tf.clip_by_value(mean + factor(1, contrast) * (images - mean), 0.0, 255.0)
    if saturation:
        gray = _grayscale(images)
        images = tf.clip_by_value(gray + factor(2, saturation) * (images - gray), 0.0, 255.0)
    if hue:
        hsv = tf.image.rgb_to_hsv(images / 255.0)
        delta = (factors[:, 3] * 2.0 - 1.0) * hue
        shifted = tf.math.floormod(hsv[..., 0] + delta[:, None, None], 1.0)
        images = tf.image.hsv_to_rgb(tf.stack([shifted, hsv[..., 1], hsv[..., 2]], axis=-1)) * 255.0
    return images


def _random_erasing(images: tf.Tensor, probability: float, seed) -> tf.Tensor:
    """torchvision RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3)), filled with the ImageNet mean."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    draws = _uniform(seed, _S_ERASE, [batch, _TRIES, 4])
    area = h_f * w_f * (_ERASE_SCALE[0] + draws[..., 0] * (_ERASE_SCALE[1] - _ERASE_SCALE[0]))
    log_lo, log_hi = math.log(_ERASE_RATIO[0]), math.log(_ERASE_RATIO[1])
    ratio = tf.exp(log_lo + draws[..., 1] * (log_hi - log_lo))
    erase_h, erase_w = tf.round(tf.sqrt(area * ratio)), tf.round(tf.sqrt(area / ratio))
    fits = (erase_h < h_f) & (erase_w < w_f)  # torchvision's test; no fit in 10 tries -> no erasing
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    erase_h = tf.gather(erase_h, first, batch_dims=1)
    erase_w = tf.gather(erase_w, first, batch_dims=1)
    top = tf.floor(tf.gather(draws[..., 2], first, batch_dims=1) * (h_f - erase_h + 1.0))
    left = tf.floor(tf.gather(draws[..., 3], first, batch_dims=1) * (w_f - erase_w + 1.0))
    erase = tf.reduce_any(fits, axis=1) & (_uniform(seed, _S_ERASE_APPLY, [batch]) < probability)
    rows = tf.range(h_f)[None, :]
    cols = tf.range(w_f)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + erase_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + erase_w)[:, None])
    mask = in_rows[:, :, None, None] & in_cols[:, None, :, None] & erase[:, None, None, None]
    return tf.where(mask, tf.constant(_IMAGENET_RGB_MEAN_255, tf.float32), images)


def build_augmenter(config: AugmentConfig) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """``augment(images, seed)``: float32 [B, H, W, 3] in 0..255 (or one [H, W, 3] image) -> same shape.

    ``seed`` is an int32/int64 tensor of shape [2]; each image in the batch gets its own draw, and
    the same seed always gives the same output. Pure TensorFlow ops: works eagerly, in
    ``tf.function`` and in ``tf.data`` maps, on CPU or GPU. Output is clipped to 0..255.
    """
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"build_augmenter expects an AugmentConfig. Received: {type(config).__name__}")

    def augment(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        images = tf.cast(tf.convert_to_tensor(images), tf.float32)
        single = images.shape.rank == 3
        if single:
            images = images[None]
        if images.shape.rank != 4:
            raise ValueError(
                f"augment expects images [B, H, W, C] or [H, W, C]. Received shape: {images.shape}"
            )
        static_shape = images.shape
        seed = tf.convert_to_tensor(seed)
        batch = tf.shape(images)[0]
        if config.has_geometry:
            images = _geometry(config, images, seed)
        # Legacy order after the affine: channel shift (its min/max are the transformed image's), brightness.
        if config.channel_shift_range:
            shift = _per_image(
                _uniform(seed, _S_CHSHIFT, [batch], -config.channel_shift_range, config.channel_shift_range)
            )
            low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
            high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
            images = tf.clip_by_value(images + shift, low, high)
        if config.brightness_range is not None and config.brightness_range != (1.0, 1.0):
            images = images * _per_image(_uniform(seed, _S_BRIGHT, [batch], *config.brightness_range))
        if config.color_jitter is not None and any(config.color_jitter):
            images = _color_jitter(images, config.color_jitter, seed, batch)
        if config.random_erasing:
            images = _random_erasing(images, config.random_erasing, seed)
        images = tf.clip_by_value(images, 0.0, 255.0)
        images.set_shape(static_shape)
        return images[0] if single else images

    return augment
