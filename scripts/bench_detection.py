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
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENES = REPO_ROOT.parent / "shared" / "data" / "scenes"
DEFAULT_OUT = REPO_ROOT / "results" / "detection"


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tf_models.bench.detection import bench_detection, find_scenes

    scenes = find_scenes(args.scenes)
    if not scenes:
        print(f"error: no photos in {args.scenes}", file=sys.stderr)
        return 2
    command = "python scripts/bench_detection.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = bench_detection(scenes, args.repeats, args.out, command.strip())
    print(f"wrote {result.csv_path} and {result.md_path}")
    print(result.headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
