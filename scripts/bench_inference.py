#!/usr/bin/env python
"""Inference-time table: every backbone, every runtime, side by side, measured one way.

    python scripts/bench_inference.py [--backbones all] [--runtimes keras-predict,compiled,onnx,onnx-int8,tflite]
                                      [--batch 32] [--repeats 20] [--out results/inference]
    python scripts/bench_inference.py --face-embedder --runtimes keras-predict,compiled,onnx,tflite \
                                      --out results/inference/face_embedder

For each backbone at its registry default input size (random weights: timing does not depend on
them; 2 classes, the default head; ``onnx-int8`` calibrates its activation ranges on bundled CelebA
sample faces resized to the input, so they are realistic) and each runtime of :mod:`tf_models.serve.predictor` (the code the
Predictor serves with): parameters, model size on disk (``.keras``, and the runtime's own file),
single-image latency p50/p90 over ``--repeats`` calls after warm-up, and throughput at ``--batch``.
``keras-predict`` (``model.predict`` on one image, how notebooks usually time a model) is the
baseline; ``speedup`` is its p50 over the runtime's. Runtimes are timed interleaved, call by call,
so load from other processes hits them alike.

Writes bench_inference.csv, bench_inference.md (machine and library versions in the header) and
bench_inference.png to --out. The last line printed is the headline: the served path (per
backbone, the fastest candidate runtime here: what the Predictor's ``auto`` default serves) against
model.predict, and the worst backbone.

``--face-embedder`` times the shipped face embedders (``weights="faces"``; default: every backbone that
has them) as the app serves them, each face with its mirror view, instead of random-weight
classifiers; its headline is the served runtime's milliseconds per face against the 10 ms target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tf_models.models.backbones import backbones_with_face_weights, get_backbone, list_backbones
from tf_models.serve.runtimes import RUNTIMES

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "results" / "inference"
CALIBRATION_DIR = REPO_ROOT / "datasets" / "celeba" / "sample"  # bundled faces: onnx-int8 activation ranges


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="all", help="comma-separated registry names, or 'all'")
    parser.add_argument("--face-embedder", action="store_true",
                        help="time the shipped face embedders (weights='faces') instead of random classifiers")
    parser.add_argument("--runtimes", default="keras-predict,compiled,onnx,onnx-int8,tflite",
                        help=f"comma-separated, from {', '.join(RUNTIMES)}")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput measurement")
    parser.add_argument("--repeats", type=int, default=20, help="timed single-image calls per runtime")
    parser.add_argument("--batch-repeats", type=int, default=3, help="timed batches per runtime")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where CSV, Markdown and plot go")
    args = parser.parse_args(argv)
    if args.backbones == "all":
        args.backbones = backbones_with_face_weights() if args.face_embedder else list_backbones()
    else:
        args.backbones = [get_backbone(name).name for name in args.backbones.split(",")]
    if args.face_embedder and not set(args.backbones) <= set(backbones_with_face_weights()):
        parser.error(f"--face-embedder: face weights exist for {backbones_with_face_weights()}. "
                     f"Received: --backbones {','.join(args.backbones)}")
    args.runtimes = [r.strip() for r in args.runtimes.split(",")]
    unknown = [r for r in args.runtimes if r not in RUNTIMES]
    if unknown:
        parser.error(f"unknown runtimes {unknown}; choose from {RUNTIMES}")
    if args.repeats < 1 or args.batch < 1 or args.batch_repeats < 1:
        parser.error("--repeats, --batch and --batch-repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tf_models.bench.inference import InferenceSettings, bench_inference

    settings = InferenceSettings(backbones=args.backbones, runtimes=args.runtimes, batch=args.batch,
                                 repeats=args.repeats, batch_repeats=args.batch_repeats,
                                 face_embedder=args.face_embedder)
    print(bench_inference(settings, args.out, CALIBRATION_DIR))
    return 0


if __name__ == "__main__":
    sys.exit(main())
