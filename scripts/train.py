#!/usr/bin/env python
"""Train a face classifier (the training loop lands with issue 4); list the backbones.

    python scripts/train.py --list-backbones
"""

from __future__ import annotations

import argparse
import sys

from tf_models import backbone_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list-backbones", action="store_true", help="print the backbone registry and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_backbones:
        print(backbone_table())
        return 0
    print("Nothing to do yet: pass --list-backbones.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
