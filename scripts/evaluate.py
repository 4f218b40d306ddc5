#!/usr/bin/env python
"""Evaluate a trained run on a dataset in the same layout (e.g. a held-out one).

    python scripts/evaluate.py --run runs/gender --data-dir datasets/celeba/sample --split all --out eval.json

Writes the JSON (keys documented in results/README.md), a confusion-matrix plot and a grid of
misclassified images next to it. Prints accuracy and balanced accuracy.
"""

from __future__ import annotations

import argparse
import sys

from tf_models.train.evaluation import evaluate_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by scripts/train.py")
    parser.add_argument("--data-dir", required=True, help="dataset folder, same layout as training")
    parser.add_argument("--labels-csv", help="generic labels CSV (gender task)")
    parser.add_argument("--x-col", help="labels CSV file-name column")
    parser.add_argument("--y-col", help="labels CSV label column")
    parser.add_argument("--split", choices=("all", "test", "val", "train"), default="test",
                        help="'all': every usable image; otherwise that split (default: test)")
    parser.add_argument("--out", help="output JSON (default: RUN/eval_<split>.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    metrics = evaluate_run(args.run, args.data_dir, split=args.split, labels_csv=args.labels_csv,
                           x_col=args.x_col, y_col=args.y_col, out=args.out)
    print(f"accuracy {metrics['accuracy']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f} (n={metrics['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
