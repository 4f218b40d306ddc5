"""What the benchmark scripts share: the machine header of every results/ table, CPU time,
percentiles, Markdown tables and repository-relative paths."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from tf_models.cpu import cpu_flags, cpu_model, isa_limits, usable_cores


def machine_info(packages: Sequence[str] = ("tensorflow", "keras")) -> dict[str, str]:
    """CPU model and the ISA flags that decide speed (AVX2 / AVX-512 / VNNI / AMX / ARM dot product),
    cores, load average (how busy the machine was), GPUs and package versions.

    Call it before the benchmark starts, so the load average is the neighbours', not ours.
    """
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    info = {"cpu": cpu_model(), "cpu flags (speed-relevant)": " ".join(cpu_flags()) or "none listed",
            "cores": str(usable_cores()), "load average at start (1/5/15 min)": load,
            "python": platform.python_version()}
    info.update({f"ISA cap {name}": value for name, value in isa_limits().items()})
    for package in packages:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    import tensorflow as tf

    info["gpu"] = ", ".join(d.name for d in tf.config.list_physical_devices("GPU")) or "none"
    info["date (UTC)"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    return info


def machine_markdown(info: dict[str, str]) -> str:
    """``machine_info()`` as a two-column Markdown table."""
    return "| machine | |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in info.items())


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (no tabulate dependency)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + " --- |" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def display_path(path: str | Path) -> str:
    """``path`` relative to the repository root (``../shared/data/...`` for the shared data): results
    files must not carry the paths of the machine they were made on."""
    repo_root = Path(__file__).resolve().parents[1]
    return Path(os.path.relpath(Path(path).resolve(), repo_root)).as_posix()


def cpu_seconds() -> float:
    """CPU seconds of this process, all threads included: neighbours barely move it, unlike wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50, p90, mean, min and max of timings in milliseconds."""
    array = np.asarray(values_ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(array, 50)), "p90_ms": float(np.percentile(array, 90)),
            "mean_ms": float(array.mean()), "min_ms": float(array.min()), "max_ms": float(array.max())}
