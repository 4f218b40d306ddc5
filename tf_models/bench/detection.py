"""The face detection benchmark (``scripts/bench_detection.py``): ours vs stock mtcnn at full size.

1. Latency on a 1280x960 photo (a real scene with one person, resized): ``MTCNN().detect_faces`` at
   its defaults on the full image vs ``get_face_detector().detect``; medians over ``repeats`` runs
   after warm-up, the two interleaved so background load hits both alike.
2. Parity on every scene photo: faces that full-size mtcnn finds (confidence >= the detector's
   min_confidence) but we do not (IoU < 0.3 with each of ours) are "lost"; faces we find that match
   none of those are "extra".
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from tf_models.benchmarking import machine_info
from tf_models.faces.detector import box_iou, get_face_detector

LATENCY_SCENE = "deepface_img2.jpg"  # 1536x1152 (4:3), one face: resizes to 1280x960 undistorted
LATENCY_SIZE = (1280, 960)  # width, height
IOU_MATCH = 0.3
WARMUP = 2
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
PACKAGES = ("tensorflow", "keras", "mtcnn")
COLUMNS = ["scene", "width", "height", "faces_full", "faces_ours", "lost", "extra", "full_ms", "ours_ms",
           "lost_boxes", "extra_boxes"]


@dataclass(frozen=True)
class DetectionResult:
    """Where the tables went and the headline."""

    csv_path: Path
    md_path: Path
    headline: str


def find_scenes(folder: Path) -> list[Path]:
    """The photos (JPEG, PNG) in ``folder``, sorted by name."""
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_rgb(path: Path) -> np.ndarray:
    """The photo at ``path`` as an RGB uint8 array."""
    return np.asarray(Image.open(path).convert("RGB"))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(milliseconds, result) of one call of ``fn``."""
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000.0, result


def measure_latency(reference: Any, detector: Any, image: np.ndarray, repeats: int) -> dict[str, list[float]]:
    """Interleaved timings (ms) of stock mtcnn and our detector on the same image."""
    for _ in range(WARMUP):  # first calls trace graphs and warm caches
        reference.detect_faces(image)
        detector.detect(image)
    times: dict[str, list[float]] = {"mtcnn": [], "ours": []}
    for _ in range(repeats):
        times["mtcnn"].append(timed(lambda: reference.detect_faces(image))[0])
        times["ours"].append(timed(lambda: detector.detect(image))[0])
    return times


def compare_scene(reference: Any, detector: Any, path: Path) -> dict[str, Any]:
    """One CSV row: faces of full-size mtcnn and of ours on one photo, lost and extra ones, single-run times."""
    image = load_rgb(path)
    full_ms, raw = timed(lambda: reference.detect_faces(image))
    ours_ms, ours = timed(lambda: detector.detect(image))
    full = [tuple(f["box"]) for f in raw if f["confidence"] >= detector.min_confidence]
    lost = [b for b in full if max((box_iou(b, f.box) for f in ours), default=0.0) < IOU_MATCH]
    extra = [f.box for f in ours if max((box_iou(b, f.box) for b in full), default=0.0) < IOU_MATCH]
    return {
        "scene": path.name,
        "width": image.shape[1],
        "height": image.shape[0],
        "faces_full": len(full),
        "faces_ours": len(ours),
        "lost": len(lost),
        "extra": len(extra),
        "full_ms": round(full_ms, 1),
        "ours_ms": round(ours_ms, 1),
        "lost_boxes": " ".join(f"{list(b)}" for b in lost),
        "extra_boxes": " ".join(f"{list(b)}" for b in extra),
    }


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """bench_detection.csv: the rows in COLUMNS order."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(path: Path, machine: dict[str, str], settings: str, command: str, latency: dict[str, Any],
                   rows: list[dict[str, Any]], total: dict[str, Any]) -> None:
    """bench_detection.md: the machine, the latency table, the parity table and the boxes behind it."""
    lines = [
        "# Face detection: tf_models.faces.detector vs mtcnn defaults at full size",
        "",
        f"Written by `{command}`.",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in machine.items()],
        "",
        f"## Latency: {LATENCY_SIZE[0]}x{LATENCY_SIZE[1]} photo ({LATENCY_SCENE} resized)",
        "",
        f"Median of {latency['repeats']} runs after {WARMUP} warm-up runs, the two detectors interleaved.",
        "",
        "| detector | median ms | min ms | max ms |",
        "| --- | ---: | ---: | ---: |",
        (f"| `MTCNN().detect_faces(img)` (mtcnn defaults, full size) | {latency['mtcnn_median']:.1f} | "
         f"{min(latency['mtcnn']):.1f} | {max(latency['mtcnn']):.1f} |"),
        (f"| `get_face_detector().detect(img)` ({settings}) | {latency['ours_median']:.1f} | "
         f"{min(latency['ours']):.1f} | {max(latency['ours']):.1f} |"),
        "",
        f"Speed-up: **{latency['speedup']:.1f}x**.",
        "",
        "## Detection parity per scene",
        "",
        (f"`full`: faces stock mtcnn finds on the full-size photo with confidence >= the detector's "
         f"min_confidence. `lost`: full faces with IoU < {IOU_MATCH} against every face of ours. `extra`: "
         f"faces of ours that match no full face (a face the full-size run scored just under the "
         f"threshold counts as extra too). Times are single runs."),
        "",
        "| scene | size | full | ours | lost | extra | full ms | ours ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['scene']} | {r['width']}x{r['height']} | {r['faces_full']} | {r['faces_ours']} | "
                     f"{r['lost']} | {r['extra']} | {r['full_ms']:.0f} | {r['ours_ms']:.0f} |")
    lines.append(f"| **total** | | {total['faces_full']} | {total['faces_ours']} | {total['lost']} | "
                 f"{total['extra']} | {total['full_ms']:.0f} | {total['ours_ms']:.0f} |")
    details = [r for r in rows if r["lost"] or r["extra"]]
    if details:
        lines += ["", "Boxes (x, y, width, height) behind the non-zero counts:", ""]
        for r in details:
            if r["lost"]:
                lines.append(f"- {r['scene']}: lost {r['lost_boxes']}")
            if r["extra"]:
                lines.append(f"- {r['scene']}: extra {r['extra_boxes']}")
    path.write_text("\n".join(lines) + "\n")


def bench_detection(scenes: Sequence[Path], repeats: int, out: Path, command: str) -> DetectionResult:
    """Latency (on LATENCY_SCENE when among ``scenes``, else the first) and parity on every scene;
    writes bench_detection.csv (one row per scene, then TOTAL and LATENCY rows) and bench_detection.md
    (``command`` is what it says made it) under ``out``."""
    latency_path = next((p for p in scenes if p.name == LATENCY_SCENE), scenes[0])
    machine = machine_info(PACKAGES)

    from mtcnn import MTCNN

    reference = MTCNN()  # stock: its own instance, eager, mtcnn's own pyramid
    detector = get_face_detector()
    settings = (f"detect_max_side={detector.detect_max_side}, min_face_size={detector.min_face_size}, "
                f"min_confidence={detector.min_confidence}, scale_factor={detector.scale_factor}")

    photo = Image.open(latency_path).convert("RGB").resize(LATENCY_SIZE, Image.Resampling.LANCZOS)
    times = measure_latency(reference, detector, np.asarray(photo), repeats)
    latency = {
        "repeats": repeats,
        **times,
        "mtcnn_median": statistics.median(times["mtcnn"]),
        "ours_median": statistics.median(times["ours"]),
    }
    latency["speedup"] = latency["mtcnn_median"] / latency["ours_median"]

    rows = [compare_scene(reference, detector, p) for p in tqdm(scenes, desc="scenes", unit="photo")]
    counted = ("faces_full", "faces_ours", "lost", "extra", "full_ms", "ours_ms")
    total = {k: sum(r[k] for r in rows) for k in counted}
    summary = [
        {"scene": "TOTAL", **{k: round(v, 1) for k, v in total.items()}},
        {"scene": f"LATENCY_{LATENCY_SIZE[0]}x{LATENCY_SIZE[1]}_MEDIAN", "width": LATENCY_SIZE[0],
         "height": LATENCY_SIZE[1], "full_ms": round(latency["mtcnn_median"], 1),
         "ours_ms": round(latency["ours_median"], 1)},
    ]

    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "bench_detection.csv", out / "bench_detection.md"
    write_csv(csv_path, rows + summary)
    write_markdown(md_path, machine, settings, command, latency, rows, total)
    headline = (f"detect {LATENCY_SIZE[0]}x{LATENCY_SIZE[1]}: {latency['ours_median']:.1f} ms median vs "
                f"{latency['mtcnn_median']:.1f} ms mtcnn defaults ({latency['speedup']:.1f}x faster), "
                f"faces lost: {total['lost']} of {total['faces_full']}, extra: {total['extra']}")
    return DetectionResult(csv_path, md_path, headline)
