"""Data: images on disk -> checked, split tables (CelebA, folder per person) -> tf.data batches."""
