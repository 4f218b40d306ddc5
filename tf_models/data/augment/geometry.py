"""Geometry: 3x3 output->input matrices per image, and one resampling of the whole batch.

Pure functions of their arguments (the random draws are in :mod:`tf_models.data.augment.ops`).
"""

from __future__ import annotations

import math

import tensorflow as tf

from tf_models.data.augment.config import FILL_MODES, INTERPOLATIONS



def stack_matrices(rows: list[list[tf.Tensor | float]], batch: tf.Tensor) -> tf.Tensor:
    """[B, 3, 3] from a 3x3 nested list of scalars or [B] vectors."""
    flat = [tf.broadcast_to(tf.cast(v, tf.float32), [batch]) for row in rows for v in row]
    return tf.reshape(tf.stack(flat, axis=1), [batch, 3, 3])


def legacy_affine_matrices(theta, shift_x, shift_y, shear, zoom_x, zoom_y, height, width, batch) -> tf.Tensor:
    """Output->input matrices of legacy ``apply_affine_transform``: R . T . Sh . Z about the centre.

    Coordinates are (x=column, y=row) pixel indices. Angles are degrees, shifts pixels.
    """
    theta = theta * (math.pi / 180.0)
    shear = shear * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    rotate = stack_matrices([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], batch)
    shift = stack_matrices([[1.0, 0.0, shift_x], [0.0, 1.0, shift_y], [0.0, 0.0, 1.0]], batch)
    shear_m = stack_matrices([[1.0, -tf.sin(shear), 0.0], [0.0, tf.cos(shear), 0.0], [0.0, 0.0, 1.0]], batch)
    zoom = stack_matrices([[zoom_x, 0.0, 0.0], [0.0, zoom_y, 0.0], [0.0, 0.0, 1.0]], batch)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    to_centre = stack_matrices([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]], batch)
    from_centre = stack_matrices([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]], batch)
    return from_centre @ rotate @ shift @ shear_m @ zoom @ to_centre


def flip_matrices(flip_h, flip_v, height, width, batch) -> tf.Tensor:
    sx = tf.where(flip_h, -1.0, 1.0)
    sy = tf.where(flip_v, -1.0, 1.0)
    ox = tf.where(flip_h, width - 1.0, 0.0)
    oy = tf.where(flip_v, height - 1.0, 0.0)
    return stack_matrices([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]], batch)


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


def resample(
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
    flips = flip_matrices(
        tf.broadcast_to(flip_horizontal, [batch]),
        tf.broadcast_to(flip_vertical, [batch]),
        height,
        width,
        batch,
    )
    matrices = legacy_affine_matrices(theta, shift_x, shift_y, shear, zoom_x, zoom_y, height, width, batch) @ flips
    out = resample(images, matrices, fill_mode, float(cval), interpolation)
    out.set_shape(images.shape)
    return out
