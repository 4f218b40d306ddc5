#!/usr/bin/env python
"""Export a trained run for other runtimes: SavedModel, ONNX (ONNX Runtime) or TFLite (LiteRT).

    python scripts/export.py --run runs/gender_resnet50 --format onnx
    python scripts/export.py --run runs/students --format tflite --quantize int8 --out exports/students_int8
    python scripts/export.py --run runs/gender_resnet50 --format onnx --quantize int8

The export serves both model outputs (probabilities, embedding) and carries class_names.json,
crop.json (identity runs) and export.json, so `scripts/predict.py --export FOLDER` and
`Predictor.from_export(FOLDER)` serve it exactly like the run. Quantisation: tflite float16 weights,
or int8 (tflite or onnx) weights and activations calibrated on faces from the run's data; int8
exports record in export.json how often their top-1 label agrees with the Keras model on other
faces of that data (``parity``).
"""

from __future__ import annotations

import argparse
import sys

from tf_models.serve.export import EXPORT_FORMATS, QUANTIZATIONS, check_format, export_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by scripts/train.py")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="what to write")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default=None, help="tflite: float16 or int8; onnx: int8 (default: float32)")
    parser.add_argument("--out", default=None, help="export folder (default: RUN/exports/<format>[-<quantize>])")
    parser.add_argument("--calibration-images", type=int, default=100,
                        help="int8: images of the run's data used to calibrate activations (default: 100)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_format(args.format, args.quantize)
    except ValueError as err:
        parser.error(str(err))
    out = export_run(args.run, args.format, args.out, quantize=args.quantize,
                     calibration_images=args.calibration_images)
    print(f"exported {args.run} as {args.format}{' ' + args.quantize if args.quantize else ''} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
