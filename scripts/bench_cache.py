#!/usr/bin/env python
"""Image-cache benchmark: peak memory and img/s of the training pipeline with a memory, disk or no cache.

Builds a dataset of N files (symlinks to the CelebA images, reused by later runs), then runs the
training pipeline (``make_dataset(training=True)``: decode, resize, cache, shuffle, batch; no model)
for E passes per cache mode, each mode in a fresh process so its peak RSS is its own; pass 1 fills the
cache. A last process times memory and disk side by side, round-robin, because other jobs share the
machine. Then training, which is what the cache is for: each mode's process times S training steps of a
small registry model (mobilenetv2 from scratch) from pass 2 on, after W warm-up steps (its peak RSS then
includes the model), and the side-by-side process trains one model on all three modes round-robin.
Writes ``results/cache/cache.{csv,md}``; the last line printed is the headline, with the target's verdict.

    python scripts/bench_cache.py --n 100000
    python scripts/bench_cache.py --n 500 --epochs 2 --rounds 1 --train-steps 3 --train-warmup 1 \
        --train-rounds 1 --out-dir /tmp/cache_bench   # CI-sized
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_models.bench.cache import CacheBenchSettings  # noqa: E402  (neither imports TensorFlow: the level above holds)
from tf_models.config import TrainConfig  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "celeba"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder with img_align_celeba/ and the labels CSV (default: %(default)s)")
    parser.add_argument("--labels-csv", type=Path, default=None,
                        help="labels CSV (default: DATA_DIR/gender_labels.csv)")
    parser.add_argument("--x-col", default="image_id", help="file-name column (default: %(default)s)")
    parser.add_argument("--y-col", default="Male", help="label column, 0/1 (default: %(default)s)")
    parser.add_argument("--n", type=int, default=100_000, help="files in the dataset (default: %(default)s)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"),
                        help="size the pipeline decodes to (default: 64 64)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                        help="images per step, the pipeline's and the training model's (default: %(default)s, "
                             "train.py's)")
    parser.add_argument("--epochs", type=int, default=3, help="passes per mode; pass 1 fills the cache (default: 3)")
    parser.add_argument("--rounds", type=int, default=10,
                        help="side-by-side timed passes of memory and disk (default: %(default)s)")
    parser.add_argument("--train-steps", type=int, default=CacheBenchSettings.train_steps,
                        help="timed training steps per mode from pass 2 on; 0: no training (default: %(default)s)")
    parser.add_argument("--train-warmup", type=int, default=CacheBenchSettings.train_warmup,
                        help="untimed training steps before them (default: %(default)s)")
    parser.add_argument("--train-rounds", type=int, default=CacheBenchSettings.train_rounds,
                        help="side by side: rounds the timed training steps of each mode are split into "
                             "(default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the links and the disk cache go, reused (default: TMPDIR/tf_models_bench_cache)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "cache")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.train_steps < 0 or args.train_warmup < 0 or args.train_rounds < 1:
        raise SystemExit(f"--train-steps and --train-warmup must be >= 0 and --train-rounds >= 1. Received: "
                         f"{args.train_steps}, {args.train_warmup}, {args.train_rounds}")
    if args.epochs < 2 or args.rounds < 1:
        raise SystemExit(f"--epochs must be >= 2 (pass 1 fills the cache) and --rounds >= 1. "
                         f"Received: --epochs {args.epochs} --rounds {args.rounds}")
    from tf_models.bench.cache import bench_cache, default_work_dir
    from tf_models.benchmarking import display_path

    settings = CacheBenchSettings(source_dir=args.data_dir, labels_csv=args.labels_csv, x_col=args.x_col,
                                  y_col=args.y_col, n=args.n, image_size=tuple(args.image_size),
                                  batch_size=args.batch_size, epochs=args.epochs, rounds=args.rounds,
                                  work_dir=args.work_dir or default_work_dir(), train_steps=args.train_steps,
                                  train_warmup=args.train_warmup, train_rounds=args.train_rounds)
    height, width = settings.image_size
    command = (f"scripts/bench_cache.py --n {args.n} --image-size {height} {width} --batch-size {args.batch_size} "
               f"--epochs {args.epochs} --rounds {args.rounds} --train-steps {args.train_steps} "
               f"--train-warmup {args.train_warmup} --train-rounds {args.train_rounds}")
    try:
        result = bench_cache(settings, args.out_dir, command)
    except FileNotFoundError as err:  # the images are not there: say so, no traceback
        raise SystemExit(str(err)) from None
    print(f"wrote {display_path(result.csv_path)} and {result.md_path.name}")
    print(result.headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
