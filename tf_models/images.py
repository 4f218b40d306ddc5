"""Reading image files safely: every format users have, and a reason instead of a crash.

Phone photos (HEIC, EXIF-rotated JPEG), scans (16-bit PNG, grayscale PGM), screenshots (RGBA,
palette) all come out as upright 8-bit RGB. Anything unreadable raises :class:`ImageReadError`
with a short reason the data report shows next to the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF from iPhones; optional at import so a missing wheel only disables HEIC.
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - pillow-heif is in requirements.txt
    HEIF_SUPPORTED = False

# Lower-case; matched case-insensitively (".JPG", ".Jpeg" are common from cameras).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".bmp", ".pgm", ".ppm", ".tif", ".tiff"})
# Formats tf.io.decode_image reads directly as 8-bit RGB; others are converted once and cached.
TF_DECODABLE_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF", "WEBP"})

# Decompression-bomb guard: 20000x20000 is 400 MP; a real phone photo is under 50 MP.
MAX_PIXELS = 80_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageReadError(ValueError):
    """A file that cannot be used as an image; ``reason`` is short and shown in reports."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_path(path: str | Path) -> bool:
    """True for a file name with an image extension (any case). System files are never images."""
    name = Path(path).name
    if name.startswith(".") or name.lower() in {"thumbs.db", "desktop.ini"}:
        return False
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            if image.width * image.height > MAX_PIXELS:
                raise ImageReadError(path, f"image too large ({image.width}x{image.height} pixels, limit {MAX_PIXELS:,})")
            return image
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(path, f"decompression bomb refused ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageReadError(path, "not an image (unrecognised format)") from err
    except OSError as err:
        raise ImageReadError(path, f"unreadable ({err})") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: alpha composited on white, 16-bit scaled, palette expanded."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the real range to 0..255 instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        array = ((array - lo) / (hi - lo or 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: str | Path) -> np.ndarray:
    """Reads ``path`` as upright uint8 RGB (H, W, 3). Raises ImageReadError with a reason."""
    path = Path(path)
    image = _open(path)
    try:
        image.load()  # full decode: catches truncated files here, not mid-training
        image = ImageOps.exif_transpose(image)
        return np.asarray(to_rgb(image), dtype=np.uint8)
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageReadError(path, f"corrupt or truncated ({err})") from err


def check_image(path: str | Path) -> tuple[bool, Image.Image]:
    """Fully decodes ``path``; returns (tf_decodable_as_is, the decoded image). Raises ImageReadError.

    ``tf_decodable_as_is`` is False when tf.io.decode_image would get it wrong (HEIC, PGM, 16-bit,
    an EXIF rotation TF ignores, an alpha channel): the caller then converts the file once. The
    decoded image is returned so callers (hashing) need not decode the file a second time.
    """
    path = Path(path)
    image = _open(path)
    try:
        fmt = image.format or "?"
        orientation = image.getexif().get(0x0112, 1)
        mode = image.mode
        image.load()
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageReadError(path, f"corrupt or truncated ({err})") from err
    as_is = fmt in TF_DECODABLE_FORMATS and orientation == 1 and mode in ("RGB", "L")
    return as_is, image


def resize_images(images: Any, image_size: tuple[int, int]) -> Any:
    """uint8/float images (one, or a batch) -> float32 0..255 at ``image_size``: THE resize of the suite.

    Training (:mod:`tf_models.data.pipeline`) and serving (:mod:`tf_models.serve.predictor`) both call it, so a face reaches the
    model exactly as in training. antialias: downscaling large photos without it aliases badly.
    Values are rounded to whole 8-bit levels, like the pixels of any image file: the training
    pipeline then carries (and caches) uint8, a quarter of float32's memory traffic and RAM.
    """
    import tensorflow as tf  # here, not at the top: reading files needs no TensorFlow

    resized = tf.image.resize(images, tf.constant(image_size, dtype=tf.int32), method="bilinear", antialias=True)
    return tf.round(tf.clip_by_value(resized, 0.0, 255.0))
