"""The quality benchmark (``scripts/benchmark_quality.py``): a recipe trained on real data, its
held-out accuracy against a target, and the time it took (wall and CPU per core).

- gender: CelebA from scratch, identity-disjoint split. Target: test accuracy >= 0.95 within the time budget.
- gender_faces: the same data and split, fine-tuned from the shipped ``weights="faces"``. Target: >= 0.97.
- identity: a folder per person (ORL). Target: >= 0.98 on held-out photos of the known people; the
  nearest-centroid accuracy (the app's decision) and the leave-one-person-out open-set rates too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tf_models.benchmarking import cpu_seconds, display_path, machine_markdown, markdown_table
from tf_models.config import TrainConfig
from tf_models.files import atomic_write

if TYPE_CHECKING:  # typing.Self is Python 3.11+; annotations are strings here, so 3.10 never needs it
    from typing import Self

TARGETS = {"gender": 0.95, "gender_faces": 0.97, "identity": 0.98}  # test accuracy each task must reach
PACKAGES = ("tensorflow", "keras")


@dataclass(frozen=True)
class QualitySettings:
    """How every task is run and where its run and the tables go."""

    runs_dir: Path  # one run folder per task under it
    out: Path  # benchmark_quality.{csv,md}; the open-set tables go to out.parent / "openset"
    epochs: int | None  # None: the recipe's
    budget_minutes: float  # wall-clock budget per task
    resume: bool  # continue an interrupted run instead of starting fresh


class RunClock:
    """Wall and CPU seconds of a benchmark run over all its parts: a run killed and continued with
    ``--resume`` reports what every part cost, not only the last one.

    The totals live in a small JSON file beside the run folder, rewritten every ``every`` seconds while
    the run trains (a kill loses at most that much) and when it ends. A fresh run starts from zero, and
    so does a resumed one whose earlier part finished (there was nothing left to continue).
    """

    def __init__(self, path: Path, resume: bool, every: float = 30.0, cpu: str = ""):
        self.path, self.every = Path(path), float(every)
        earlier: dict = {}
        if resume and self.path.is_file():
            try:
                earlier = json.loads(self.path.read_text())
            except (OSError, ValueError) as err:  # unreadable: the earlier parts' minutes are unknown, say so
                warnings.warn(f"{self.path} cannot be read ({err}): minutes count from this part only.", stacklevel=2)
        if not isinstance(earlier, dict) or earlier.get("finished"):
            earlier = {}
        self.earlier_wall = float(earlier.get("wall_seconds", 0.0))
        self.earlier_cpu = float(earlier.get("cpu_seconds", 0.0))
        self.parts = int(earlier.get("parts", 0)) + 1  # processes the run has taken, this one included
        # The CPU of every part, in order: a run resumed on another machine took minutes of both.
        earlier_cpus = earlier.get("cpus")
        earlier_cpus = [str(c) for c in earlier_cpus] if isinstance(earlier_cpus, list) else []
        self.cpus = earlier_cpus + ["unknown CPU"] * (self.parts - 1 - len(earlier_cpus)) + [cpu]
        self._start = self._cpu_start = 0.0
        self._final: tuple[float, float] | None = None  # the totals when the run ended
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="run-clock", daemon=True)

    def __enter__(self) -> Self:
        self._start, self._cpu_start = time.perf_counter(), cpu_seconds()
        self._save()
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._save(finished=exc_type is None)
        self._final = self.totals()

    def totals(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) so far, earlier parts included; after the run, its totals."""
        if self._final is not None:
            return self._final
        return (self.earlier_wall + time.perf_counter() - self._start,
                self.earlier_cpu + cpu_seconds() - self._cpu_start)

    def _save(self, finished: bool = False) -> None:
        wall, cpu = self.totals()
        try:
            atomic_write(self.path, json.dumps({"wall_seconds": wall, "cpu_seconds": cpu, "parts": self.parts,
                                                "cpus": self.cpus, "finished": finished}))
        except OSError as err:  # a full disk must not cost the run its row: only a later resume's sum
            warnings.warn(f"{self.path} could not be written ({err}): a resumed run would under-count its "
                          "minutes.", stacklevel=2)

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._save()


def run_task(task: str, recipe: Path, data_dir: Path, settings: QualitySettings, machine: dict[str, str],
             command: str) -> dict:
    """Trains ``task``'s ``recipe`` on ``data_dir`` and returns its table row (accuracy, minutes, target).

    Data, run and recipe paths are written repository-relative (``display_path``).
    """
    from tf_models.train.training import train

    target = TARGETS[task]
    run_dir = settings.runs_dir / task
    if run_dir.exists() and not settings.resume:
        shutil.rmtree(run_dir)  # a leftover backup/ would otherwise resume an old run
    clock = RunClock(settings.runs_dir / f"{task}.clock.json", settings.resume, cpu=machine["cpu"])
    # Relative paths: they end up in results files, which must not carry this machine's paths.
    config = dataclasses.replace(TrainConfig.load(recipe), data_dir=display_path(data_dir), out=display_path(run_dir))
    if settings.epochs is not None:
        config = dataclasses.replace(config, epochs=settings.epochs)
    print(f"[quality] {task}: {config.backbone} {config.mode} {config.input_size} x {config.epochs} epochs "
          f"on {data_dir}")
    with clock:
        metrics = train(config, verbose=2).metrics
    wall_seconds, cpu_total = clock.totals()
    minutes = wall_seconds / 60
    # CPU time / cores: what the run would take on this machine with nobody else on it. Wall time
    # alone depends on how busy the (shared) machine was.
    idle_minutes = cpu_total / len(os.sched_getaffinity(0)) / 60
    extra = {}
    if task == "identity":  # the app names people by the gallery: report that accuracy and the open-set rates
        extra = identity_extras(Path(config.out), config, settings.out.parent / "openset" / data_dir.name)
    return {
        "task": task, "data": data_dir.name, "backbone": config.backbone, "mode": config.mode,
        "input_size": "x".join(map(str, metrics["input_size"])), "epochs": metrics["epochs_run"],
        "test_images": metrics["n"], "accuracy": round(metrics["accuracy"], 4),
        "balanced_accuracy": round(metrics["balanced_accuracy"], 4), "target": target,
        "accuracy_met": metrics["accuracy"] >= target, "wall_minutes": round(minutes, 1),
        "cpu_minutes_per_core": round(idle_minutes, 1), "parts": clock.parts,
        "budget_minutes": settings.budget_minutes,
        "within_budget": min(minutes, idle_minutes) <= settings.budget_minutes,
        "recipe": display_path(recipe), "command": f"`{command}`",
        # The minutes are this CPU's (the same recipe takes 2-3x longer on another); every CPU the parts ran on.
        "cpu": " + ".join(dict.fromkeys(c for c in clock.cpus if c)),
        "date": machine["date (UTC)"], "load_at_start": machine["load average at start (1/5/15 min)"], **extra,
    }


def write_tables(rows: list[dict], out: Path, machine: dict[str, str]) -> pd.DataFrame:
    """benchmark_quality.{csv,md} under ``out``, keeping the rows of tasks not run this time."""
    frame = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "benchmark_quality.csv"
    if previous.is_file():  # keep the other tasks' rows from an earlier run (one task at a time)
        kept = pd.read_csv(previous)
        frame = pd.concat([kept[~kept["task"].isin(frame["task"])], frame], ignore_index=True).sort_values("task")
    if "parts" in frame:  # a count (rows of older runs have none): 1, not 1.0
        frame["parts"] = frame["parts"].astype("Int64").astype(object)
    frame.to_csv(out / "benchmark_quality.csv", index=False)
    (out / "benchmark_quality.md").write_text(
        "# Quality on real data\n\n"
        "Written by the command in each row. Accuracy on each run's held-out test split (gender: "
        "identity-disjoint; identity: held-out photos of known people). Minutes: wall time of the whole "
        "run (data checks, training, evaluation); cpu_minutes_per_core: the process's CPU time divided by "
        "the cores, i.e. the wall time on this machine when nobody else uses it (the machine is shared); "
        "parts: the processes the run took (more than 1: interrupted and continued with --resume, every "
        "part's minutes counted). "
        "gender and identity: from scratch, no pretrained weights; gender_faces: fine-tuned from the shipped "
        "face-pretrained weights (weights=\"faces\", no download).\n\n"
        + markdown_table(frame.astype(object).where(frame.notna(), ""))  # blanks, not "nan" (no fillna("") on floats)
        + "\nMachine of the latest run:\n\n" + machine_markdown(machine),
        encoding="utf-8")
    return frame


def identity_extras(run_dir: Path, config: TrainConfig, openset_out: Path) -> dict:
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


def headline(rows: Sequence[dict]) -> str:
    """Each task's accuracy (and nearest-centroid accuracy), its target and its minutes, on one line."""
    return "; ".join(f"{r['task']}: accuracy {r['accuracy']:.4f}"
                     + (f", nearest-centroid {r['gallery_accuracy']:.4f}" if "gallery_accuracy" in r else "")
                     + f" (target {r['target']}) in {r['wall_minutes']} min ({r['cpu_minutes_per_core']} CPU-min/core)"
                     for r in rows)
