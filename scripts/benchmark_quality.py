#!/usr/bin/env python
"""Quality on real data: train from scratch on the shared face data and report held-out accuracy.

    python scripts/benchmark_quality.py [--tasks gender identity] [--budget-minutes 30]

- gender: ``../shared/data/celeba`` (11,610 aligned CelebA photos), identity-disjoint split, recipe
  ``configs/quality_gender.yaml``. Target: test accuracy >= 0.95 within the time budget on a 2-core CPU.
- identity: ``../shared/data/orl_faces`` (ORL: a folder per person, 40 people x 10 photos: the
  students layout as it is), MTCNN crops, recipe ``configs/quality_identity.yaml``. Target: >= 0.98
  on held-out photos of the known people.

No pretrained weights are used (none can be downloaded offline). Each run starts fresh in
``--runs-dir``/<task> (``--resume`` continues one instead). Writes ``benchmark_quality.{csv,md}`` to
``--out`` (default results/quality) with the machine in the header; the last line printed is the
headline. The recipes are plain TrainConfig YAML: ``scripts/train.py --config FILE`` runs the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# task -> (recipe, default data folder, target accuracy)
BENCHMARKS = {
    "gender": (REPO_ROOT / "configs" / "quality_gender.yaml", SHARED_DATA / "celeba", 0.95),
    "identity": (REPO_ROOT / "configs" / "quality_identity.yaml", SHARED_DATA / "orl_faces", 0.98),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=sorted(BENCHMARKS), default=["gender", "identity"])
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
    from tf_models.benchmarking import machine_info

    machine = machine_info(["tensorflow", "keras"])  # before training: the load average is the neighbours'
    command = ("python scripts/benchmark_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    rows = []
    for task in args.tasks:
        data_dir = args.celeba if task == "gender" else args.students
        if not data_dir.is_dir():
            print(f"error: {task}: data folder {data_dir} not found (pass --celeba / --students)", file=sys.stderr)
            return 2
        rows.append(run_task(task, data_dir, args, machine, command))
    frame = write_tables(rows, args.out, machine)
    print(frame.to_string(index=False))
    print("; ".join(f"{r['task']}: accuracy {r['accuracy']:.4f}"
                    + (f", nearest-centroid {r['gallery_accuracy']:.4f}" if "gallery_accuracy" in r else "")
                    + f" (target {r['target']}) in {r['wall_minutes']} min ({r['cpu_minutes_per_core']} CPU-min/core)"
                    for r in rows))
    return 0


def run_task(task: str, data_dir: Path, args: argparse.Namespace, machine: dict[str, str], command: str) -> dict:
    """Trains ``task``'s recipe on ``data_dir`` and returns its table row (accuracy, minutes, target)."""
    from tf_models.benchmarking import cpu_seconds, display_path
    from tf_models.config import TrainConfig
    from tf_models.train.training import train

    recipe, _, target = BENCHMARKS[task]
    run_dir = args.runs_dir / task
    if run_dir.exists() and not args.resume:
        shutil.rmtree(run_dir)  # a leftover backup/ would otherwise resume an old run
    # Relative paths: they end up in results files, which must not carry this machine's paths.
    config = dataclasses.replace(TrainConfig.load(recipe), data_dir=display_path(data_dir), out=display_path(run_dir))
    if args.epochs is not None:
        config = dataclasses.replace(config, epochs=args.epochs)
    print(f"[quality] {task}: {config.backbone} {config.mode} {config.input_size} x {config.epochs} epochs "
          f"on {data_dir}")
    start, cpu_start = time.perf_counter(), cpu_seconds()
    metrics = train(config, verbose=2).metrics
    minutes = (time.perf_counter() - start) / 60
    # CPU time / cores: what the run would take on this machine with nobody else on it. Wall time
    # alone depends on how busy the (shared) machine was.
    idle_minutes = (cpu_seconds() - cpu_start) / len(os.sched_getaffinity(0)) / 60
    extra = {}
    if task == "identity":  # the app names people by the gallery: report that accuracy and the open-set rates
        extra = identity_extras(Path(config.out), config, args.out.parent / "openset" / data_dir.name)
    return {
        "task": task, "data": data_dir.name, "backbone": config.backbone, "mode": config.mode,
        "input_size": "x".join(map(str, metrics["input_size"])), "epochs": metrics["epochs_run"],
        "test_images": metrics["n"], "accuracy": round(metrics["accuracy"], 4),
        "balanced_accuracy": round(metrics["balanced_accuracy"], 4), "target": target,
        "accuracy_met": metrics["accuracy"] >= target, "wall_minutes": round(minutes, 1),
        "cpu_minutes_per_core": round(idle_minutes, 1), "budget_minutes": args.budget_minutes,
        "within_budget": min(minutes, idle_minutes) <= args.budget_minutes,
        "recipe": recipe.relative_to(REPO_ROOT).as_posix(), "command": f"`{command}`",
        "date": machine["date (UTC)"], "load_at_start": machine["load average at start (1/5/15 min)"], **extra,
    }


def write_tables(rows: list[dict], out: Path, machine: dict[str, str]):
    """benchmark_quality.{csv,md} under ``out``, keeping the rows of tasks not run this time."""
    import pandas as pd

    from tf_models.benchmarking import machine_markdown, markdown_table

    frame = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "benchmark_quality.csv"
    if previous.is_file():  # keep the other tasks' rows from an earlier run (one task at a time)
        kept = pd.read_csv(previous)
        frame = pd.concat([kept[~kept["task"].isin(frame["task"])], frame], ignore_index=True).sort_values("task")
    frame.to_csv(out / "benchmark_quality.csv", index=False)
    (out / "benchmark_quality.md").write_text(
        "# Quality from scratch on real data\n\n"
        "Written by the command in each row. Accuracy on each run's held-out test split (gender: "
        "identity-disjoint; identity: held-out photos of known people). Minutes: wall time of the whole "
        "run (data checks, training, evaluation); cpu_minutes_per_core: the process's CPU time divided by "
        "the cores, i.e. the wall time on this machine when nobody else uses it (the machine is shared). "
        "No pretrained weights.\n\n"
        + markdown_table(frame.fillna("")) + "\nMachine of the latest run:\n\n" + machine_markdown(machine),
        encoding="utf-8")
    return frame


def identity_extras(run_dir: Path, config, openset_out: Path) -> dict:
    """Nearest-centroid accuracy on the test split (the app's decision) and leave-one-person-out FAR/FRR."""
    from tf_models.config import load_table
    from tf_models.identity.embedding import nearest_centroid_accuracy
    from tf_models.identity.openset import evaluate_openset
    from tf_models.runs import load_run_model

    model = load_run_model(run_dir)
    accuracy = nearest_centroid_accuracy(model, load_table(config), batch_size=config.batch_size)
    summary = evaluate_openset(run_dir, config.data_dir, target_far=0.01, out=openset_out).summary
    return {"gallery_accuracy": round(accuracy, 4), "openset_far": round(summary["far"], 4),
            "openset_frr": round(summary["frr"], 4)}


if __name__ == "__main__":
    sys.exit(main())
