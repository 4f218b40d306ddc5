"""Random draws and the augmenter: per-image parameters from a stateless seed, then two tables.

:data:`GEOMETRY_OPS` rows each give per-image 3x3 output->input matrices; the active rows compose in
table order and the batch is resampled once. :data:`PIXEL_OPS` rows then run in table order.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from tf_models.data.augment.config import AugmentConfig
from tf_models.data.augment.geometry import flip_matrices, legacy_affine_matrices, resample, stack_matrices

# Raw-pixel ImageNet mean. Random erasing fills with it: torchvision's RandomErasing(value=0) runs
# after Normalize, where 0 *is* the ImageNet mean, so this is the same fill in raw 0..255 space.
_IMAGENET_RGB_MEAN_255 = (123.675, 116.28, 103.53)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_ERASE_SCALE = (0.02, 0.33)  # torchvision RandomErasing defaults: area fraction ...
_ERASE_RATIO = (0.3, 3.3)  # ... and aspect ratio (h / w)
_TRIES = 10  # torchvision's rejection-sampling attempts for crops and erasing

# One fixed random stream per quantity, numbered by its place here: a new transform (a row of
# GEOMETRY_OPS or PIXEL_OPS) appends its streams at the end, so the others' draws never change.
STREAMS = ("rotation", "shift_x", "shift_x_sign", "shift_y", "shift_y_sign", "shear", "zoom", "flip_h", "flip_v", "crop_area", "crop_ratio", "crop_position", "channel_shift", "brightness", "color_jitter", "erase_box", "erase_apply")
_STREAM = {name: number for number, name in enumerate(STREAMS)}




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
    area = _uniform(seed, _STREAM["crop_area"], [batch, _TRIES], low, high)
    ratio = tf.exp(_uniform(seed, _STREAM["crop_ratio"], [batch, _TRIES], math.log(r_low), math.log(r_high)))
    frac_w, frac_h = tf.sqrt(area * ratio), tf.sqrt(area / ratio)
    fits = (frac_w <= 1.0) & (frac_h <= 1.0)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fits = tf.reduce_any(fits, axis=1)
    frac_w = tf.where(any_fits, tf.gather(frac_w, first, batch_dims=1), 1.0)
    frac_h = tf.where(any_fits, tf.gather(frac_h, first, batch_dims=1), 1.0)
    position = _uniform(seed, _STREAM["crop_position"], [batch, 2])
    x0 = position[:, 0] * (1.0 - frac_w) * width
    y0 = position[:, 1] * (1.0 - frac_h) * height
    # Resize with pixel centres aligned (tf.image.resize's half-pixel convention).
    return stack_matrices(
        [[frac_w, 0.0, x0 + 0.5 * frac_w - 0.5], [0.0, frac_h, y0 + 0.5 * frac_h - 0.5], [0.0, 0.0, 1.0]],
        batch,
    )


def _has_legacy_affine(config: AugmentConfig) -> bool:
    """Rotation, a shift, shear or zoom: ``has_affine`` without the crop, which is its own row."""
    shifts = (config.width_shift_range, config.height_shift_range)
    return bool(
        config.rotation_range
        or config.shear_range
        or config.has_zoom
        or any(any(s) if isinstance(s, tuple) else s for s in shifts)
    )


def _sample_affine(config: AugmentConfig, seed, height, width, batch) -> tf.Tensor:
    """Output->input matrices of legacy ``ImageDataGenerator``'s rotation, shifts, shear and zoom."""
    zero = tf.zeros([batch])
    theta = _uniform(seed, _STREAM["rotation"], [batch], -config.rotation_range, config.rotation_range)
    shift_x = (
        _sample_shift(config.width_shift_range, width, seed, _STREAM["shift_x"], _STREAM["shift_x_sign"], batch)
        if config.width_shift_range
        else zero
    )
    shift_y = (
        _sample_shift(config.height_shift_range, height, seed, _STREAM["shift_y"], _STREAM["shift_y_sign"], batch)
        if config.height_shift_range
        else zero
    )
    shear = _uniform(seed, _STREAM["shear"], [batch], -config.shear_range, config.shear_range)
    if config.has_zoom:
        zoom = _uniform(seed, _STREAM["zoom"], [batch, 2], *config.zoom_bounds)
        zoom_x, zoom_y = zoom[:, 0], zoom[:, 1]
    else:
        zoom_x = zoom_y = zero + 1.0
    return legacy_affine_matrices(theta, shift_x, shift_y, shear, zoom_x, zoom_y, height, width, batch)


def _draw_flips(config: AugmentConfig, seed: tf.Tensor, batch) -> tuple[tf.Tensor, tf.Tensor]:
    """Per image: (flip left-right, flip top-bottom), each with probability 0.5 when enabled."""
    flip_h = (_uniform(seed, _STREAM["flip_h"], [batch]) < 0.5) & config.horizontal_flip
    flip_v = (_uniform(seed, _STREAM["flip_v"], [batch]) < 0.5) & config.vertical_flip
    return flip_h, flip_v


def _sample_flip(config: AugmentConfig, seed, height, width, batch) -> tf.Tensor:
    return flip_matrices(*_draw_flips(config, seed, batch), height, width, batch)


def _flip_exactly(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """The same flips as :func:`_sample_flip` as exact reversals, when nothing else needs resampling."""
    flip_h, flip_v = _draw_flips(config, seed, tf.shape(images)[0])
    images = tf.where(flip_h[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return tf.where(flip_v[:, None, None, None], tf.reverse(images, axis=[1]), images)


@dataclass(frozen=True)
class GeometryOp:
    """One geometric transform: when it runs, and its per-image output->input matrices."""

    name: str
    active: Callable[[AugmentConfig], bool]
    # (config, seed, height, width, batch) -> [batch, 3, 3]; height and width are float32 scalars.
    matrices: Callable[[AugmentConfig, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
    # (images, config, seed) -> images without resampling, used when this is the only active row:
    # an op that is an exact pixel permutation need not blur the batch through an interpolation.
    exact: Callable[[tf.Tensor, AugmentConfig, tf.Tensor], tf.Tensor] | None = None


# Output->input matrices compose in table order (crop @ affine @ flip): the picture is cropped, the
# legacy affine acts on the crop, then it is flipped (legacy flips after the affine).
GEOMETRY_OPS = (
    GeometryOp("random_resized_crop", lambda c: c.random_resized_crop_scale is not None, _sample_crop),
    GeometryOp("affine", _has_legacy_affine, _sample_affine),
    GeometryOp("flip", lambda c: c.horizontal_flip or c.vertical_flip, _sample_flip, exact=_flip_exactly),
)


def _geometry(config: AugmentConfig, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The active rows of :data:`GEOMETRY_OPS`, composed into one matrix per image, in one resampling."""
    active = [op for op in GEOMETRY_OPS if op.active(config)]
    if not active:
        return images
    if len(active) == 1 and active[0].exact is not None:
        return active[0].exact(images, config, seed)
    shape = tf.shape(images)
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    # Left fold ((m0 @ m1) @ m2), the order the product was always taken in: same seed, same bits.
    # (A crop without the affine row once multiplied in an exact identity; dropping it changes nothing.)
    matrices = functools.reduce(
        operator.matmul, [op.matrices(config, seed, height, width, batch) for op in active]
    )
    return resample(images, matrices, config.fill_mode, config.cval, config.interpolation)


def _per_image(values: tf.Tensor) -> tf.Tensor:
    return values[:, None, None, None]


def _grayscale(images: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(images * tf.constant(_GRAY_WEIGHTS, tf.float32), axis=-1, keepdims=True)


def _color_jitter(images: tf.Tensor, jitter: tuple[float, float, float, float], seed, batch) -> tf.Tensor:
    """torchvision ColorJitter on 0..255 pixels, in the fixed order brightness, contrast, saturation, hue."""
    brightness, contrast, saturation, hue = jitter
    factors = _uniform(seed, _STREAM["color_jitter"], [batch, 4])

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
    draws = _uniform(seed, _STREAM["erase_box"], [batch, _TRIES, 4])
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
    erase = tf.reduce_any(fits, axis=1) & (_uniform(seed, _STREAM["erase_apply"], [batch]) < probability)
    rows = tf.range(h_f)[None, :]
    cols = tf.range(w_f)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + erase_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + erase_w)[:, None])
    mask = in_rows[:, :, None, None] & in_cols[:, None, :, None] & erase[:, None, None, None]
    return tf.where(mask, tf.constant(_IMAGENET_RGB_MEAN_255, tf.float32), images)


def _channel_shift(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    """Legacy channel shift: one offset per image, clipped to the (transformed) image's own range."""
    amount = config.channel_shift_range
    shift = _per_image(_uniform(seed, _STREAM["channel_shift"], [batch], -amount, amount))
    low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value(images + shift, low, high)


def _brightness(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    return images * _per_image(_uniform(seed, _STREAM["brightness"], [batch], *config.brightness_range))


@dataclass(frozen=True)
class PixelOp:
    """One pixel-value transform after the geometry: when it runs, and what it does."""

    name: str
    active: Callable[[AugmentConfig], bool]
    apply: Callable[[tf.Tensor, AugmentConfig, tf.Tensor, tf.Tensor], tf.Tensor]  # (images, config, seed, batch)


# In the order they run: legacy's (channel shift, then brightness) first, then torchvision's.
PIXEL_OPS = (
    PixelOp("channel_shift", lambda c: bool(c.channel_shift_range), _channel_shift),
    PixelOp("brightness", lambda c: c.brightness_range is not None and c.brightness_range != (1.0, 1.0),
            _brightness),
    PixelOp("color_jitter", lambda c: c.color_jitter is not None and any(c.color_jitter),
            lambda images, c, seed, batch: _color_jitter(images, c.color_jitter, seed, batch)),
    PixelOp("random_erasing", lambda c: bool(c.random_erasing),
            lambda images, c, seed, batch: _random_erasing(images, c.random_erasing, seed)),
)


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
        images = _geometry(config, images, seed)  # the table decides: no active row, no geometry
        for op in PIXEL_OPS:  # in table order
            if op.active(config):
                images = op.apply(images, config, seed, batch)
        images = tf.clip_by_value(images, 0.0, 255.0)
        images.set_shape(static_shape)
        return images[0] if single else images

    return augment
