"""Pasted ``ImageDataGenerator(...)`` keyword arguments -> :class:`~tf_models.data.augment.config.AugmentConfig` ones."""

from __future__ import annotations

import difflib
import warnings
from typing import Any

from tf_models.data.augment.config import _user_stacklevel

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
    "validation_split": ((0, 0.0, None), "split the data before building the pipeline (tf_models.data.pipeline)"),
    "data_format": ((None, "channels_last"), "the pipeline is channels-last only"),
}
_LEGACY_DTYPES = (None, "float32")  # anything else is ignored with a warning: images stay float32
_LEGACY_ORDERS = {0: "nearest", 1: "bilinear"}  # interpolation_order -> interpolation




def config_kwargs(values: dict[str, Any], own: set[str]) -> dict[str, Any]:
    """AugmentConfig keyword arguments from legacy ones (``own``: AugmentConfig's field names).

    Legacy arguments with no counterpart are dropped when they hold their harmless default
    (``featurewise_center=False``, ``validation_split=0``, ...) and are an error otherwise, with
    what to do instead. Unknown keys are an error naming them and listing the valid ones.
    """
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
                    stacklevel=_user_stacklevel(),
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
    return kwargs
