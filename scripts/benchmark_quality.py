#!/usr/bin/env python
"""Quality on real data: train from scratch on the shared face data and report held-out accuracy.

    python scripts/benchmark_quality.py [--tasks gender gender_faces identity] [--budget-minutes 30]

- gender: ``../shared/data/celeba`` (11,610 aligned CelebA photos), identity-disjoint split, recipe
  ``configs/quality_gender.yaml``. Target: test accuracy >= 0.95 within the time budget on a 2-core CPU.
- gender_faces: the same CelebA and split, fine-tuned from the shipped face-pretrained weights
  (``configs/quality_gender_faces.yaml``). Target: >= 0.97.
- identity: ``../shared/data/orl_faces`` (ORL: a folder per person, 40 people x 10 photos: the
  students layout as it is), MTCNN crops, recipe ``configs/quality_identity.yaml``. Target: >= 0.98
  on held-out photos of the known people.

gender and identity use no pretrained weights (none can be downloaded offline); gender_faces starts
from the weights shipped in the package. Each run starts fresh in
``--runs-dir``/<task> (``--resume`` continues one instead). Writes ``benchmark_quality.{csv,md}`` to
``--out`` (default results/quality) with the machine in the header; the last line printed is the
headline. The recipes are plain TrainConfig YAML: ``scripts/train.py --config FILE`` runs the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# task -> (recipe, default data folder); the target accuracies are tf_models.bench.quality.TARGETS
BENCHMARKS = {
    "gender": (REPO_ROOT / "configs" / "quality_gender.yaml", SHARED_DATA / "celeba"),
    "gender_faces": (REPO_ROOT / "configs" / "quality_gender_faces.yaml", SHARED_DATA / "celeba"),
    "identity": (REPO_ROOT / "configs" / "quality_identity.yaml", SHARED_DATA / "orl_faces"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=sorted(BENCHMARKS), default=sorted(BENCHMARKS))
    parser.add_argument("--celeba", type=Path, default=BENCHMARKS["gender"][1], help="CelebA folder (gender)")
    parser.add_argument("--students", type=Path, default=BENCHMARKS["identity"][1],
                        help="folder-per-person set (identity); default: ORL faces")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (quick checks)")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="wall-clock budget per task")
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs" / "quality")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run instead of starting fresh")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "quality")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("celeba", "students", "runs_dir", "out"):
        setattr(args, name, getattr(args, name).resolve())
    os.chdir(REPO_ROOT)  # run configs hold repo-relative paths (they reach results files); run from anywhere
    from tf_models.bench.quality import PACKAGES, QualitySettings, headline, run_task, write_tables
    from tf_models.benchmarking import machine_info

    machine = machine_info(PACKAGES)  # before training: the load average is the neighbours'
    command = ("python scripts/benchmark_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    settings = QualitySettings(runs_dir=args.runs_dir, out=args.out, epochs=args.epochs,
                               budget_minutes=args.budget_minutes, resume=args.resume)
    rows = []
    for task in args.tasks:
        data_dir = args.celeba if task.startswith("gender") else args.students
        if not data_dir.is_dir():
            print(f"error: {task}: data folder {data_dir} not found (pass --celeba / --students)", file=sys.stderr)
            return 2
        rows.append(run_task(task, BENCHMARKS[task][0], data_dir, settings, machine, command))
    frame = write_tables(rows, args.out, machine)
    print(frame.to_string(index=False))
    print(headline(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
