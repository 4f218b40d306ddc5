"""What the app shows for one photo: a row per face, the faces table, and the annotated image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

ANSWER_MAX_SIDE = 640  # the annotated answer image (longer side, pixels): see draw_faces
UNKNOWN = "Unknown"
UNCERTAIN = "uncertain"
# "identity match": the cosine similarity to the closest enrolled person next to the gallery's
# threshold, so a reader sees why a face is named or Unknown ("closest: Ana, 0.41 < 0.55", or
# "..., but face 2 is closer" when another face of the same photo took that person).
TABLE_COLUMNS = ["face", "gender", "gender probability", "identity", "identity match", "attendance"]


@dataclass(frozen=True)
class FaceResult:
    """One face of an analysed photo, as the app shows it."""

    index: int  # 1-based, largest face first
    box: tuple[int, int, int, int]
    gender: str  # class name, or UNCERTAIN below the minimum confidence
    gender_confidence: float
    identity: str  # person, or UNKNOWN
    identity_confidence: float  # cosine similarity to the nearest person's centroid, clipped to [0, 1]
    attendance: str = ""  # "marked present", "already present", or "" (not marked)
    closest: str | None = None  # the nearest enrolled person, named or not (None: empty gallery)
    threshold: float | None = None  # the gallery's cosine threshold the similarity was held against
    closer_face: int | None = None  # index of the face of this photo that got ``closest`` (closer to them)

    def identity_match(self) -> str:
        """The similarity next to the threshold, in words: "0.82 >= 0.55", "closest: Ana, 0.41 < 0.55", or
        "closest: Ana, 0.61 >= 0.55, but face 2 is closer" (one person, one face a photo)."""
        if self.closest is None:
            return "nobody enrolled"
        if self.threshold is None:
            return f"{self.identity_confidence:.2f}"
        relation = ">=" if self.identity_confidence >= self.threshold else "<"
        detail = f"{self.identity_confidence:.2f} {relation} {self.threshold:.2f}"
        if self.closer_face is not None:
            detail += f", but face {self.closer_face} is closer"
        return detail if self.identity == self.closest else f"closest: {self.closest}, {detail}"

    def row(self) -> list[Any]:
        return [self.index, self.gender, round(self.gender_confidence, 3), self.identity,
                self.identity_match(), self.attendance]


@dataclass
class Analysis:
    """What :meth:`FaceService.analyze` returns: the annotated photo, one row per face, and a message.

    ``error`` is True when nothing could be analysed (unreadable file, no face); ``message`` says
    why in words for the user.
    """

    image: Image.Image | None
    faces: list[FaceResult] = field(default_factory=list)
    message: str = ""
    error: bool = False

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([face.row() for face in self.faces], columns=TABLE_COLUMNS)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def draw_faces(pixels: np.ndarray, faces: Sequence[FaceResult], max_side: int = ANSWER_MAX_SIDE) -> Image.Image:
    """The photo, at most ``max_side`` pixels on its longer side, with a box and a "#, gender,
    identity" label per face (green: known, orange: Unknown).

    The answer is for looking at: the page shows it a few hundred pixels wide, so a phone photo at
    full resolution would only cost JPEG encoding and transfer on every request.
    """
    image = Image.fromarray(pixels)
    shrink = min(1.0, max_side / max(image.size))
    if shrink < 1.0:
        size = (max(1, round(image.width * shrink)), max(1, round(image.height * shrink)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)  # box-reduce first: fast
    draw = ImageDraw.Draw(image)
    scale = max(image.size) / 1000.0
    width, font = max(2, round(3 * scale)), _font(max(12, round(20 * scale)))
    for face in faces:
        x, y, w, h = (round(v * shrink) for v in face.box)
        colour = (40, 200, 80) if face.identity != UNKNOWN else (255, 150, 0)
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=width)
        text = f"{face.index} {face.gender} {face.gender_confidence:.2f} | {face.identity}"
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        top_y = y - (bottom - top) - 2 * width if y - (bottom - top) - 2 * width >= 0 else y + h
        draw.rectangle((x, top_y, x + (right - left) + 2 * width, top_y + (bottom - top) + 2 * width), fill=colour)
        draw.text((x + width, top_y + width - (top - y)), text, fill=(0, 0, 0), font=font)
    return image
