"""Models: the backbone registry, AlexNet, preprocessing layers, the classifier head, losses.

Importing the package registers the custom layers and losses saved ``.keras`` files name.
"""

from tf_models.models import losses, preprocessing  # noqa: F401  registration on import
