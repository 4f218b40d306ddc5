"""Identity: a gallery of face embeddings (enrol, match, calibrate) and open-set evaluation."""
