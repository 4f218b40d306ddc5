"""Faces: the MTCNN detector, the framing that turns a face box into a model input, and the maths that
compares face embeddings (``verification``)."""
