#!/usr/bin/env python
"""Compare backbones x modes on one dataset with one config; write results/<dataset>/ tables and plots.

    python scripts/compare.py --task gender --data-dir datasets/celeba/sample \\
        --backbones alexnet_bn mobilenetv2 --modes scratch --epochs 5 --runs-dir runs/suite

Finished runs are reused (re-run the same command to resume a half-finished suite). The best run per
task is recorded in results/best/<task>.json for the app. All TrainConfig flags apply to every run.
"""

from __future__ import annotations

import argparse
import sys

from tf_models.config import add_config_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", required=True, help="registry names, or 'all'")
    parser.add_argument("--modes", nargs="+", default=["transfer"], help="transfer finetune scratch")
    parser.add_argument("--runs-dir", default="runs/suite", help="one sub-folder per run")
    parser.add_argument("--results-dir", default="results", help="where tables, plots and best/<task>.json go")
    parser.add_argument("--dataset-name", help="results sub-folder (default: the data folder's name)")
    parser.add_argument("--config", help="YAML file with TrainConfig keys")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        base = config_from_args(args, args.config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tf_models import list_backbones
    from tf_models.compare import run_suite

    backbones = list_backbones() if args.backbones == ["all"] else args.backbones
    frame = run_suite(base, backbones, args.modes, args.results_dir, args.runs_dir, args.dataset_name)
    best = frame.iloc[0]
    print(frame.drop(columns=["run_dir"]).to_string(index=False))
    print(f"best {base.task}: {best.backbone} {best['mode']} accuracy {best.accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
