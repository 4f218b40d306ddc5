"""What to augment: :class:`AugmentConfig` (the ImageDataGenerator knobs plus torchvision-style
extras), its checks, and the named presets. No TensorFlow here: configs are built everywhere."""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from dataclasses import dataclass, fields
from typing import Any

FILL_MODES = {"constant": "CONSTANT", "nearest": "NEAREST", "reflect": "REFLECT", "wrap": "WRAP"}
INTERPOLATIONS = ("bilinear", "nearest")


class RescaleIgnoredWarning(UserWarning):
    """``rescale`` was given: accepted so legacy arguments paste in, but never applied."""


# Shown once per process per rescale value, however many configs carry it (pytest.warns still sees
# every one): a notebook that builds a config per epoch should not print it every epoch.
warnings.filterwarnings("once", category=RescaleIgnoredWarning)

def _user_stacklevel() -> int:
    """warnings.warn stacklevel of the first frame outside this package (the user's line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(__package__):  # dataclass __init__ too
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
        self._check_geometry()
        self._check_rescale()
        self._check_pixel_ops()

    def _put(self, name: str, value: Any) -> None:  # normalise in place despite frozen=True
        object.__setattr__(self, name, value)

    def _check_geometry(self) -> None:
        for name in ("rotation_range", "shear_range", "channel_shift_range", "cval"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or (name != "cval" and value < 0):
                raise ValueError(f"`{name}` should be a finite number >= 0. Received: {name}={value!r}")
            self._put(name, float(value))
        for name in ("width_shift_range", "height_shift_range"):
            self._put(name, self._check_shift(name, getattr(self, name)))
        self._put("zoom_range", self._check_zoom(self.zoom_range))
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

    def _check_rescale(self) -> None:
        if self.rescale is not None:
            if not _is_number(self.rescale):
                raise ValueError(f"`rescale` should be a number or None. Received: rescale={self.rescale!r}")
            if self.rescale != 1:
                warnings.warn(
                    f"rescale={self.rescale!r} is accepted but NOT applied: tf_models models take raw RGB "
                    "0..255 and do their own preprocessing inside the model. Rescaling the images as well "
                    "(feeding x/255 to a model that expects 0..255) would leave it near chance. "
                    "Remove `rescale` from your settings.",
                    RescaleIgnoredWarning,
                    stacklevel=_user_stacklevel(),
                )

    def _check_pixel_ops(self) -> None:
        if self.brightness_range is not None:
            low, high = _pair("brightness_range", self.brightness_range)
            if low < 0:
                raise ValueError(
                    f"`brightness_range` factors should be >= 0. Received: {self.brightness_range!r}"
                )
            self._put("brightness_range", (low, high))
        if self.random_resized_crop_scale is not None:
            low, high = _pair("random_resized_crop_scale", self.random_resized_crop_scale)
            if not 0 < low <= high <= 1:
                raise ValueError(
                    "`random_resized_crop_scale` is an area fraction: 0 < low <= high <= 1. "
                    f"Received: {self.random_resized_crop_scale!r}"
                )
            self._put("random_resized_crop_scale", (low, high))
        low, high = _pair("random_resized_crop_ratio", self.random_resized_crop_ratio)
        if low <= 0:
            raise ValueError(
                f"`random_resized_crop_ratio` should be > 0. Received: {self.random_resized_crop_ratio!r}"
            )
        self._put("random_resized_crop_ratio", (low, high))
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
            self._put("color_jitter", tuple(float(v) for v in jitter))
        if not _is_number(self.random_erasing) or not 0 <= self.random_erasing <= 1:
            raise ValueError(
                f"`random_erasing` is a probability in [0, 1]. Received: {self.random_erasing!r}"
            )
        self._put("random_erasing", float(self.random_erasing))
        self._put("horizontal_flip", bool(self.horizontal_flip))
        self._put("vertical_flip", bool(self.vertical_flip))

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
        from tf_models.data.augment.legacy import config_kwargs

        return cls(**config_kwargs(values, {f.name for f in fields(cls)}))


# Typical ImageDataGenerator arguments of a CelebA notebook, rescale included (the pipeline
# benchmark's settings): what AugmentConfig.from_dict must accept unchanged.
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
    # A torchvision-style recipe: RandomResizedCrop(scale=(0.7, 1)), horizontal flip,
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
