"""What a benchmark was measured on, for the header of every results/ table."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd


def machine_info(packages: Sequence[str] = ("tensorflow", "keras")) -> dict[str, str]:
    """CPU model, cores, load average (how busy the machine was), GPUs and package versions.

    Call it before the benchmark starts, so the load average is the neighbours', not ours.
    """
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    info = {"cpu": cpu, "cores": str(cores), "load average at start (1/5/15 min)": load,
            "python": platform.python_version()}
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
