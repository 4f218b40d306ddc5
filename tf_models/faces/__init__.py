"""Faces: the MTCNN detector and the framing that turns a face box into a model input."""
