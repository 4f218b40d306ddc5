"""The quality benchmark's row: its minutes add up every part of a run that was killed and resumed."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import CELEBA_SAMPLE, REPO_ROOT

from tf_models.bench.quality import QualitySettings, RunClock, run_task, write_tables


def _clock_file(path):
    return json.loads(path.read_text())


def test_run_clock_keeps_its_totals_on_disk_while_running_and_adds_up_resumed_parts(tmp_path):
    path = tmp_path / "gender.clock.json"
    with RunClock(path, resume=False, every=0.02):
        time.sleep(0.15)
        during = _clock_file(path)  # what a kill now would leave
    assert 0 < during["wall_seconds"] < 1.0 and during["parts"] == 1 and not during["finished"]
    first = _clock_file(path)
    assert first["finished"] and first["wall_seconds"] >= 0.15

    # A part killed after 600 s: the next part (--resume) counts it and says the run took 2 processes.
    # Both parts' CPUs are kept: a part on another machine took that machine's minutes.
    path.write_text(json.dumps({"wall_seconds": 600.0, "cpu_seconds": 900.0, "parts": 1, "finished": False,
                                "cpus": ["AMD EPYC"]}))
    with RunClock(path, resume=True, every=60, cpu="Intel Xeon") as clock:
        pass
    wall, cpu = clock.totals()
    assert 600 <= wall < 601 and cpu >= 900 and clock.parts == 2 and _clock_file(path)["parts"] == 2
    assert clock.cpus == _clock_file(path)["cpus"] == ["AMD EPYC", "Intel Xeon"]

    # A clock file from before CPUs were kept: its part ran on a CPU nobody recorded, and the row says so.
    path.write_text(json.dumps({"wall_seconds": 60.0, "cpu_seconds": 90.0, "parts": 1, "finished": False}))
    with RunClock(path, resume=True, cpu="Intel Xeon") as clock:
        pass
    assert clock.cpus == ["unknown CPU", "Intel Xeon"]

    # A finished run leaves nothing to continue; a fresh run ignores what an earlier one left.
    for resume in (True, False):
        with RunClock(path, resume=resume) as clock:
            pass
        assert clock.totals()[0] < 5 and clock.parts == 1


@pytest.mark.slow
def test_a_resumed_benchmark_row_reports_every_part_s_minutes(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # recipes and rows hold repository-relative paths, as the script runs them
    recipe = tmp_path / "tiny_gender.yaml"
    recipe.write_text(f"task: gender\nbackbone: alexnet_bn\nmode: scratch\nweights: none\ninput_size: [72, 72]\n"
                      f"epochs: 1\nbatch_size: 32\ncache_dir: {tmp_path / 'cache'}\n")
    settings = QualitySettings(runs_dir=tmp_path / "runs", out=tmp_path / "results", epochs=None,
                               budget_minutes=30.0, resume=True)
    # An earlier part of this run trained for 40 minutes of wall time (31 of CPU per core) before it was killed.
    cores = len(os.sched_getaffinity(0))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "gender.clock.json").write_text(json.dumps(
        {"wall_seconds": 2400.0, "cpu_seconds": 1860.0 * cores, "parts": 1, "finished": False,
         "cpus": ["another CPU"]}))
    machine = {"cpu": "a CPU", "date (UTC)": "today", "load average at start (1/5/15 min)": "0 / 0 / 0"}
    row = run_task("gender", recipe, CELEBA_SAMPLE, settings, machine, "python scripts/benchmark_quality.py")
    assert row["parts"] == 2 and 40 <= row["wall_minutes"] < 45 and 31 <= row["cpu_minutes_per_core"] < 36
    assert not row["within_budget"]  # 40 wall / 31+ CPU minutes: over the 30-minute budget, as the run really was
    assert 0 <= row["accuracy"] <= 1 and row["recipe"].endswith("tiny_gender.yaml")
    assert row["cpu"] == "another CPU + a CPU"  # both parts' CPUs, in order
    # The table keeps the rows of tasks not run this time (older ones, without parts, stay blank there).
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "benchmark_quality.csv").write_text("task,accuracy\nidentity,0.97\n")
    frame = write_tables([row], tmp_path / "results", machine)
    assert frame["task"].tolist() == ["gender", "identity"]
    gender_line = next(line for line in (tmp_path / "results" / "benchmark_quality.md").read_text().splitlines()
                       if line.startswith("| gender |"))
    columns = [c.strip() for c in next(line for line in (tmp_path / "results" / "benchmark_quality.md").read_text()
                                       .splitlines() if line.startswith("| task |")).split("|")]
    assert gender_line.split("|")[columns.index("parts")].strip() == "2"  # a count, not 2.0
