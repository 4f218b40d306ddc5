"""Losses saved inside run models; imported by ``tf_models.models`` (and so by ``load_run_model``) so ``load_model`` finds them."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tf_models")
class SparseCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy with label smoothing (Keras's sparse loss has none)."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, name: str = "sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), self.num_classes)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "label_smoothing": self.label_smoothing}
