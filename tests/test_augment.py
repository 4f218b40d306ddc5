"""tf_models.data.augment: legacy ImageDataGenerator meaning of each knob, fused geometry, determinism, tf.data."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import tensorflow as tf

from tf_models.data.augment import (
    PRESETS,
    AugmentConfig,
    REFERENCE_GENERATOR_ARGS,
    RescaleIgnoredWarning,
    apply_affine,
    bilinear_warp,
    build_augmenter,
)
from tf_models.data.augment import ops as augment_ops
from tf_models.data.augment.geometry import stack_matrices

SEED = tf.constant([7, 11], tf.int64)



def _smooth(height: int = 32, width: int = 32, batch: int = 1) -> np.ndarray:
    """A smooth, asymmetric RGB image in 0..255 (bilinear resampling of it is well behaved)."""
    yy, xx = np.mgrid[0:height, 0:width].astype("float32")
    image = np.stack(
        [
            127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0),
            127 + 100 * np.cos((xx + yy) / 6.0),
            20 + 3 * xx + 2 * yy,
        ],
        axis=-1,
    )
    return np.repeat(np.clip(image, 0, 255)[None], batch, axis=0).astype("float32")


def _dot(height: int, width: int, row: int, col: int, batch: int = 1) -> np.ndarray:
    """Black images with one white pixel: where it lands says how the geometry moved it."""
    images = np.zeros((batch, height, width, 3), "float32")
    images[:, row, col, :] = 255.0
    return images


def _centroid(image: np.ndarray) -> tuple[float, float]:
    """(row, col) of an image's brightness mass (bilinear spreads a dot over <= 4 pixels)."""
    mass = np.asarray(image)[..., 0]
    rows, cols = np.mgrid[0 : mass.shape[0], 0 : mass.shape[1]]
    total = mass.sum()
    return float((rows * mass).sum() / total), float((cols * mass).sum() / total)


def _augment(config: AugmentConfig, images, seed=SEED) -> np.ndarray:
    return build_augmenter(config)(tf.constant(images), seed).numpy()


def _projective_ops(config: AugmentConfig) -> int:
    fn = tf.function(build_augmenter(config))
    graph = fn.get_concrete_function(
        tf.TensorSpec([None, 24, 20, 3], tf.float32), tf.TensorSpec([2], tf.int64)
    ).graph

    def resamples(op: tf.Operation) -> bool:  # the kernel, or a call of the XLA bilinear sampler
        if op.type == "ImageProjectiveTransformV3":
            return True
        return op.type in ("PartitionedCall", "StatefulPartitionedCall") and "bilinear_warp" in op.get_attr("f").name

    return sum(resamples(op) for op in graph.get_operations())


# ----------------------------------------------------------------------------- legacy knobs


def test_identity_config_returns_input_exactly():
    images = _smooth(20, 16, batch=3)
    for config in (AugmentConfig(), AugmentConfig.preset("none")):
        assert config.is_identity and not config.has_geometry
        np.testing.assert_array_equal(_augment(config, images), images)
        assert _projective_ops(config) == 0


def test_horizontal_flip_mirrors_exactly_about_half_the_time():
    images = _smooth(12, 9, batch=400)
    out = _augment(AugmentConfig(horizontal_flip=True), images)
    flipped = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images, strict=True)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, images, strict=True)])
    assert np.all(flipped ^ kept)  # every image is either mirrored exactly or untouched
    assert 0.4 < flipped.mean() < 0.6
    assert not np.any(np.all(out == out[:, ::-1], axis=(1, 2, 3)))  # sanity: the image is asymmetric


def test_vertical_flip_mirrors_rows():
    images = _smooth(12, 9, batch=200)
    out = _augment(AugmentConfig(vertical_flip=True), images)
    flipped = np.array([np.array_equal(o, i[::-1]) for o, i in zip(out, images, strict=True)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, images, strict=True)])
    assert np.all(flipped ^ kept) and 0.35 < flipped.mean() < 0.65


def test_flip_inside_the_fused_matrix_is_exact():
    images = _smooth(14, 11, batch=2)
    out = apply_affine(images, flip_horizontal=True).numpy()
    np.testing.assert_array_equal(out, images[:, :, ::-1])
    out = apply_affine(images, flip_vertical=tf.constant([True, False])).numpy()
    np.testing.assert_array_equal(out[0], images[0, ::-1])
    np.testing.assert_array_equal(out[1], images[1])


def test_width_shift_moves_pixels_horizontally_by_the_given_amount():
    # Legacy list form: one of the values with a random sign, in pixels (values >= 1).
    images = _dot(20, 12, row=9, col=6, batch=64)
    out = _augment(AugmentConfig(width_shift_range=[3], fill_mode="constant"), images)
    positions = {np.unravel_index(np.argmax(o[..., 0]), o.shape[:2]) for o in out}
    assert positions == {(9, 3), (9, 9)}  # same row, exactly 3 columns either way
    for o in out:
        assert o.sum() == images[0].sum()  # an integer shift moves the dot without blurring it


def test_height_shift_moves_pixels_vertically():
    images = _dot(20, 12, row=9, col=6, batch=64)
    out = _augment(AugmentConfig(height_shift_range=[2], fill_mode="constant"), images)
    positions = {np.unravel_index(np.argmax(o[..., 0]), o.shape[:2]) for o in out}
    assert positions == {(7, 6), (11, 6)}


def test_fractional_shift_is_a_fraction_of_that_side():
    # width_shift_range=0.25 on a 16-wide image: up to 4 px sideways, never vertically.
    images = _dot(24, 16, row=12, col=8, batch=200)
    out = _augment(AugmentConfig(width_shift_range=0.25, fill_mode="constant"), images)
    moves = np.array([_centroid(o) for o in out]) - (12, 8)
    np.testing.assert_allclose(moves[:, 0], 0.0, atol=1e-4)
    assert np.abs(moves[:, 1]).max() <= 4.0 + 1e-4
    assert np.abs(moves[:, 1]).max() > 3.5 and moves[:, 1].min() < -3.0 and moves[:, 1].max() > 3.0


def test_integer_shift_is_the_legacy_discrete_form():
    # Legacy: width_shift_range=3 (an int) draws integer pixels from {-2..2}.
    images = _dot(10, 16, row=5, col=8, batch=200)
    out = _augment(AugmentConfig(width_shift_range=3, fill_mode="constant"), images)
    cols = {int(np.argmax(o[5, :, 0])) for o in out}
    assert cols == {6, 7, 8, 9, 10}


def test_positive_shift_samples_further_right_like_legacy():
    # Legacy sign: output(x) = input(x + tx), so content moves left for tx > 0.
    images = _smooth(10, 16)
    out = apply_affine(images, shift_x=2.0).numpy()
    np.testing.assert_array_equal(out[:, :, :-2], images[:, :, 2:])


def test_rotation_is_bounded_by_rotation_range():
    size, centre, offset = 41, 20, 12
    images = _dot(size, size, row=centre, col=centre + offset, batch=128)  # at angle 0 on the right
    out = _augment(AugmentConfig(rotation_range=90, fill_mode="constant"), images)
    angles = []
    for o in out:
        row, col = _centroid(o)
        angles.append(math.degrees(math.atan2(centre - row, col - centre)))  # counter-clockwise positive
        assert math.hypot(row - centre, col - centre) == pytest.approx(
            offset, abs=0.5
        )  # a rotation about the centre
    angles = np.array(angles)
    assert np.abs(angles).max() <= 90.5
    assert angles.min() < -60 and angles.max() > 60  # both directions, most of the range


def test_rotation_90_is_rot90_and_two_quarter_turns_make_a_half_turn():
    images = _smooth(15, 15)
    quarter = apply_affine(images, theta=90.0).numpy()
    np.testing.assert_allclose(quarter, np.rot90(images, 1, axes=(1, 2)), atol=1e-3)  # counter-clockwise
    twice = apply_affine(apply_affine(images, theta=90.0), theta=90.0).numpy()
    half = apply_affine(images, theta=180.0).numpy()
    np.testing.assert_allclose(twice, half, atol=1e-3)
    np.testing.assert_allclose(half, images[:, ::-1, ::-1], atol=1e-3)


def test_geometry_pivots_at_the_centre_of_non_square_images():
    # tf_keras pivots at (col=H/2, row=W/2); the true centre makes a half turn an exact double flip.
    images = _smooth(15, 11, batch=2)
    np.testing.assert_allclose(apply_affine(images, theta=180.0).numpy(), images[:, ::-1, ::-1], atol=1e-3)
    zoomed = apply_affine(_dot(15, 11, row=7, col=5), zoom_x=0.5, zoom_y=0.5, fill_mode="constant").numpy()
    assert np.unravel_index(np.argmax(zoomed[0, ..., 0]), (15, 11)) == (7, 5)  # the centre pixel stays put


def test_zoom_below_one_zooms_in_as_legacy():
    # Factor 0.5: output samples the input at half the distance from the centre -> content doubles in size.
    images = _dot(21, 21, row=7, col=13)  # offset (-3, +3) from the centre (10, 10)
    out = _augment(AugmentConfig(zoom_range=(0.5, 0.5), fill_mode="constant"), images)
    assert np.unravel_index(np.argmax(out[0, ..., 0]), (21, 21)) == (4, 16)
    out = _augment(AugmentConfig(zoom_range=(2.0, 2.0), fill_mode="constant"), _dot(21, 21, row=4, col=16))
    assert _centroid(out[0]) == pytest.approx((7.0, 13.0), abs=0.3)  # > 1 zooms out


def test_zoom_float_expands_like_legacy_with_independent_axes():
    config = AugmentConfig(zoom_range=0.2)
    assert config.zoom_bounds == pytest.approx((0.8, 1.2))
    centre, offset = 30, 15
    images = _dot(61, 61, row=centre - offset, col=centre + offset, batch=64)
    out = _augment(AugmentConfig(zoom_range=0.2, fill_mode="constant"), images)
    scale = np.array([(centre - r, c - centre) for r, c in map(_centroid, out)]) / offset  # = 1 / zoom
    assert scale.min() >= 1 / 1.2 - 0.02 and scale.max() <= 1 / 0.8 + 0.02
    assert np.abs(scale[:, 0] - scale[:, 1]).max() > 0.1  # zx and zy drawn independently


def test_shear_is_degrees_and_keeps_the_centre():
    images = _smooth(31, 31)
    sheared = apply_affine(images, shear=30.0).numpy()
    np.testing.assert_allclose(sheared[0, 15, 15], images[0, 15, 15], atol=1e-3)
    assert np.abs(sheared - images).mean() > 5  # 30 degrees of shear is a big change


def test_brightness_range_is_multiplicative():
    images = _smooth(10, 8, batch=4)
    np.testing.assert_array_equal(_augment(AugmentConfig(brightness_range=(1.0, 1.0)), images), images)
    np.testing.assert_allclose(
        _augment(AugmentConfig(brightness_range=(0.5, 0.5)), images), images * 0.5, rtol=1e-6
    )
    out = _augment(AugmentConfig(brightness_range=(0.5, 1.5)), images)
    factors = out.reshape(4, -1)[:, 0] / images.reshape(4, -1)[:, 0]
    assert np.all((factors >= 0.5) & (factors <= 1.5)) and np.ptp(factors) > 0
    assert out.max() <= 255.0  # clipped like PIL's 8-bit result


def test_channel_shift_adds_one_offset_clipped_to_the_image_range():
    images = _smooth(16, 16, batch=32)
    out = _augment(AugmentConfig(channel_shift_range=40.0), images)
    for o, image in zip(out, images, strict=True):
        low, high = image.min(), image.max()
        assert o.min() >= low - 1e-4 and o.max() <= high + 1e-4
        inside = (image > low + 40) & (image < high - 40)  # never clipped
        shift = (o - image)[inside]
        assert np.ptp(shift) < 1e-3  # the same offset on every channel and pixel (legacy semantics)
        assert abs(shift[0]) <= 40.0
    shifts = (out - images)[:, 8, 8, 0]
    assert shifts.min() < -10 and shifts.max() > 10


def test_fill_mode_constant_uses_cval():
    images = _smooth(12, 16, batch=16)
    for interpolation in ("bilinear", "nearest"):
        config = AugmentConfig(
            width_shift_range=[5], fill_mode="constant", cval=77.25, interpolation=interpolation
        )
        out = _augment(config, images)
        for o in out:
            left, right = np.all(o[:, :5] == 77.25), np.all(o[:, -5:] == 77.25)
            assert left != right  # the 5 vacated columns are cval, on the side the image left
            assert np.sum(o == 77.25) == 12 * 5 * 3


def test_fill_modes_nearest_and_reflect_extend_the_edge():
    images = _smooth(10, 12)
    nearest = apply_affine(images, shift_x=-3.0, fill_mode="nearest").numpy()
    np.testing.assert_array_equal(nearest[0, :, :3], np.repeat(images[0, :, :1], 3, axis=1))
    reflect = apply_affine(images, shift_x=-3.0, fill_mode="reflect").numpy()
    np.testing.assert_array_equal(reflect[0, :, :3], images[0, :, 2::-1])  # c b a | a b c
    wrap = apply_affine(images, shift_x=-3.0, fill_mode="wrap").numpy()
    np.testing.assert_array_equal(wrap[0, :, :3], images[0, :, -3:])


@pytest.mark.isa_sensitive  # XLA's CPU code generation follows the instruction set
def test_nearest_interpolation_matches_the_kernel_on_the_image_bit_for_bit():
    # The nearest path resamples a map of pixel indices and gathers whole pixels; it must give exactly
    # what NEAREST on the 3-channel image gives, for every fill mode.
    from tf_models.data.augment.geometry import resample as _resample

    images = tf.constant(_smooth(23, 19, batch=4))
    angles = np.radians([17.0, -33.0, 5.0, 90.0])
    matrices = np.stack(
        [
            [[np.cos(a) * 1.1, -np.sin(a), 4.3], [np.sin(a), np.cos(a) * 0.9, -2.6], [0.0, 0.0, 1.0]]
            for a in angles
        ]
    ).astype("float32")
    for fill_mode in ("constant", "reflect", "wrap", "nearest"):
        ours = _resample(images, tf.constant(matrices), fill_mode, 9.0, "nearest").numpy()
        reference = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=tf.constant(matrices.reshape(4, 9)[:, :8]),
            output_shape=[23, 19],
            fill_value=9.0,
            interpolation="NEAREST",
            fill_mode=fill_mode.upper(),
        ).numpy()
        np.testing.assert_array_equal(ours, reference, err_msg=fill_mode)
    assert np.any(ours != images.numpy())


def _bilinear_kernel(images, transforms, fill_mode: str, cval: float) -> np.ndarray:
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=tf.constant(float(cval)), interpolation="BILINEAR", fill_mode=fill_mode.upper()).numpy()


def _wild_transforms(count: int, height: int, width: int, seed: int) -> tf.Tensor:
    """Any 2x2 part in +-3 (zoom far in/out, any rotation, shear, flips), offsets up to 4 image sizes
    out: several reflect / wrap periods away, every border case of the fill modes."""
    rng = np.random.default_rng(seed)
    linear = rng.uniform(-3, 3, (count, 2, 2))
    offset = rng.uniform(-4 * max(height, width), 4 * max(height, width), (count, 2))
    rows = [linear[:, 0], offset[:, :1], linear[:, 1], offset[:, 1:], np.zeros((count, 2))]
    return tf.constant(np.concatenate(rows, axis=1), tf.float32)


@pytest.mark.isa_sensitive  # XLA's CPU code generation follows the instruction set
@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect", "wrap"])
def test_bilinear_warp_equals_the_tensorflow_kernel(fill_mode):
    # The XLA sampler replaces ImageProjectiveTransformV3 BILINEAR for speed; it must give its output
    # (to float32 rounding) for realistic and wild matrices, odd and tiny sizes, uint8 and float input.
    cases = [(tf.constant(_smooth(23, 19, batch=6)), _wild_transforms(6, 23, 19, 1))]
    for height, width in ((1, 1), (1, 5), (2, 2), (5, 7), (16, 3)):
        images = tf.random.stateless_uniform([4, height, width, 3], [height, width], 0, 255)
        cases.append((images, _wild_transforms(4, height, width, height * 100 + width)))
    angles = np.radians([15.0, -15.0, 3.0])  # the pipeline's own kind of matrix, on uint8 pixels
    mild = np.stack([[np.cos(a) * 1.1, -np.sin(a), 2.5, np.sin(a), np.cos(a) * 0.9, -1.7, 0, 0] for a in angles])
    cases.append((tf.cast(_smooth(23, 19, batch=3), tf.uint8), tf.constant(mild, tf.float32)))
    for cval in (0.0, 77.0) if fill_mode == "constant" else (0.0,):
        for images, transforms in cases:
            ours = bilinear_warp(images, transforms, fill_mode, cval).numpy()
            reference = _bilinear_kernel(images, transforms, fill_mode, cval)
            assert ours.dtype == np.float32 and ours.shape == reference.shape
            np.testing.assert_allclose(ours, reference, atol=0.05, err_msg=f"{fill_mode} {images.shape} {cval}")


def test_bilinear_warp_rejects_unknown_shapes_and_fill_modes():
    with pytest.raises(ValueError, match="fill_mode='mirror'"):
        bilinear_warp(tf.zeros([1, 4, 4, 3]), tf.zeros([1, 8]), "mirror")
    graph = tf.function(lambda images: bilinear_warp(images, tf.zeros([1, 8])),
                        input_signature=[tf.TensorSpec([None, None, None, 3])])
    with pytest.raises(ValueError, match="needs static H, W, C"):
        graph.get_concrete_function()


def test_augmenter_falls_back_to_the_kernel_when_sizes_are_dynamic():
    config = AugmentConfig(rotation_range=20, zoom_range=0.2)
    augment = build_augmenter(config)
    images = _smooth(21, 17, batch=3)
    dynamic = tf.function(augment, input_signature=[tf.TensorSpec([None, None, None, 3]), tf.TensorSpec([2], tf.int64)])
    np.testing.assert_allclose(dynamic(images, SEED).numpy(), augment(tf.constant(images), SEED).numpy(), atol=0.05)


# ----------------------------------------------------------------------------- extras


def test_random_resized_crop_full_scale_is_identity_and_quarter_area_zooms_2x():
    images = _smooth(20, 16, batch=2)
    full = AugmentConfig(random_resized_crop_scale=(1.0, 1.0), random_resized_crop_ratio=(1.0, 1.0))
    np.testing.assert_allclose(_augment(full, images), images, atol=1e-3)
    ramp = np.broadcast_to(np.arange(16, dtype="float32")[None, None, :, None] * 10, (8, 20, 16, 3)).copy()
    quarter = AugmentConfig(random_resized_crop_scale=(0.25, 0.25), random_resized_crop_ratio=(1.0, 1.0))
    out = _augment(quarter, ramp)
    slopes = np.diff(out[:, 10, 2:-2, 0], axis=1)
    np.testing.assert_allclose(slopes, 5.0, atol=1e-3)  # half the width stretched over the whole width
    assert np.ptp(out[:, 10, 8, 0]) > 1  # the crop position varies between images


def test_color_jitter_follows_torchvision_meaning():
    images = _smooth(16, 16, batch=16) * 0.8 + 20
    gray = np.repeat(images[..., :1], 3, axis=-1)
    # Saturation and hue leave gray pixels gray.
    out = _augment(AugmentConfig(color_jitter=(0.0, 0.0, 0.9, 0.5)), gray)
    np.testing.assert_allclose(out, gray, atol=0.05)
    # Brightness alone is one factor per image in [0.7, 1.3].
    out = _augment(AugmentConfig(color_jitter=(0.3, 0.0, 0.0, 0.0)), images)
    ratio = out / images
    assert np.all(np.ptp(ratio.reshape(16, -1), axis=1) < 1e-4)
    assert ratio.min() >= 0.7 - 1e-5 and ratio.max() <= 1.3 + 1e-5
    # Contrast keeps the mean gray level (no clipping at this strength).
    out = _augment(AugmentConfig(color_jitter=(0.0, 0.2, 0.0, 0.0)), images)
    weights = np.array([0.2989, 0.587, 0.114], "float32")
    np.testing.assert_allclose(
        (out * weights).sum(-1).mean((1, 2)), (images * weights).sum(-1).mean((1, 2)), rtol=1e-4
    )
    # Hue moves colours of a coloured image.
    out = _augment(AugmentConfig(color_jitter=(0.0, 0.0, 0.0, 0.5)), images)
    assert np.abs(out - images).mean() > 5


def test_random_erasing_paints_one_mean_coloured_rectangle():
    images = np.full((64, 40, 30, 3), 250.0, "float32")
    out = _augment(AugmentConfig(random_erasing=1.0), images)
    mean = np.array([123.675, 116.28, 103.53], "float32")
    erased_fractions = []
    for o in out:
        mask = np.all(np.isclose(o, mean), axis=-1)
        assert np.all((mask[..., None] & np.isclose(o, mean)) | (~mask[..., None] & (o == 250.0)))
        rows, cols = np.nonzero(mask)
        assert rows.size > 0
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == rows.size  # one solid rectangle
        erased_fractions.append(rows.size / (40 * 30))
    assert min(erased_fractions) > 0.01 and max(erased_fractions) < 0.36
    np.testing.assert_array_equal(_augment(AugmentConfig(random_erasing=0.0), images), images)
    some = _augment(AugmentConfig(random_erasing=0.5), images)
    assert 0.25 < np.mean(np.any(some != 250.0, axis=(1, 2, 3))) < 0.75


# ----------------------------------------------------------------------------- fused, deterministic, graph


@pytest.mark.isa_sensitive  # XLA's CPU code generation follows the instruction set
def test_several_geometric_transforms_resample_once():
    many = AugmentConfig(
        rotation_range=20,
        width_shift_range=0.1,
        height_shift_range=0.1,
        shear_range=5,
        zoom_range=0.2,
        horizontal_flip=True,
        vertical_flip=True,
        random_resized_crop_scale=(0.6, 1.0),
        brightness_range=(0.8, 1.2),
        color_jitter=(0.2, 0.2, 0.2, 0.05),
        random_erasing=0.5,
    )
    assert _projective_ops(many) == 1
    assert _projective_ops(PRESETS["aggressive"]) == 1
    assert _projective_ops(AugmentConfig(horizontal_flip=True, vertical_flip=True)) == 0  # exact reversals
    assert _projective_ops(AugmentConfig(rotation_range=10, interpolation="nearest")) == 1


# One "on" value per AugmentConfig field that can switch a transform on; the rest only tune one.
_ON_VALUES = {
    "rotation_range": 10.0, "width_shift_range": 0.1, "height_shift_range": (1.0, 2.0), "shear_range": 5.0,
    "zoom_range": 0.2, "horizontal_flip": True, "vertical_flip": True,
    "random_resized_crop_scale": (0.5, 1.0), "brightness_range": (0.8, 1.2), "channel_shift_range": 10.0,
    "color_jitter": (0.2, 0.0, 0.0, 0.0), "random_erasing": 0.5,
}
_TUNING_FIELDS = {"fill_mode", "cval", "rescale", "random_resized_crop_ratio", "interpolation"}


def test_geometry_table_and_config_flags_agree():
    names = {f.name for f in dataclasses.fields(AugmentConfig)}
    assert names == set(_ON_VALUES) | _TUNING_FIELDS, "classify the new AugmentConfig field in this test"
    singles = [AugmentConfig(**{name: value}) for name, value in _ON_VALUES.items()]
    for config in singles + list(PRESETS.values()):
        active = [op for op in augment_ops.GEOMETRY_OPS if op.active(config)]
        # has_geometry decides feature caching elsewhere: a row it does not know of would be cached away.
        assert config.has_geometry == bool(active), config
        assert config.has_affine == any(op.exact is None for op in active), config


def test_a_geometry_row_added_to_the_table_is_composed_into_the_output(monkeypatch):
    def two_pixels_left(config, seed, height, width, batch):  # output x reads input x + 2
        return stack_matrices([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], batch)

    row = augment_ops.GeometryOp("two_pixels_left", lambda config: True, two_pixels_left)
    images = _smooth(12, 10, batch=8)
    config = AugmentConfig(horizontal_flip=True)
    flipped = _augment(config, images)
    monkeypatch.setattr(augment_ops, "GEOMETRY_OPS", (*augment_ops.GEOMETRY_OPS, row))
    columns = np.minimum(np.arange(10) + 2, 9)  # 2 pixels left, the edge column repeated ("nearest")
    # The new row is last, so flip @ shift: every image, flipped or kept, then moves.
    np.testing.assert_allclose(_augment(config, images), flipped[:, :, columns], atol=1e-3)
    np.testing.assert_allclose(_augment(AugmentConfig(), images), images[:, :, columns], atol=1e-3)


def test_same_seed_same_output_different_seed_different_output():
    images = _smooth(24, 20, batch=6)
    augment = build_augmenter(PRESETS["aggressive"])
    first = augment(images, SEED).numpy()
    np.testing.assert_array_equal(first, augment(images, SEED).numpy())
    # Graph mode draws the same numbers; grappler may reorder float arithmetic in the last bit.
    np.testing.assert_allclose(first, tf.function(augment)(images, SEED).numpy(), atol=1e-3)
    np.testing.assert_array_equal(first, augment(images, tf.constant([7, 11], tf.int32)).numpy())
    other = augment(images, tf.constant([7, 12], tf.int64)).numpy()
    assert np.abs(first - other).mean() > 1
    assert first.dtype == np.float32 and first.shape == images.shape
    assert first.min() >= 0.0 and first.max() <= 255.0
    # Images in one batch get different draws.
    assert np.abs(first[0] - first[1]).mean() > 1


@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(rotation_range=30),
        AugmentConfig(width_shift_range=0.2),
        AugmentConfig(height_shift_range=0.2),
        AugmentConfig(shear_range=20),
        AugmentConfig(zoom_range=0.3),
        AugmentConfig(horizontal_flip=True),
        AugmentConfig(random_resized_crop_scale=(0.3, 0.9)),
        AugmentConfig(brightness_range=(0.5, 1.5)),
        AugmentConfig(channel_shift_range=50),
        AugmentConfig(color_jitter=(0.4, 0.4, 0.4, 0.1)),
        AugmentConfig(random_erasing=0.9),
    ],
    ids=lambda c: next(f"{k}" for k, v in vars(c).items() if v != getattr(AugmentConfig(), k)),
)
def test_every_knob_draws_from_the_seed(config):
    images = _smooth(20, 16, batch=8)
    augment = build_augmenter(config)
    first = augment(images, SEED).numpy()
    np.testing.assert_array_equal(first, augment(images, SEED).numpy())
    others = [augment(images, tf.constant([s, 3], tf.int64)).numpy() for s in range(3)]
    assert all(np.abs(first - other).max() > 1 for other in others)


def test_single_image_and_uint8_input():
    image = _smooth(16, 12)[0]
    augment = build_augmenter(AugmentConfig(rotation_range=10, horizontal_flip=True))
    out = augment(image, SEED)
    assert out.shape == image.shape and out.dtype == tf.float32
    out8 = augment(tf.constant(image.astype("uint8")), SEED)
    assert out8.dtype == tf.float32 and out8.shape == image.shape


def test_runs_inside_tf_data_on_batches_including_a_partial_one():
    images = _smooth(18, 14, batch=10)
    augment = build_augmenter(
        AugmentConfig.from_dict({k: v for k, v in REFERENCE_GENERATOR_ARGS.items() if k != "rescale"})
    )
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(4).map(lambda x: augment(x, SEED))
    batches = [b.numpy() for b in dataset]
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    assert all(b.shape[1:] == (18, 14, 3) and b.dtype == np.float32 for b in batches)
    assert dataset.element_spec.shape.as_list() == [None, 18, 14, 3]
    np.testing.assert_array_equal(batches[0], augment(images[:4], SEED).numpy())  # same as eager


# ----------------------------------------------------------------------------- config, presets, from_dict


def test_presets():
    assert set(PRESETS) == {"none", "moderate", "aggressive"}
    assert AugmentConfig.preset("none").is_identity
    moderate = AugmentConfig.preset("moderate")
    assert moderate.random_resized_crop_scale == (0.7, 1.0)
    assert moderate.horizontal_flip and not moderate.vertical_flip
    assert moderate.color_jitter == pytest.approx((0.3, 0.3, 0.2, 0.1))
    assert moderate.rotation_range == 10 and moderate.random_erasing == pytest.approx(0.1)
    aggressive = AugmentConfig.preset("aggressive")
    assert aggressive.random_resized_crop_scale[0] < moderate.random_resized_crop_scale[0]
    assert aggressive.rotation_range > moderate.rotation_range and aggressive.shear_range > 0
    assert aggressive.random_erasing > moderate.random_erasing
    assert moderate.has_geometry and aggressive.has_geometry and not moderate.is_identity


def test_unknown_preset_lists_valid_names_and_echoes_the_value():
    with pytest.raises(ValueError) as error:
        AugmentConfig.preset("strong")
    message = str(error.value)
    assert "'strong'" in message and all(repr(name) in message for name in ("none", "moderate", "aggressive"))


def test_from_dict_accepts_a_pasted_reference_dict_and_ignores_rescale():
    with pytest.warns(RescaleIgnoredWarning, match="NOT applied"):
        config = AugmentConfig.from_dict(REFERENCE_GENERATOR_ARGS)
    assert (
        config.rotation_range == 15
        and config.width_shift_range == 0.1
        and config.zoom_bounds == pytest.approx((0.8, 1.2))
    )
    assert config.has_geometry and config.rescale == pytest.approx(1 / 255)
    out = _augment(config, _smooth(20, 16, batch=2))
    assert out.max() > 100  # still 0..255: rescale was not applied
    with pytest.warns(RescaleIgnoredWarning):
        only_rescale = AugmentConfig(rescale=1.0 / 255)
    images = _smooth(12, 10)
    np.testing.assert_array_equal(_augment(only_rescale, images), images)
    assert only_rescale.is_identity


def test_rescale_of_one_or_none_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AugmentConfig(rescale=1.0)
        AugmentConfig.from_dict({"rotation_range": 5, "rescale": None})


def test_from_dict_unknown_key_is_named_with_valid_keys_listed():
    with pytest.raises(ValueError) as error:
        AugmentConfig.from_dict({"rotation_range": 10, "rotaton_range": 5, "colour": 1})
    message = str(error.value)
    assert "'rotaton_range'" in message and "'colour'" in message
    assert "did you mean 'rotation_range'" in message
    assert "width_shift_range" in message and "brightness_range" in message  # valid keys listed


@pytest.mark.parametrize(
    "key, value, hint",
    [
        ("featurewise_center", True, "inside the model"),
        ("samplewise_std_normalization", True, "inside the model"),
        ("zca_whitening", True, "ZCA"),
        ("preprocessing_function", lambda x: x, "tf.data map"),
        ("validation_split", 0.2, "split the data"),
        ("data_format", "channels_first", "channels-last"),
        ("interpolation_order", 3, "only 0 (nearest) and 1 (bilinear)"),
    ],
)
def test_from_dict_legacy_keys_without_a_counterpart_explain_what_to_do(key, value, hint):
    with pytest.raises(ValueError, match="Unsupported") as error:
        AugmentConfig.from_dict({"horizontal_flip": True, key: value})
    assert key in str(error.value) and hint in str(error.value)


def test_from_dict_legacy_keys_at_harmless_defaults_are_accepted():
    legacy_defaults = dict(
        featurewise_center=False,
        samplewise_center=False,
        featurewise_std_normalization=False,
        samplewise_std_normalization=False,
        zca_whitening=False,
        zca_epsilon=1e-6,
        preprocessing_function=None,
        data_format=None,
        validation_split=0.0,
        interpolation_order=1,
        dtype=None,
        horizontal_flip=True,
    )
    config = AugmentConfig.from_dict(legacy_defaults)
    assert config.horizontal_flip and config.interpolation == "bilinear"
    assert AugmentConfig.from_dict({"interpolation_order": 0}).interpolation == "nearest"
    with pytest.warns(UserWarning, match="float32"):
        AugmentConfig.from_dict({"dtype": "float16"})


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(fill_mode="mirror"),
        dict(zoom_range=1.5),
        dict(zoom_range=(1.2, 0.8)),
        dict(rotation_range=-5),
        dict(color_jitter=(0.1, 0.1, 0.1, 0.7)),
        dict(random_erasing=1.5),
        dict(brightness_range=(0.5,)),
        dict(random_resized_crop_scale=(0.5, 1.2)),
        dict(width_shift_range="0.1"),
        dict(interpolation="bicubic"),
    ],
)
def test_invalid_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)


def test_geometry_and_identity_flags():
    assert AugmentConfig(brightness_range=(0.8, 1.2)).has_geometry is False
    assert AugmentConfig(brightness_range=(0.8, 1.2)).is_identity is False
    assert AugmentConfig(horizontal_flip=True).has_geometry
    assert AugmentConfig(zoom_range=(1.0, 1.0)).is_identity
    assert AugmentConfig(width_shift_range=[0.0]).is_identity
    assert AugmentConfig(random_resized_crop_scale=(0.8, 1.0)).has_geometry
    assert AugmentConfig(color_jitter=(0.0, 0.0, 0.0, 0.0)).is_identity


# ----------------------------------------------------------------------------- against tf_keras itself


# tf_keras calls scipy.ndimage.interpolation, which SciPy deprecates: not our warning to fix.
LEGACY_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def legacy():
    image = pytest.importorskip(
        "tf_keras.preprocessing.image",
        reason="tf_keras (the legacy ImageDataGenerator, in requirements-dev.txt) is not installed",
    )
    return image


@pytest.mark.parametrize(
    "params",
    [
        {"theta": 20},
        {"tx": 3, "ty": -2},
        {"shear": 15},
        {"zx": 0.8, "zy": 1.2},
        {"theta": 20, "tx": 3, "ty": -2, "shear": 10, "zx": 0.9, "zy": 1.1, "flip_horizontal": True},
    ],
)
@pytest.mark.isa_sensitive  # XLA's CPU code generation follows the instruction set
@pytest.mark.parametrize("fill_mode", ["nearest", "reflect"])
@LEGACY_WARNINGS
def test_matches_legacy_apply_transform(legacy, params, fill_mode):
    # Square image: tf_keras pivots at (col=H/2, row=W/2), which only agrees with the centre when H == W.
    image = _smooth(40, 40)[0]
    expected = legacy.ImageDataGenerator(fill_mode=fill_mode).apply_transform(image.copy(), params)
    ours = apply_affine(
        image[None],
        theta=params.get("theta", 0.0),
        shift_x=params.get("tx", 0.0),
        shift_y=params.get("ty", 0.0),
        shear=params.get("shear", 0.0),
        zoom_x=params.get("zx", 1.0),
        zoom_y=params.get("zy", 1.0),
        flip_horizontal=params.get("flip_horizontal", False),
        fill_mode=fill_mode,
    )[0].numpy()
    # scipy's order-1 spline is bilinear interpolation: same numbers up to float32 rounding.
    assert np.abs(ours - expected).mean() < 0.01
    assert np.abs(ours - expected).max() < 0.5


@LEGACY_WARNINGS
def test_matches_legacy_flip_brightness_and_channel_shift(legacy):
    image = np.round(_smooth(20, 20)[0])
    generator = legacy.ImageDataGenerator()
    np.testing.assert_array_equal(
        apply_affine(image[None], flip_horizontal=True)[0].numpy(),
        generator.apply_transform(image.copy(), {"flip_horizontal": True}),
    )
    # Legacy brightness goes through an 8-bit PIL image: equal up to its rounding.
    ours = _augment(AugmentConfig(brightness_range=(0.5, 0.5)), image[None])[0]
    assert np.abs(ours - legacy.apply_brightness_shift(image.copy(), 0.5, scale=False)).max() <= 1.0
    # Channel shift: recover our draw, replay it through legacy.
    ours = _augment(AugmentConfig(channel_shift_range=50.0), image[None])[0]
    middle = (image > image.min() + 50) & (image < image.max() - 50)
    intensity = float(np.median((ours - image)[middle]))
    np.testing.assert_allclose(
        ours, legacy.apply_channel_shift(image.copy(), intensity, channel_axis=2), atol=1e-3
    )
