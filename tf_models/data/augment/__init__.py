"""Training-time image augmentation in TensorFlow ops: the replacement for ``ImageDataGenerator``.

Keras 3 removed ``ImageDataGenerator``. :class:`AugmentConfig` takes the same keyword arguments
with the same meaning (so an old notebook's settings paste in through
:meth:`AugmentConfig.from_dict <tf_models.data.augment.config.AugmentConfig.from_dict>`), plus the torchvision-style extras the presets use, and
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
  input, and rescaling in the pipeline as well would normalise twice.

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

The package: ``config`` (AugmentConfig, presets), ``legacy`` (ImageDataGenerator keyword
arguments), ``geometry`` (matrices and resampling), ``ops`` (random draws, the geometric and pixel
op tables, :func:`build_augmenter`). Adding an op is a config field (counted in ``has_geometry`` or
``has_photometric``), its random streams appended to ``ops.STREAMS``, and one row of
``ops.GEOMETRY_OPS`` (a sampler of per-image output->input matrices) or ``ops.PIXEL_OPS``.
"""

from tf_models.data.augment.config import (
    FILL_MODES,
    INTERPOLATIONS,
    PRESETS,
    REFERENCE_GENERATOR_ARGS,
    AugmentConfig,
    RescaleIgnoredWarning,
)
from tf_models.data.augment.geometry import apply_affine, bilinear_warp
from tf_models.data.augment.ops import build_augmenter

__all__ = [
    "FILL_MODES",
    "INTERPOLATIONS",
    "PRESETS",
    "REFERENCE_GENERATOR_ARGS",
    "AugmentConfig",
    "RescaleIgnoredWarning",
    "apply_affine",
    "bilinear_warp",
    "build_augmenter",
]
