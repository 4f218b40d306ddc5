#!/usr/bin/env python
"""Classify every face in an image or a folder of images with a trained run (or an export).

    python scripts/predict.py photo.jpg --run runs/gender_resnet50
    python scripts/predict.py photos/ --run runs/students --out preds.csv --top-k 5 --runtime compiled
    python scripts/predict.py photos/ --export runs/students/exports/onnx

Writes one CSV row per face (file, face, x, y, w, h, label, confidence, top_k, detection_confidence)
and one row per file that gave no face, with the reason in the error column (not an image, empty,
too large, no face found). A folder is read recursively; a bad file never stops the batch.
"""

from __future__ import annotations

import argparse
import sys

from tf_models.serve.predictor import Predictor, iter_files, write_predictions_csv
from tf_models.serve.serving import RUNTIME_CHOICES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="an image file or a folder (read recursively)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder written by scripts/train.py")
    source.add_argument("--export", help="export folder written by scripts/export.py")
    parser.add_argument("--out", default="predictions.csv", help="output CSV (default: predictions.csv)")
    parser.add_argument("--top-k", type=int, default=3, help="classes listed per face (default: 3)")
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default=None,
                        help="--run only: inference runtime (default: auto, the fastest on this CPU)")
    parser.add_argument("--whole-image-if-no-face", action="store_true",
                        help="classify the whole image when no face is found (photos that are face crops)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.export and args.runtime:
        parser.error("--runtime applies to --run; an export is served by its own format's runtime")
    options = {"top_k": args.top_k, "whole_image_if_no_face": args.whole_image_if_no_face}
    predictor = (Predictor.from_run(args.run, runtime=args.runtime, **options) if args.run
                 else Predictor.from_export(args.export, **options))
    files = iter_files(args.target)
    counts = write_predictions_csv(predictor.predict_paths(files), args.out)
    print(f"{counts['faces']} faces in {counts['files']} files ({counts['files_without_face']} without a face, "
          f"reason in the error column) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
