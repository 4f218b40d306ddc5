"""Five-point face alignment: exact geometry on synthetic images, upright faces on real photos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tf_models.faces.crop import FACE_TEMPLATE, CropSettings, align_face, crop_face, cut_face, similarity_transform

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CELEBA = DATA / "celeba" / "img_align_celeba"


def _gradient(height: int = 300, width: int = 300) -> np.ndarray:
    """R encodes x, G encodes y (both < 256 inside the middle): a pixel tells where it came from."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([np.clip(xs, 0, 255), np.clip(ys, 0, 255), np.full_like(xs, 128)], axis=-1).astype(np.uint8)


def _rotation(degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


def test_similarity_transform_recovers_rotation_scale_and_shift():
    source = np.random.default_rng(0).uniform(0, 100, (5, 2))
    target = 1.7 * source @ _rotation(20).T + [12.0, -3.0]
    np.testing.assert_allclose(similarity_transform(source, target), np.hstack([1.7 * _rotation(20), [[12.0], [-3.0]]]),
                               atol=1e-9)


def test_similarity_transform_never_mirrors():
    source = FACE_TEMPLATE * 100
    mirrored = source * [-1, 1]  # left and right swapped: no rotation makes this
    matrix = similarity_transform(source, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


@pytest.mark.parametrize(("scale", "ramp"), [(3.0, 1.0), (1.0, 1.0), (0.25, 0.2), (0.1, 0.1)])
def test_align_face_puts_the_keypoints_on_the_template(scale, ramp):
    # A face turned 25 degrees at `scale` crop pixels per image pixel, on a ramp (R = ramp * x,
    # G = ramp * y): around each template spot the crop holds the image around its keypoint.
    size = 120
    template_px = FACE_TEMPLATE * size
    keypoints = (template_px - size / 2) @ _rotation(25).T / scale + 150.0 / ramp
    side = int(300 / ramp)
    ys, xs = np.mgrid[0:side, 0:side]
    image = np.stack([xs * ramp, ys * ramp, np.full_like(xs, 128.0)], -1).astype(np.uint8)
    crop = align_face(image, keypoints, margin=0.0, size=(size, size)).astype(float)
    to_image = np.linalg.inv(np.vstack([similarity_transform(keypoints, template_px), [0, 0, 1]]))
    for tx, ty in template_px:
        rows, columns = np.mgrid[int(ty) - 2:int(ty) + 3, int(tx) - 2:int(tx) + 3]
        # Pixel n covers [n, n + 1) and holds n: a smooth resample of a ramp reads (position - 0.5) * ramp.
        centres = np.stack([columns + 0.5, rows + 0.5, np.ones_like(rows)], -1) @ to_image.T
        error = (crop[rows, columns, :2] - (centres[..., :2] - 0.5) * ramp).mean((0, 1))
        # PIL truncates to uint8 (-0.5 a level on average); half a crop pixel off moves this by >= 0.4.
        assert np.all(np.abs(error + 0.6) < 0.35), ((tx, ty), error)


def test_align_face_margin_frames_like_crop_face():
    # An upright face whose keypoints sit exactly on the template of its box: aligning gives the box crop.
    image = _gradient()
    box = (100, 90, 80, 80)
    keypoints = FACE_TEMPLATE * 80 + [100, 90]
    for margin in (0.0, 0.2):
        aligned = align_face(image, keypoints, margin=margin, size=(96, 96)).astype(int)[2:-2, 2:-2, :2]
        boxed = crop_face(image, box, margin=margin, size=(96, 96)).astype(int)[2:-2, 2:-2, :2]
        assert np.abs(aligned - boxed).max() <= 1  # a 1-pixel shift of the face would be 1 level everywhere


def test_align_face_pads_black_outside_the_image():
    image = np.full((200, 200, 3), 255, np.uint8)
    keypoints = FACE_TEMPLATE * 60 - [30, 30]  # the face's square runs from -30 to 30: half off the photo
    crop = align_face(image, keypoints, margin=0.0, size=(60, 60))
    assert crop[:26, :26].max() == 0 and crop[34:, 34:].min() == 255


@pytest.mark.parametrize("scale", [0.4, 0.3, 0.2, 0.08])
def test_big_faces_are_shrunk_without_aliasing(scale):
    # Sine stripes 2.7 image pixels apart are far finer than a crop pixel at these scales: a fair
    # shrink averages them to flat grey (as crop_face does); a warp that samples them aliases.
    size = 100
    side = int(size / scale) + 40
    xs = np.arange(side)
    stripes = np.round(127.5 + 127.5 * np.sin(2 * np.pi * xs / 2.7)).astype(np.uint8)
    image = np.repeat(np.repeat(stripes[None, :, None], side, 0), 3, 2)
    keypoints = FACE_TEMPLATE * (size / scale) + 20
    aligned = align_face(image, keypoints, margin=0.0, size=(size, size)).astype(float)
    boxed = crop_face(image, (20, 20, size / scale, size / scale), margin=0.0, size=(size, size)).astype(float)
    assert boxed.std() < 5
    assert aligned.std() < 8, aligned.std()  # a plain bicubic warp: 25 to 90


@pytest.mark.parametrize(("keypoints", "message"), [
    (np.zeros((4, 2)), "5 x 2 .* Received: keypoints="),
    (np.full((5, 2), np.nan), "5 x 2 .* Received: keypoints="),
    ({"left_eye": (1, 2)}, "5 x 2 .* Received: keypoints={'left_eye'"),
    (np.full((5, 2), 40.0), "one spot"),
    (FACE_TEMPLATE * 50 + 5000, "outside"),
])
def test_align_face_rejects_bad_keypoints(keypoints, message):
    with pytest.raises(ValueError, match=message):
        align_face(np.zeros((100, 100, 3), np.uint8), keypoints)


def test_cut_face_follows_the_crop_settings():
    image = _gradient()
    box, keypoints = (100, 90, 80, 80), (FACE_TEMPLATE * 80 + [100, 90]) @ _rotation(10).T
    boxed = crop_face(image, box, margin=0.2, size=(160, 160))
    assert CropSettings().align
    np.testing.assert_array_equal(cut_face(image, box, keypoints, CropSettings(align=False)), boxed)
    np.testing.assert_array_equal(cut_face(image, box, None, CropSettings()), boxed)  # no keypoints: photo kept whole
    np.testing.assert_array_equal(cut_face(image, box, keypoints, CropSettings()), align_face(image, keypoints))
    assert CropSettings().key() != CropSettings(align=False).key()  # crop caches never mix the two


def test_run_folders_written_before_alignment_read_back_unaligned(tmp_path):
    from dataclasses import asdict

    from tf_models.runs import read_crop_settings

    old = {k: v for k, v in asdict(CropSettings()).items() if k != "align"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(asdict(CropSettings())))
    assert read_crop_settings(tmp_path / "old.json") == CropSettings(align=False)
    assert read_crop_settings(tmp_path / "new.json") == CropSettings()


def _eye_angle(face) -> float:
    (lx, ly), (rx, ry) = face.keypoints["left_eye"], face.keypoints["right_eye"]
    return math.degrees(math.atan2(ry - ly, rx - lx))


@pytest.mark.parametrize("tilt", [0, 30, -20])
def test_real_faces_come_out_upright_at_the_template(tilt):
    from tf_models.faces.detector import get_face_detector

    if not CELEBA.is_dir():
        pytest.skip(f"real data not available: {CELEBA} is missing (expected ../shared/data beside the repo)")
    path = sorted(CELEBA.glob("*.jpg"))[0]
    photo = Image.open(path).convert("RGB")
    photo = np.asarray(photo.resize((photo.width * 2, photo.height * 2)).rotate(tilt, expand=True))
    detector = get_face_detector()
    (face,) = detector.detect(photo)
    assert abs(_eye_angle(face) + tilt) < 8  # PIL turns counter-clockwise: the eyes tilt by -tilt
    crop = cut_face(photo, face.box, face.landmarks, CropSettings())
    (again,) = detector.detect(crop)
    assert abs(_eye_angle(again)) < 4
    template = (FACE_TEMPLATE + 0.2) / 1.4 * 160
    assert np.abs(again.landmarks - template).max() < 8  # pixels of 160
