"""Backbone input preprocessing as a Keras layer, so every model takes raw RGB in 0..255.

Putting the backbone's own normalisation inside the model removes a whole class of bugs: the
data pipeline never rescales, so nobody can feed ``x / 255`` to a network trained on caffe-style
inputs, a mistake that silently wrecks a pretrained network.

The modes match ``keras.applications.imagenet_utils.preprocess_input`` operation for operation:

- ``caffe``: RGB -> BGR, then subtract the ImageNet BGR mean (VGG, ResNet).
- ``tf``: scale to -1..1 (Inception, MobileNet).
- ``torch``: scale to 0..1, subtract the ImageNet RGB mean, divide by its std (DenseNet, AlexNet).
- ``none``: pass-through, for a backbone that has to keep normalising inside itself (none of the
  registry's do: EfficientNetV2 and ConvNeXt are built without their own normalisation, ``torch`` here).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
_TORCH_RGB_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="tf_models")
class ImagePreprocessing(keras.layers.Layer):
    """Maps raw RGB images (0..255, channels last) to a backbone's expected input.

    Always computes in float32, also under a mixed-precision policy: subtracting a mean of ~120
    in float16 would throw away the low bits of every pixel.
    """

    def __init__(self, mode: str, **kwargs: Any) -> None:
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"Unknown preprocessing mode. Expected one of {PREPROCESSING_MODES}. "
                f"Received: mode={mode!r}"
            )
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.mode == "none":
            return x
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)  # RGB -> BGR
            return x - ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype="float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        x = x / 255.0
        x = x - ops.convert_to_tensor(_TORCH_RGB_MEAN, dtype="float32")
        return x / ops.convert_to_tensor(_TORCH_RGB_STD, dtype="float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"mode": self.mode})
        config.pop("dtype", None)  # always float32, set in __init__
        return config


@keras.saving.register_keras_serializable(package="tf_models")
class MirrorImage(keras.layers.Layer):
    """Flips images left-right (N x H x W x C): a fixed mirror, not a random augmentation."""

    def call(self, images):
        return ops.flip(images, axis=2)
