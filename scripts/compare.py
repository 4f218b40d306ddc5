#!/usr/bin/env python
"""Compare backbones x modes on one dataset with one config; write results/<dataset>/ tables and plots.

    python scripts/compare.py --task gender --data-dir datasets/celeba/sample \\
        --backbones alexnet_bn mobilenetv2 --modes scratch --epochs 5 --runs-dir runs/suite
    python scripts/compare.py ... --sweep epochs=2,4,8 --sweep subset=150,300,all --sweep batch_size=16,32,64

Finished runs are reused (re-run the same command to resume a half-finished suite). The best run per
task is recorded in results/best/<task>.json for the app. All TrainConfig flags apply to every run.
Sweeps (accuracy against epochs, dataset size or batch size) train the FIRST backbone and mode given,
after the suite (or instead of it with --sweeps-only), and write results/<dataset>/sweep_<param>.*
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from tf_models.config import add_config_arguments, config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", required=True, help="registry names, or 'all'")
    parser.add_argument("--modes", nargs="+", default=["transfer"], help="transfer finetune scratch")
    parser.add_argument("--runs-dir", default="runs/suite", help="one sub-folder per run")
    parser.add_argument("--results-dir", default="results", help="where tables, plots and best/<task>.json go")
    parser.add_argument("--dataset-name", help="results sub-folder (default: the data folder's name)")
    parser.add_argument("--sweep", action="append", default=[], metavar="PARAM=V1,V2,...",
                        help="repeatable; PARAM: epochs, subset (dataset size; 'all' for every image) or "
                             "batch_size; runs the first backbone and mode at each value")
    parser.add_argument("--sweeps-only", action="store_true", help="run the sweeps without the comparison suite")
    parser.add_argument("--config", help="YAML file with TrainConfig keys")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tf_models.train.compare import parse_sweep, run_suite, run_sweep

    try:
        base = config_from_args(args, args.config)
        sweeps = [parse_sweep(text) for text in args.sweep]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.sweeps_only and not sweeps:
        print("error: --sweeps-only needs at least one --sweep PARAM=V1,V2,...", file=sys.stderr)
        return 2
    from tf_models import list_backbones

    backbones = list_backbones() if args.backbones == ["all"] else args.backbones
    if not args.sweeps_only:
        frame = run_suite(base, backbones, args.modes, args.results_dir, args.runs_dir, args.dataset_name)
        best = frame.iloc[0]
        print(frame.drop(columns=["run_dir"]).to_string(index=False))
        print(f"best {base.task}: {best.backbone} {best['mode']} accuracy {best.accuracy:.4f}")
    swept = dataclasses.replace(base, backbone=backbones[0], mode=args.modes[0])
    for parameter, values in sweeps:
        sweep = run_sweep(swept, parameter, values, args.results_dir, args.runs_dir, args.dataset_name)
        print(sweep.drop(columns=["run_dir"]).to_string(index=False))
        best = sweep.sort_values("accuracy", ascending=False).iloc[0]
        print(f"sweep {parameter}: best accuracy {best.accuracy:.4f} at {parameter}={best.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
