#!/usr/bin/env python
"""Input-pipeline benchmark: legacy ``ImageDataGenerator`` vs the tf.data pipeline with fused augmentation.

One run, the same N CelebA images, typical notebook settings (rotation 15, width/height shift
0.1, shear 0.1, zoom 0.2, horizontal flip, rescale 1/255, 218x178, batch 128):

1. legacy: ``tf_keras`` ``ImageDataGenerator.flow_from_dataframe`` (PIL + scipy, one image at a time);
2. ours: ``tf_models.data.pipeline.make_dataset(..., augment=AugmentConfig.from_dict(same settings))``;
3. context: decode-only, the cached pipeline, nearest interpolation, and augmentation alone.

Every variant is timed over full passes of N images after a warm-up pass (tf.data: the warm-up
traces the functions and, for the cached variant, fills the cache); variants are interleaved
round-robin and the median of ``--repeats`` passes is reported, because other jobs share the
machine. CPU time per image is reported too: it measures the work and barely moves with the load. Writes
``results/pipeline/bench_pipeline.{csv,md}``; the last line printed is the headline ratio.

    python scripts/bench_pipeline.py --n 2048
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "celeba"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder with img_align_celeba/ and the labels CSV (default: %(default)s)",
    )
    parser.add_argument(
        "--labels-csv", type=Path, default=None, help="labels CSV (default: DATA_DIR/gender_labels.csv)"
    )
    parser.add_argument("--x-col", default="image_id", help="file-name column (default: %(default)s)")
    parser.add_argument("--y-col", default="Male", help="label column, 0/1 (default: %(default)s)")
    parser.add_argument("--n", type=int, default=2048, help="images per pass (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per variant; median reported")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "pipeline")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tf_models.bench.pipeline import PipelineSettings, bench_pipeline
    from tf_models.benchmarking import display_path

    settings = PipelineSettings(data_dir=args.data_dir, labels_csv=args.labels_csv, x_col=args.x_col,
                                y_col=args.y_col, n=args.n, batch_size=args.batch_size, repeats=args.repeats)
    command = f"scripts/bench_pipeline.py --n {args.n} --batch-size {args.batch_size} --repeats {args.repeats}"
    try:
        result = bench_pipeline(settings, args.out_dir, command)
    except FileNotFoundError as err:  # the images are not there: say so, no traceback
        raise SystemExit(str(err)) from None
    print(f"wrote {display_path(result.csv_path)} and {result.md_path.name}")
    print(result.ceiling)
    print(result.headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
