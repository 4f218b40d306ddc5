#!/usr/bin/env python
"""Accelerator check: what training gets from the GPU (or CPU) this machine has.

    python scripts/check_accelerator.py [--backbones mobilenetv2,resnet50,densenet201] [--batch 128|16]
                                        [--steps 10] [--mixed-precision auto] [--jit auto] [--out results/accelerator]

On the device training would use: the device, the mixed-precision policy the model's layers
actually carry, whether XLA compiled the train step (checked on the function that ran, with the
reason when not), augmentation img/s on the device vs as a tf.data map on the host, training img/s
per backbone at its own input size (batch 128 on a GPU, 16 on a CPU; random weights, nothing
downloaded) and peak device memory (on a CPU: the process's peak RSS). Writes
``<device>.csv`` and ``<device>.md`` to --out, named after the device (``gpu-nvidia-a100-sxm4-40gb``,
``cpu-amd-epyc-2-cores``); the last line printed is the headline.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_models.config import MIXED_PRECISION  # noqa: E402  (after the log level, before TensorFlow loads)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "results" / "accelerator"
BACKBONES = "mobilenetv2,resnet50,densenet201"
JIT = ("auto", "on", "off")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=BACKBONES, help="comma-separated registry names (default: %(default)s)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="one input size for every backbone (default: each backbone's own)")
    parser.add_argument("--batch", type=int, default=None, help="batch per device (default: 128 on a GPU, 16 on a CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps; the first traces and compiles")
    parser.add_argument("--steps", type=int, default=10, help="timed steps; the median is reported")
    parser.add_argument("--mode", default="scratch",
                        help="transfer | finetune | scratch: which layers train (default: %(default)s, every layer)")
    parser.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="auto",
                        help="as scripts/train.py (default: %(default)s: float16 on GPUs with tensor cores)")
    parser.add_argument("--jit", choices=JIT, default="auto",
                        help="XLA for the train step (default: %(default)s, what training uses: Keras's choice)")
    parser.add_argument("--augment", default="moderate", help="augmentation preset (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the CSV and Markdown go")
    args = parser.parse_args(argv)
    args.backbones = tuple(name.strip() for name in args.backbones.split(",") if name.strip())
    if args.steps < 1 or args.warmup < 1 or (args.batch is not None and args.batch < 1):
        parser.error("--steps, --warmup and --batch must be >= 1")
    return args


def command_line(args: argparse.Namespace) -> str:
    """The command as the Markdown records it (only the flags that differ from the defaults)."""
    parts = ["scripts/check_accelerator.py"]
    defaults = vars(parse_args([]))
    for key, value in vars(args).items():
        if key == "out" or value == defaults[key]:
            continue
        flag = f"--{key.replace('_', '-')}"
        shown = ",".join(value) if key == "backbones" else " ".join(map(str, value)) if key == "input_size" else value
        parts.append(f"{flag} {shown}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tf_models.bench.accelerator import AcceleratorSettings, check_accelerator
    from tf_models.benchmarking import display_path

    settings = AcceleratorSettings(backbones=args.backbones, input_size=tuple(args.input_size) if args.input_size
                                   else None, batch=args.batch, warmup=args.warmup, steps=args.steps, mode=args.mode,
                                   precision=args.mixed_precision, jit=args.jit, augment=args.augment)
    try:
        result = check_accelerator(settings, args.out, command_line(args))
    except (ValueError, NotImplementedError) as err:  # an unknown backbone, mode or preset, a size too small; a TPU
        raise SystemExit(str(err)) from None
    print(f"wrote {display_path(result.csv_path)} and {result.md_path.name}")
    print(result.headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
