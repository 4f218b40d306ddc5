#!/usr/bin/env python
"""Stratified K-fold cross-validation of one config: a fresh model per fold, mean ± std per metric.

    python scripts/crossval.py --folds 5 --task gender --data-dir datasets/celeba/sample \\
        --backbone alexnet_bn --mode scratch --weights none --input-size 72 72 --epochs 8 --out runs/cv_gender

Writes OUT/fold_<k>/ run folders and OUT/cv_summary.{csv,md,json}. The folds cover the run's
train + val images; its test split stays out. Re-run the same command to resume (finished folds
are reused). Every TrainConfig flag applies to every fold.
"""

from __future__ import annotations

import argparse
import sys

from tf_models.config import add_config_arguments, config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5, help="K, the number of folds (default: 5)")
    parser.add_argument("--config", help="YAML file with TrainConfig keys; flags given here override it")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args, args.config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tf_models.train.crossval import cross_validate

    try:
        result = cross_validate(config, args.folds)
    except ValueError as err:  # too few images per class for K folds, k < 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.drop(columns=["run_dir"]).to_string(index=False))
    mean, std = result.set_index("fold").loc["mean"], result.set_index("fold").loc["std"]
    print(f"{args.folds}-fold accuracy {mean['accuracy']:.4f} ± {std['accuracy']:.4f}, "
          f"balanced accuracy {mean['balanced_accuracy']:.4f} ± {std['balanced_accuracy']:.4f} ({config.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
