#!/usr/bin/env python
"""Feature-cache benchmark: a frozen-base (transfer) run with the backbone's features cached vs recomputed.

The same transfer config (no augmentation, so the frozen backbone sees the same pixels every epoch)
is trained twice on the same CelebA images and split:

1. ``cache_features=False``: every epoch runs the frozen backbone over every image (what the
   usual notebook does);
2. ``cache_features=True``: the backbone runs once (the extraction, timed separately), then the
   head trains on the cached feature vectors.

Reported: head seconds per epoch of each (median of the epochs after the first, validation included), the one-off
extraction, the speed-up, and the final test accuracy of both (the cache must not change quality).
The default backbone carries random weights (``--weights none``: nothing to download offline); a
frozen random base costs exactly what a pretrained one does, and both runs see the same features.
Writes ``results/feature_cache/bench_feature_cache.{csv,md}``; the last line printed is the ratio.

    python scripts/bench_feature_cache.py --n 1000 --backbone resnet50 --input-size 128 128 --epochs 4
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "celeba"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="CelebA-style folder")
    parser.add_argument("--n", type=int, default=1000, help="images (stratified subset; default: %(default)s)")
    parser.add_argument("--backbone", default="resnet50", help="default: %(default)s")
    parser.add_argument("--weights", default="none", help="imagenet | none | PATH (default: %(default)s)")
    parser.add_argument("--input-size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    parser.add_argument("--epochs", type=int, default=4, help="head epochs of each run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs" / "bench_feature_cache",
                        help="the two run folders (replaced on every run)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "feature_cache")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tf_models.bench.feature_cache import FeatureCacheSettings, bench_feature_cache

    settings = FeatureCacheSettings(data_dir=args.data_dir, n=args.n, backbone=args.backbone, weights=args.weights,
                                    input_size=tuple(args.input_size), epochs=args.epochs,
                                    batch_size=args.batch_size, seed=args.seed)
    command = (f"scripts/bench_feature_cache.py --n {args.n} --backbone {args.backbone} --weights {args.weights} "
               f"--input-size {args.input_size[0]} {args.input_size[1]} --epochs {args.epochs} "
               f"--batch-size {args.batch_size} --seed {args.seed}")
    result = bench_feature_cache(settings, args.runs_dir, args.out_dir, command)
    print(result.frame.drop(columns=["train_images", "val_images"]).to_string(index=False))
    print(f"wrote {result.csv_path} and {result.md_path.name}")
    print(result.headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
