"""Face detection and cropping: real photos from ../shared/data, synthetic images for geometry."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tf_models.faces import detector as faces
from tf_models.faces.detector import DetectedFace, FaceDetector, box_iou, crop_face, get_face_detector

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCENES = DATA / "scenes"
CELEBA = DATA / "celeba" / "img_align_celeba"

# mtcnn at full size finds exactly one face here; 1536x1152, so detection runs on a downscaled copy.
SINGLE_FACE_SCENE = "deepface_img2.jpg"
IOU_MATCH = 0.3


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (expected ../shared/data beside the repo)")
    return path


def _load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(_require(path)).convert("RGB"))


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return get_face_detector()


@pytest.fixture(scope="module")
def reference_mtcnn():
    """Stock mtcnn at its defaults, on full-size images: what our downscaled detection must match."""
    from mtcnn import MTCNN

    return MTCNN()


def _reference_boxes(reference_mtcnn, image: np.ndarray, min_confidence: float) -> list[tuple]:
    found = reference_mtcnn.detect_faces(image)
    return [tuple(f["box"]) for f in found if f["confidence"] >= min_confidence]


def _assert_inside(face: DetectedFace, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    x, y, w, h = face.box
    assert w > 0 and h > 0
    assert 0 <= x and 0 <= y and x + w <= width and y + h <= height, (face.box, image.shape)
    for name, (kx, ky) in face.keypoints.items():
        assert 0 <= kx < width and 0 <= ky < height, (name, kx, ky)


# --- detection on real photos ----------------------------------------------------------------


def test_single_face_scene(detector, reference_mtcnn):
    image = _load_rgb(SCENES / SINGLE_FACE_SCENE)
    assert len(_reference_boxes(reference_mtcnn, image, 0.0)) == 1  # the premise: one face, full size
    found = detector.detect(image)

    assert len(found) == 1
    face = found[0]
    assert isinstance(face, DetectedFace)
    assert face.confidence >= detector.min_confidence
    _assert_inside(face, image)
    assert set(face.keypoints) == set(faces.KEYPOINT_NAMES)
    # Eyes, nose and mouth of a frontal face lie inside its box: the keypoints were mapped too.
    x, y, w, h = face.box
    for kx, ky in face.keypoints.values():
        assert x <= kx <= x + w and y <= ky <= y + h
    assert face.keypoints["left_eye"][1] < face.keypoints["mouth_left"][1]
    # Boxes are in original pixels: a face in a 1536x1152 photo, not in the 640-px copy.
    assert w > 200 and x + w > 640

    crop = crop_face(image, face.box, size=(160, 160))
    assert crop.shape == (160, 160, 3) and crop.dtype == np.uint8


@pytest.mark.parametrize(
    ("scene", "expected"),
    [("deepface_couple.jpg", 2), ("deepface_selfie-many-people.jpg", None)],
)
def test_multi_face_scenes_match_full_size_mtcnn(detector, reference_mtcnn, scene, expected):
    image = _load_rgb(SCENES / scene)
    reference = _reference_boxes(reference_mtcnn, image, detector.min_confidence)
    found = detector.detect(image)

    if expected is not None:
        assert len(reference) == expected  # the data is what this test believes it is
        assert len(found) == expected
    else:
        assert len(reference) >= 3 and len(found) >= 3
    for ref in reference:
        best = max((box_iou(ref, f.box) for f in found), default=0.0)
        assert best >= IOU_MATCH, f"full-size face {ref} lost in {scene}: best IoU {best:.2f}"
    for face in found:
        _assert_inside(face, image)
    areas = [f.area for f in found]
    assert areas == sorted(areas, reverse=True)


def test_boxes_map_back_to_original_pixels(detector):
    # 400x300 runs at full size; its 3x copy (1200x900) is detected on a 640x480 copy and mapped.
    scene = Image.open(_require(SCENES / SINGLE_FACE_SCENE)).convert("RGB")
    small = scene.resize((400, 300), Image.Resampling.LANCZOS)
    big = small.resize((1200, 900), Image.Resampling.BICUBIC)

    (face_small,) = detector.detect(np.asarray(small))
    (face_big,) = detector.detect(np.asarray(big))

    tolerance = 0.08 * max(face_small.box[2:]) * 3  # MTCNN's box regression differs between sizes
    for s, b in zip(face_small.box, face_big.box):
        assert abs(3 * s - b) <= tolerance, (face_small.box, face_big.box)
    for name in faces.KEYPOINT_NAMES:
        for s, b in zip(face_small.keypoints[name], face_big.keypoints[name]):
            assert abs(3 * s - b) <= tolerance, (name, face_small.keypoints, face_big.keypoints)


def test_small_faces_in_a_large_photo(detector, reference_mtcnn):
    # The group photo shrunk to faces of ~22-60 px, on a 1280x960 canvas: detection runs on a
    # 640x480 copy where they are 11-30 px, near PNet's limit. (The min_face_size mapping itself
    # is checked exactly below, with a stand-in MTCNN: MTCNN's own limit is too soft to pin it.)
    group = Image.open(_require(SCENES / "deepface_selfie-many-people.jpg")).convert("RGB")
    canvas = Image.new("RGB", (1280, 960), (120, 120, 120))
    canvas.paste(group.resize((180, 181), Image.Resampling.LANCZOS), (500, 400))
    image = np.asarray(canvas)

    # 0.95, not 0.9: the half-hidden face top right scores 0.93-0.95 either way and flips with
    # the exact resampling; the clearly visible ones must all be there.
    reference = _reference_boxes(reference_mtcnn, image, 0.95)
    found = detector.detect(image)
    assert len(reference) >= 5
    for ref in reference:
        assert max((box_iou(ref, f.box) for f in found), default=0.0) >= IOU_MATCH, (ref, found)


def test_min_confidence_filters():
    image = _load_rgb(SCENES / "deepface_selfie-many-people.jpg")
    everything = get_face_detector(min_confidence=0.0).detect(image)
    assert len(everything) > len(get_face_detector().detect(image))  # low-scoring candidates exist
    for threshold in (0.1, 0.5, 0.9, 0.999):
        kept = get_face_detector(min_confidence=threshold).detect(image)
        # The threshold only filters: NMS lets a face be suppressed only by a higher-scoring one.
        assert [f.box for f in kept] == [f.box for f in everything if f.confidence >= threshold]


def test_large_min_face_size_still_detects(detector):
    # Stock mtcnn 1.0 returns no faces at all once min_face_size > ~24 px (its pyramid then
    # shrinks the image below PNet's 12 px window); our pyramid must not.
    image = _load_rgb(SCENES / SINGLE_FACE_SCENE)
    reference = detector.detect(image)[0].box
    for min_face_size in (40, 150):
        found = get_face_detector(min_face_size=min_face_size).detect(image)
        assert len(found) == 1 and box_iou(found[0].box, reference) > 0.7


def test_pyramid_longer_than_one_graph_call(detector):
    # A fine pyramid step on a full-size photo needs ~30 levels: two chunks of PNet calls, whose
    # outputs must stay aligned with their scales or the boxes land in the wrong place.
    image = _load_rgb(SCENES / SINGLE_FACE_SCENE)
    fine = FaceDetector(detect_max_side=2048, min_face_size=12, scale_factor=0.85)
    assert len(faces._pyramid_scales(min(image.shape[:2]), 12, 0.85)) > faces._PYRAMID_CHUNK
    found = fine.detect(image)
    assert len(found) == 1
    assert box_iou(found[0].box, detector.detect(image)[0].box) > 0.7


@pytest.mark.parametrize(
    ("min_side", "min_face_size", "scale_factor"),
    [(480, 12, 0.709), (1152, 20, 0.709), (178, 20, 0.5), (30, 25, 0.709)],
)
def test_pyramid_spans_min_face_to_whole_image(min_side, min_face_size, scale_factor):
    scales = faces._pyramid_scales(min_side, min_face_size, scale_factor)
    assert scales[0] == pytest.approx(12 / min_face_size)
    assert min_side * scales[-1] >= 12 > min_side * scales[-1] * scale_factor  # last level PNet can run
    assert all(b == pytest.approx(a * scale_factor) for a, b in zip(scales, scales[1:]))


@pytest.mark.parametrize(("pad", "scale_factor"), [(0.0, faces.DEFAULT_SCALE_FACTOR), (0.1, 0.6)])
def test_face_filling_the_frame_is_found(detector, pad, scale_factor):
    # Stock mtcnn 1.0's pyramid stops a level or two too early when min_face_size is 12 (as on
    # a downscaled copy): it finds nothing in either case. Ours goes down to 12 px.
    image = Image.open(_require(SCENES / SINGLE_FACE_SCENE)).convert("RGB")
    (face,) = detector.detect(np.asarray(image))
    x, y, w, h = face.box
    margin = int(pad * h)
    region = image.crop((x - margin, y - margin, x + w + margin, y + h + margin))
    tight = np.asarray(region.resize((round(1080 * region.width / region.height), 1080)))

    found = get_face_detector(scale_factor=scale_factor).detect(tight)
    assert len(found) == 1
    assert found[0].box[3] > 0.6 * min(tight.shape[:2])


def test_grayscale_input_is_accepted(detector):
    rgb = np.asarray(Image.open(_require(SCENES / SINGLE_FACE_SCENE)).convert("RGB"))
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    assert gray.ndim == 2

    found = detector.detect(gray)
    assert len(found) == 1
    assert box_iou(found[0].box, detector.detect(rgb)[0].box) > 0.7
    assert crop_face(gray, found[0].box).shape == (160, 160, 3)

    orl = np.asarray(Image.open(_require(DATA / "orl_faces" / "s1" / "1.pgm")))  # 92x112 grayscale
    assert orl.ndim == 2 and len(detector.detect(orl)) == 1


def test_celeba_aligned_faces(detector):
    files = sorted(_require(CELEBA).glob("*.jpg"))[:10]
    assert len(files) == 10
    hits = sum(bool(detector.detect(_load_rgb(f))) for f in files)
    assert hits >= 9, f"faces found in only {hits} of 10 CelebA images"


# --- detection without data --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["grey", "noise", "tiny"])
def test_no_face(detector, kind):
    rng = np.random.default_rng(0)
    image = {
        "grey": np.full((960, 1280, 3), 128, np.uint8),
        "noise": rng.integers(0, 256, (600, 800, 3), dtype=np.uint8),
        "tiny": np.full((8, 8, 3), 200, np.uint8),
    }[kind]
    assert detector.detect(image) == []


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((64, 64, 3), np.float32), "dtype"),
        (np.zeros((64, 64, 4), np.uint8), r"shape=\(64, 64, 4\)"),
        (np.zeros((2, 64, 64, 3), np.uint8), r"shape=\(2, 64, 64, 3\)"),
        ([[0, 1], [2, 3]], "numpy array"),
    ],
)
def test_detect_rejects_bad_images(detector, image, message):
    with pytest.raises(ValueError, match=message):
        detector.detect(image)


@pytest.mark.parametrize(
    "kwargs",
    [{"detect_max_side": 0}, {"min_face_size": 0}, {"min_confidence": 1.5}, {"scale_factor": 1.0}],
)
def test_detector_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        FaceDetector(**kwargs)


class _RecordingMTCNN:
    """Stands in for MTCNN: records what detect_faces gets, answers with fixed detections."""

    def __init__(self, answer: list[dict]) -> None:
        self.answer = answer
        self.calls: list[tuple[tuple, np.dtype, dict]] = []

    def detect_faces(self, image, **kwargs):
        self.calls.append((image.shape, image.dtype, kwargs))
        return self.answer


def _raw_face(box, confidence, keypoint=(10, 10)):
    return {"box": list(box), "confidence": confidence,
            "keypoints": {name: list(keypoint) for name in faces.KEYPOINT_NAMES}}


@pytest.mark.parametrize(
    ("shape", "min_face_size", "detected_shape", "detected_min_face"),
    [
        ((960, 1280, 3), 20, (480, 640, 3), 12.0),  # 20 px -> 10 px on the copy: clamped to PNet's 12
        ((960, 1280, 3), 100, (480, 640, 3), 50.0),  # mapped, not passed through
        ((3000, 4000, 3), 200, (480, 640, 3), 32.0),
        ((300, 400, 3), 20, (300, 400, 3), 20.0),  # small images are not resized
    ],
)
def test_detection_runs_on_downscaled_copy_with_mapped_min_face(monkeypatch, shape, min_face_size,
                                                                detected_shape, detected_min_face):
    fake = _RecordingMTCNN([])
    monkeypatch.setattr(faces, "_MTCNN", fake)
    FaceDetector(detect_max_side=640, min_face_size=min_face_size).detect(np.zeros(shape, np.uint8))
    ((seen_shape, seen_dtype, kwargs),) = fake.calls
    assert seen_shape == detected_shape
    assert seen_dtype == np.float32
    assert kwargs["min_face_size"] == pytest.approx(detected_min_face)


def test_boxes_and_keypoints_are_scaled_clamped_and_filtered(monkeypatch):
    fake = _RecordingMTCNN([
        _raw_face((100, 50, 40, 60), 0.95, keypoint=(120, 80)),  # plain: x2 in both axes
        _raw_face((600, 450, 80, 80), 0.99, keypoint=(700, 500)),  # runs past the bottom-right corner
        _raw_face((10, 10, 200, 200), 0.85),  # below min_confidence
        _raw_face((700, 10, 30, 30), 0.97),  # entirely right of the 640-px copy: degenerate
    ])
    monkeypatch.setattr(faces, "_MTCNN", fake)
    found = FaceDetector(detect_max_side=640, min_confidence=0.9).detect(np.zeros((960, 1280, 3), np.uint8))

    assert [f.box for f in found] == [(200, 100, 80, 120), (1200, 900, 80, 60)]  # largest first
    assert found[0].keypoints["nose"] == (240, 160)
    assert found[1].keypoints["nose"] == (1279, 959)  # clamped into the image
    assert found[0].confidence == pytest.approx(0.95) and isinstance(found[0].confidence, float)


# --- one MTCNN per process -------------------------------------------------------------------


def test_detectors_are_cached_and_share_one_mtcnn():
    default = get_face_detector()
    assert get_face_detector() is default
    assert get_face_detector(640, 20, 0.9) is default
    other = get_face_detector(detect_max_side=320, min_confidence=0.5)
    assert other is not default
    assert other.mtcnn is default.mtcnn
    assert FaceDetector(detect_max_side=1024).mtcnn is default.mtcnn


def test_mtcnn_is_built_once_under_concurrency(monkeypatch):
    builds = []

    def slow_build():
        builds.append(threading.get_ident())
        time.sleep(0.05)  # widen the race window: without the lock every thread would build
        return object()

    monkeypatch.setattr(faces, "_MTCNN", None)
    monkeypatch.setattr(faces, "_build_mtcnn", slow_build)
    results = []
    threads = [threading.Thread(target=lambda: results.append(faces._shared_mtcnn())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_concurrent_detection_matches_sequential(detector):
    names = (SINGLE_FACE_SCENE, "deepface_couple.jpg", "vader_obama.jpg")
    images = [_load_rgb(SCENES / name) for name in names]
    expected = [[f.box for f in detector.detect(image)] for image in images]
    results: dict[int, list] = {}

    def work(i: int) -> None:
        results[i] = [f.box for f in detector.detect(images[i % len(images)])]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(6)] == expected * 2


# --- crop_face -------------------------------------------------------------------------------


def _gradient(height: int = 200, width: int = 200) -> np.ndarray:
    """R encodes x, G encodes y: a crop's pixels tell where in the image they came from."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs, ys, (xs + ys) // 2], axis=-1).astype(np.uint8)


def test_crop_square_on_black_gives_exact_geometry():
    image = np.zeros((200, 200, 3), np.uint8)
    image[80:120, 80:120] = 255
    box = (80, 80, 40, 40)

    tight = crop_face(image, box, margin=0.0, size=(160, 160))
    assert tight.min() == 255  # the box fills the crop

    wide = crop_face(image, box, margin=0.5, size=(160, 160))  # side 80: box is the middle half
    # Edges at 40 and 120 px; the resampling filter blurs them by a few pixels only.
    assert wide[48:112, 48:112].min() == 255
    assert wide[:32].max() == 0 and wide[-32:].max() == 0
    assert wide[:, :32].max() == 0 and wide[:, -32:].max() == 0


def test_bigger_margin_contains_smaller_crop_scaled():
    image = _gradient()
    box = (70, 60, 50, 50)
    small = crop_face(image, box, margin=0.1, size=(120, 120)).astype(int)  # side 60
    big = crop_face(image, box, margin=0.4, size=(180, 180)).astype(int)  # side 90: 2 px per image px
    # The 60x60 image region of `small` sits in the middle of `big` at the same 2 px/px scale.
    inner = big[30:150, 30:150]
    assert np.abs(inner - small).mean() < 1.5
    assert big[:, :, 0].min() < small[:, :, 0].min() and big[:, :, 0].max() > small[:, :, 0].max()


def test_crop_is_square_around_box_centre_without_distortion():
    image = _gradient()
    crop = crop_face(image, (50, 50, 20, 40), margin=0.0, size=(40, 40))  # side 40 at centre (60, 70)
    assert abs(int(crop[20, 0, 0]) - 40) <= 1 and abs(int(crop[20, -1, 0]) - 79) <= 1  # x from 40 to 79
    assert abs(int(crop[0, 20, 1]) - 50) <= 1 and abs(int(crop[-1, 20, 1]) - 89) <= 1  # y from 50 to 89
    assert crop_face(image, (50, 50, 20, 40), size=(112, 96)).shape == (112, 96, 3)


def test_crop_pads_black_at_image_border():
    image = np.full((100, 100, 3), 255, np.uint8)
    crop = crop_face(image, (0, 0, 40, 40), margin=0.5, size=(80, 80))  # square -20..60: 1 px = 1 px
    assert crop.shape == (80, 80, 3) and crop.dtype == np.uint8
    assert crop[:20].max() == 0 and crop[:, :20].max() == 0  # outside the image: black
    assert crop[20:, 20:].min() == 255  # inside: image content, not shifted
    edge = crop_face(image, (90, 90, 10, 10), margin=0.5, size=(40, 40))  # square 85-105, past the corner
    assert edge.shape == (40, 40, 3)
    assert edge[-4:].max() == 0 and edge[:, -4:].max() == 0 and edge[:22, :22].min() == 255


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"margin": -0.1}, "margin"),
        ({"margin": float("nan")}, "margin"),
        ({"box": (10, 10, 0, 20)}, "width, height > 0"),
        ({"box": (10, 10, 20, -5)}, "width, height > 0"),
        ({"box": (10, 10, 20)}, "box"),
        ({"box": (500, 500, 20, 20)}, "outside"),
        ({"size": (0, 160)}, "size"),
        ({"size": (160,)}, "size"),
        ({"image": np.zeros((50, 50, 3), np.float64)}, "dtype"),
    ],
)
def test_crop_rejects_bad_arguments(kwargs, message):
    args = {"image": np.zeros((50, 50, 3), np.uint8), "box": (10, 10, 20, 20), **kwargs}
    with pytest.raises(ValueError, match=message):
        crop_face(**args)


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
