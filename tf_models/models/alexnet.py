"""AlexNet (Krizhevsky et al., 2012) with the ``keras.applications`` builder signature.

Keras does not ship AlexNet, so it is written here (plus a BatchNorm variant, ``alexnet_bn``): 5 convolutional layers (96-256-384-384-256 filters, 11x11/4 then 5x5 and 3x3
kernels, 3x3/2 max-pooling after conv1, conv2 and conv5) and 3 dense layers (4096-4096-classes).
The original Local Response Normalisation is left out (it was dropped by later work as it adds
little); ``batch_norm=True`` puts BatchNormalization after every convolution and hidden dense
layer, which trains far more easily from scratch. No ImageNet weights are published for Keras,
so ``weights`` is ``None`` or a local weights file.
"""

from __future__ import annotations

import numpy as np
import keras
from keras import layers

DEFAULT_SIZE = 227
MIN_SIZE = 67  # smallest input for which pool5 is still at least 1x1

# (filters, kernel, stride, pool after?) for conv1..conv5
_CONV_LAYOUT = (
    (96, 11, 4, True),
    (256, 5, 1, True),
    (384, 3, 1, False),
    (384, 3, 1, False),
    (256, 3, 1, True),
)

_IMAGENET_RGB_MEAN = np.array([0.485, 0.456, 0.406], dtype="float32")
_IMAGENET_RGB_STD = np.array([0.229, 0.224, 0.225], dtype="float32")


def preprocess_input(x, data_format: str | None = None):
    """AlexNet's own preprocessing: RGB 0..255 -> 0..1, minus the ImageNet mean, over its std.

    This is the convention of torchvision's AlexNet (the usual source of pretrained AlexNet
    weights today). Channels-last only. Returns a new float32 array; the input is not modified.
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"AlexNet preprocessing is channels-last only. Received: data_format={data_format!r}")
    x = np.asarray(x, dtype="float32") / 255.0
    return (x - _IMAGENET_RGB_MEAN) / _IMAGENET_RGB_STD


def _conv_block(x, filters: int, kernel: int, stride: int, batch_norm: bool, name: str):
    padding = "valid" if stride > 1 else "same"
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=not batch_norm, name=name)(x)
    if batch_norm:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def AlexNet(
    include_top: bool = True,
    weights: str | None = None,
    input_tensor=None,
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    name: str = "alexnet",
    batch_norm: bool = False,
) -> keras.Model:
    """Builds AlexNet; arguments mean what they mean for ``keras.applications.VGG16``.

    ``batch_norm`` selects the BatchNorm variant. ``weights`` is ``None`` or a path to a weights
    file saved from this architecture.
    """
    if weights == "imagenet":
        raise ValueError(
            "There are no ImageNet weights for AlexNet in Keras; use weights=None (train from "
            f"scratch) or a path to a weights file. Received: weights={weights!r}"
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    if input_shape is None:
        input_shape = (DEFAULT_SIZE, DEFAULT_SIZE, 3)
    if min(input_shape[:2]) < MIN_SIZE:
        raise ValueError(
            f"AlexNet needs inputs of at least {MIN_SIZE}x{MIN_SIZE}. Received: input_shape={input_shape}"
        )
    if input_tensor is None:
        img_input = layers.Input(shape=input_shape)
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = layers.Input(tensor=input_tensor, shape=input_shape)
    else:
        img_input = input_tensor

    x = img_input
    for index, (filters, kernel, stride, pool) in enumerate(_CONV_LAYOUT, start=1):
        x = _conv_block(x, filters, kernel, stride, batch_norm, name=f"conv{index}")
        if pool:
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{index}")(x)

    if include_top:
        x = layers.Flatten(name="flatten")(x)
        for index in (6, 7):
            x = layers.Dense(4096, use_bias=not batch_norm, name=f"fc{index}")(x)
            if batch_norm:
                x = layers.BatchNormalization(name=f"fc{index}_bn")(x)
            x = layers.Activation("relu", name=f"fc{index}_relu")(x)
            x = layers.Dropout(0.5, name=f"drop{index}")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model


def AlexNetBN(**kwargs) -> keras.Model:
    """The BatchNorm variant of :func:`AlexNet` (same arguments)."""
    kwargs.setdefault("name", "alexnet_bn")
    return AlexNet(batch_norm=True, **kwargs)
