"""Embeddings of image files, and galleries built from a dataset's faces.

The embedder is the identity classifier (its penultimate layer, :func:`~tf_models.models.classifier.with_embedding`),
a face embedder (:func:`~tf_models.models.face_embedder.build_face_embedder`, e.g. the shipped ``faces`` weights)
or a serving runtime (images -> (probabilities, embeddings)): the app enrols with the runtime it
recognises with, so int8 and float32 embeddings are never compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from tf_models.identity.calibration import Calibration, calibrate_gallery
from tf_models.identity.gallery import DEFAULT_THRESHOLD, IdentityGallery

if TYPE_CHECKING:  # keras/TensorFlow load only when embeddings are computed
    import keras

    from tf_models.data.tables import ImageTable

# A serving runtime of tf_models.serve.runtimes: float32 images N x H x W x 3 -> (probabilities, embeddings).
Embedder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def embed_images(model: keras.Model | Embedder, paths: Sequence[str | Path],
                 image_size: Sequence[int] | None = None, batch_size: int = 32) -> np.ndarray:
    """L2-normalised embeddings (n, dim) float32 of image files (face crops), in order.

    ``model`` is the identity classifier (or its ``with_embedding`` version), or a serving runtime
    of :mod:`tf_models.serve.predictor` (images -> (probabilities, embeddings)): the app enrols with the
    runtime it recognises with, so int8 and float32 embeddings are never compared. ``image_size``
    defaults to the model's input size (required with a runtime). Images go through the training
    pipeline's decoding (``make_dataset(training=False)``), so they are resized exactly as in training.
    """
    import keras
    import tensorflow as tf

    from tf_models.data.pipeline import make_dataset
    from tf_models.models.classifier import inference_function, with_embedding
    from tf_models.models.face_embedder import is_face_embedder

    if isinstance(model, keras.Model) and is_face_embedder(model):  # images -> embedding only
        dim, size = int(model.output_shape[-1]), tuple(int(v) for v in (image_size or model.input_shape[1:3]))
        compiled_embedder = inference_function(model)

        def infer(images: tf.Tensor) -> np.ndarray:
            return compiled_embedder(images).numpy()
    elif isinstance(model, keras.Model):
        embedder = with_embedding(model)
        dim = int(embedder.output["embedding"].shape[-1])
        size = tuple(int(v) for v in (image_size or embedder.input_shape[1:3]))
        compiled = inference_function(embedder)

        def infer(images: tf.Tensor) -> np.ndarray:
            return compiled(images)["embedding"].numpy()
    else:
        if image_size is None:
            raise ValueError("Embedding with a serving runtime needs image_size (the model's input size). "
                             f"Received: model={model!r}, image_size=None")
        dim, size = 0, tuple(int(v) for v in image_size)

        def infer(images: tf.Tensor) -> np.ndarray:
            return model(images.numpy())[1]
    if not len(paths):
        return np.zeros((0, dim), np.float32)
    dataset = make_dataset(list(paths), [0] * len(paths), size, batch_size, training=False)
    batches = tqdm(dataset, total=-(-len(paths) // batch_size), desc="embedding faces", unit="batch",
                   disable=len(paths) < 1000, leave=False)
    return np.concatenate([infer(images) for images, _ in batches]).astype(np.float32)


def table_embeddings(model: keras.Model | Embedder, table: ImageTable,
                     splits: Iterable[str] = ("train", "val", "test"), batch_size: int = 32,
                     image_size: Sequence[int] | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """Embeds the rows of ``table`` in ``splits``: (embeddings, person names, split names), row-aligned."""
    frame = table.frame[table.frame["split"].isin(list(splits))]
    vectors = embed_images(model, frame["path"].tolist(), image_size, batch_size=batch_size)
    names = [table.class_names[k] for k in frame["label"].astype(int)]
    return vectors, names, frame["split"].tolist()


def gallery_from_embeddings(embeddings: np.ndarray, names: Sequence[str],
                            threshold: float = DEFAULT_THRESHOLD) -> IdentityGallery:
    """A gallery with every person in ``names`` enrolled from their rows of ``embeddings``."""
    embeddings = np.asarray(embeddings)
    if len(embeddings) != len(names):
        raise ValueError(f"names and embeddings differ in length: {len(names)} vs {len(embeddings)}")
    gallery = IdentityGallery(threshold)
    labels = np.asarray(names, dtype=object)
    for name in dict.fromkeys(names):  # first-seen order; the gallery sorts anyway
        gallery.enrol(name, embeddings[labels == name])
    return gallery


def build_gallery_from_table(model: keras.Model | Embedder, table: ImageTable, *, split: str = "train",
                             calibrate_split: str | None = "val", target_far: float = 0.01,
                             batch_size: int = 32, image_size: Sequence[int] | None = None,
                             ) -> tuple[IdentityGallery, Calibration | None]:
    """Enrols every person of ``table``'s ``split`` and calibrates the threshold on ``calibrate_split``.

    ``model``: the identity model or a serving runtime (then ``image_size`` too), see :func:`embed_images`.

    Returns (gallery, calibration); calibration is None when ``calibrate_split`` is None or empty
    (the gallery then keeps the placeholder threshold).
    """
    vectors, names, splits = table_embeddings(model, table, [split] + ([calibrate_split] if calibrate_split else []),
                                              batch_size, image_size)
    in_split = np.array([s == split for s in splits], dtype=bool)
    if not in_split.any():
        raise ValueError(f"The table has no images in split {split!r} to enrol. Received: split={split!r}")
    gallery = gallery_from_embeddings(vectors[in_split], [n for n, k in zip(names, in_split) if k])
    if calibrate_split is None or in_split.all():
        return gallery, None
    calibration = calibrate_gallery(gallery, vectors[~in_split], [n for n, k in zip(names, in_split) if not k],
                                    target_far)
    return gallery, calibration


def nearest_centroid_accuracy(model: keras.Model, table: ImageTable, *, enrol_splits: Sequence[str] = ("train", "val"),
                              test_split: str = "test", batch_size: int = 32) -> float:
    """Closed-set accuracy of the gallery's decision: test faces named by the nearest enrolled centroid.

    The app names people this way (threshold aside), so this is the identity accuracy it serves;
    it can differ a lot from the softmax's top-1 on few photos per person.
    """
    vectors, names, splits = table_embeddings(model, table, [*enrol_splits, test_split], batch_size)
    is_test = np.array([s == test_split for s in splits], dtype=bool)
    if not is_test.any() or is_test.all():
        raise ValueError(f"Need faces in both {list(enrol_splits)} and {test_split!r}. "
                         f"Received: splits={sorted(set(splits))}")
    gallery = gallery_from_embeddings(vectors[~is_test], [n for n, t in zip(names, is_test) if not t])
    matches = gallery.match(vectors[is_test])
    truth = [n for n, t in zip(names, is_test) if t]
    return float(np.mean([m.best_name == n for m, n in zip(matches, truth)]))
