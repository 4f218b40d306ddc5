#!/usr/bin/env python
"""Train a face classifier and write a run folder.

    python scripts/train.py --task gender --data-dir datasets/celeba/sample --backbone mobilenetv2 \\
        --mode transfer --weights imagenet --epochs 5 --out runs/gender_mobilenetv2
    python scripts/train.py --config run.yaml [--any-flag overrides]
    python scripts/train.py --list-backbones

Every flag is a TrainConfig field (tf_models/config.py); a YAML config uses the same names.
"""

from __future__ import annotations

import argparse
import sys

from tf_models.config import add_config_arguments, config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list-backbones", action="store_true", help="print the backbone registry and exit")
    parser.add_argument("--config", help="YAML file with TrainConfig keys; flags given here override it")
    add_config_arguments(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_backbones:
        from tf_models import backbone_table  # here, not at the top: --help should not start TensorFlow

        print(backbone_table())
        return 0
    try:
        config = config_from_args(args, args.config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tf_models.train.training import train

    result = train(config)
    metrics = result.metrics
    print(f"run: {result.run_dir}")
    print(f"{config.backbone} {config.mode} on {config.task}: test accuracy {metrics['accuracy']:.4f}, "
          f"balanced accuracy {metrics['balanced_accuracy']:.4f} (n={metrics['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
