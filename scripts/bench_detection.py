#!/usr/bin/env python
"""Face detection benchmark: tf_models.faces.detector vs stock mtcnn at full size, side by side.

    python scripts/bench_detection.py [--scenes DIR] [--repeats N] [--out DIR]

1. Latency on a 1280x960 photo (a real scene with one person, resized): ``MTCNN().detect_faces``
   at its defaults on the full image vs ``get_face_detector().detect``; medians over
   ``--repeats`` runs after warm-up, the two interleaved so background load hits both alike.
2. Parity on every photo in ``--scenes``: faces that full-size mtcnn finds (confidence >= the
   detector's min_confidence) but we do not (IoU < 0.3 with each of ours) are "lost"; faces we
   find that match none of those are "extra".

Writes bench_detection.csv (one row per scene, then TOTAL and LATENCY rows) and
bench_detection.md to --out (default results/detection). The last line printed is the headline.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]

from tf_models.benchmarking import machine_info
from tf_models.faces.detector import box_iou, get_face_detector

DEFAULT_SCENES = REPO_ROOT.parent / "shared" / "data" / "scenes"
DEFAULT_OUT = REPO_ROOT / "results" / "detection"
LATENCY_SCENE = "deepface_img2.jpg"  # 1536x1152 (4:3), one face: resizes to 1280x960 undistorted
LATENCY_SIZE = (1280, 960)  # width, height
IOU_MATCH = 0.3
WARMUP = 2
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=Path, default=DEFAULT_SCENES, help="folder of photos with people")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per detector for the latency")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the CSV and Markdown go")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
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


COLUMNS = ["scene", "width", "height", "faces_full", "faces_ours", "lost", "extra", "full_ms", "ours_ms",
           "lost_boxes", "extra_boxes"]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(path: Path, machine: dict[str, str], settings: str, command: str, latency: dict[str, Any],
                   rows: list[dict[str, Any]], total: dict[str, Any]) -> None:
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
        f"| `MTCNN().detect_faces(img)` (mtcnn defaults, full size) | {latency['mtcnn_median']:.1f} | "
        f"{min(latency['mtcnn']):.1f} | {max(latency['mtcnn']):.1f} |",
        f"| `get_face_detector().detect(img)` ({settings}) | {latency['ours_median']:.1f} | "
        f"{min(latency['ours']):.1f} | {max(latency['ours']):.1f} |",
        "",
        f"Speed-up: **{latency['speedup']:.1f}x**.",
        "",
        "## Detection parity per scene",
        "",
        f"`full`: faces stock mtcnn finds on the full-size photo with confidence >= the detector's "
        f"min_confidence. `lost`: full faces with IoU < {IOU_MATCH} against every face of ours. `extra`: "
        f"faces of ours that match no full face (a face the full-size run scored just under the "
        f"threshold counts as extra too). Times are single runs.",
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenes = sorted(p for p in args.scenes.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not scenes:
        print(f"error: no photos in {args.scenes}", file=sys.stderr)
        return 2
    latency_path = args.scenes / LATENCY_SCENE
    if not latency_path.exists():
        latency_path = scenes[0]
    machine = machine_info(("tensorflow", "keras", "mtcnn"))

    from mtcnn import MTCNN

    reference = MTCNN()  # stock: its own instance, eager, mtcnn's own pyramid
    detector = get_face_detector()
    settings = (f"detect_max_side={detector.detect_max_side}, min_face_size={detector.min_face_size}, "
                f"min_confidence={detector.min_confidence}, scale_factor={detector.scale_factor}")

    photo = Image.open(latency_path).convert("RGB").resize(LATENCY_SIZE, Image.Resampling.LANCZOS)
    times = measure_latency(reference, detector, np.asarray(photo), args.repeats)
    latency = {
        "repeats": args.repeats,
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

    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "bench_detection.csv", rows + summary)
    command = "python scripts/bench_detection.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_markdown(args.out / "bench_detection.md", machine, settings, command.strip(), latency, rows, total)

    print(f"wrote {args.out / 'bench_detection.csv'} and {args.out / 'bench_detection.md'}")
    print(f"detect {LATENCY_SIZE[0]}x{LATENCY_SIZE[1]}: {latency['ours_median']:.1f} ms median vs "
          f"{latency['mtcnn_median']:.1f} ms mtcnn defaults ({latency['speedup']:.1f}x faster), "
          f"faces lost: {total['lost']} of {total['faces_full']}, extra: {total['extra']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
