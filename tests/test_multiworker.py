"""Multi-worker training on TensorFlow's own engine (MultiWorkerMirroredStrategy), as a cluster runs it.

Two worker processes on this machine, each with its ``TF_CONFIG`` (loopback ports), one CPU device and
one op thread, run the same ``scripts/train.py`` command on a tiny gender run. ``TF_MODELS_WORKER_LOG``
makes each worker record the files it was given, its steps and logs per epoch and its final weights.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import keras
import pandas as pd
import pytest
import tensorflow as tf

from conftest import CELEBA_SAMPLE, REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

WORKERS = 2
EPOCHS = 3
BATCH = 16  # the global batch: 8 images per worker and step
SUBSET, SEED = 96, 3
RUN_FLAGS = ["--task", "gender", "--data-dir", str(CELEBA_SAMPLE), "--subset", str(SUBSET), "--seed", str(SEED),
             "--backbone", "alexnet_bn", "--mode", "scratch", "--weights", "none", "--input-size", "67", "67",
             "--head-units", "16", "--epochs", str(EPOCHS), "--batch-size", str(BATCH)]
WAIT_S = 420  # for one start of the cluster (about 100 s on two busy cores)


def _die_with_parent() -> None:
    """Linux: the worker is killed if the test process dies first (its peers would wait for it forever)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Cluster:
    """``WORKERS`` processes of one ``scripts/train.py`` command, ``TF_CONFIG`` telling each its place.

    Worker i runs in ``root/w<i>`` (a relative ``--out`` lands on "its own machine"); each start of the
    cluster has its own worker-log folder. Leaving the ``with`` block kills whatever still runs.
    """

    def __init__(self, root: Path, out: str, cache_dir: Path):
        self.root, self.out, self.cache_dir = root, out, cache_dir
        self.ports = _free_ports(WORKERS)
        self.procs: list[subprocess.Popen] = []
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        cluster = {"worker": [f"127.0.0.1:{port}" for port in self.ports]}
        self.procs = []
        for index in range(WORKERS):
            cwd = self.root / f"w{index}"
            cwd.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_NUM_INTRAOP_THREADS": "1",
                   "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   "TF_MODELS_WORKER_LOG": str(self._log_dir())}
            with self._output(index).open("w") as output:
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *RUN_FLAGS, "--out", self.out,
                     "--cache-dir", str(self.cache_dir)], cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None))

    def events(self, index: int, start: int | None = None) -> list[dict]:
        """What worker ``index`` logged during the given start (default: the latest)."""
        path = self._log_dir(start) / f"worker{index}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            failed = [p.returncode for p in self.procs if p.poll() not in (None, 0)]
            assert not failed, f"a worker failed (exit {failed}) waiting for {what}:\n{self.tails()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.tails()}"
            time.sleep(0.2)

    def wait(self) -> None:
        self.wait_for(lambda: all(p.poll() is not None for p in self.procs), "the workers to finish")

    def kill(self, index: int) -> None:
        self.procs[index].kill()  # SIGKILL: no clean-up of any kind
        self.procs[index].wait()

    def tails(self) -> str:
        return "\n".join(f"--- worker {i}:\n{self._output(i).read_text()[-3000:]}" for i in range(WORKERS))

    def _log_dir(self, start: int | None = None) -> Path:
        return self.root / f"worker_log.start{start or self.starts}"

    def _output(self, index: int) -> Path:
        return self.root / f"w{index}.start{self.starts}.out"

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _event(events: list[dict], name: str) -> dict:
    return next(e for e in events if e["event"] == name)


def _epoch_ends(events: list[dict]) -> dict[int, dict]:
    return {e["epoch"]: e for e in events if e["event"] == "epoch_end"}


def _epoch_begins(events: list[dict]) -> list[int]:
    return [e["epoch"] for e in events if e["event"] == "epoch_begin"]


@pytest.fixture(scope="module")
def train_split(tmp_path_factory) -> tuple[Path, list[str]]:
    """The file-scan cache, made here once so that the workers only read it, and the run's training files."""
    from tf_models.config import TrainConfig, load_table

    cache_dir = tmp_path_factory.mktemp("scan_cache")
    table = load_table(TrainConfig(task="gender", data_dir=str(CELEBA_SAMPLE), subset=SUBSET, seed=SEED,
                                   cache_dir=str(cache_dir)))
    return cache_dir, table.paths_labels("train")[0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, train_split) -> Cluster:
    """An uninterrupted run, ``--out`` relative: each worker has its own folder, as on two machines."""
    with Cluster(tmp_path_factory.mktemp("uninterrupted"), "runs/gender", train_split[0]) as cluster:
        cluster.start()
        cluster.wait()
    assert [p.returncode for p in cluster.procs] == [0] * WORKERS, cluster.tails()
    return cluster


def test_workers_step_together_on_their_own_files_and_only_the_chief_writes(uninterrupted, train_split):
    cluster, train_files = uninterrupted, train_split[1]
    events = [cluster.events(i) for i in range(WORKERS)]

    # Sharded by file: disjoint shards of one size that together are the training split, less the
    # len % WORKERS files that would give one worker a step more than the other.
    shards = [_event(e, "files")["train"] for e in events]
    assert [len(s) for s in shards] == [len(train_files) // WORKERS] * WORKERS
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) <= set(train_files)
    assert not set(_event(events[0], "files")["val"]) & set(_event(events[1], "files")["val"])

    # Lockstep: each epoch, both took the same number of steps (a whole batch of their own files each),
    # their optimizers counted the same steps, and both saw the same all-reduced logs.
    ends = [_epoch_ends(e) for e in events]
    steps = len(shards[0]) // (BATCH // WORKERS)
    for epoch in range(EPOCHS):
        first, second = ends[0][epoch], ends[1][epoch]
        assert first["steps"] == second["steps"] == steps, epoch
        assert first["iterations"] == second["iterations"] == steps * (epoch + 1), epoch
        assert first["logs"] == second["logs"], epoch
    assert sorted(ends[0]) == sorted(ends[1]) == list(range(EPOCHS))

    # One model on both workers, and the one the chief saved.
    finals = [_event(e, "end") for e in events]
    assert finals[0]["weights_sha256"] == finals[1]["weights_sha256"]
    chief_run = cluster.root / "w0" / "runs" / "gender"
    import tf_models.models  # noqa: F401  registers the custom layers that model.keras names
    from tf_models.train.training import weights_checksum

    saved = keras.saving.load_model(chief_run / "model.keras", safe_mode=True, compile=False)
    assert weights_checksum(saved) == finals[0]["weights_sha256"]

    # Only the chief wrote its --out; the other worker wrote to a private folder, removed at the end.
    assert Path(finals[0]["write_dir"]) == chief_run.resolve()
    for name in ("config.yaml", "class_names.json", "model.keras", "backbone.weights.h5", "history.csv",
                 "metrics.json", "data_report.json"):
        assert (chief_run / name).is_file(), name
    assert not (cluster.root / "w1" / "runs").exists()
    assert not Path(finals[1]["write_dir"]).exists()
    assert len(pd.read_csv(chief_run / "history.csv")) == EPOCHS


def test_a_killed_worker_resumes_at_the_last_epoch_and_ends_as_if_never_killed(uninterrupted, train_split,
                                                                              tmp_path):
    out = tmp_path / "shared" / "gender"  # the run folder all workers read (a shared filesystem)
    with Cluster(tmp_path, str(out), train_split[0]) as cluster:
        cluster.start()
        # Epoch 1 begins once epoch 0 is backed up: kill a worker then, in the middle of the run. The chief
        # would wait forever in its next all-reduce (as on a cluster), so it goes down too.
        cluster.wait_for(lambda: 1 in _epoch_begins(cluster.events(0)), "epoch 1")
        cluster.kill(1)
        cluster.kill(0)
        assert (out / "backup" / "phase1.state.npz").is_file() and not (out / "metrics.json").exists()

        cluster.start()  # the same command on both
        cluster.wait()
        assert [p.returncode for p in cluster.procs] == [0] * WORKERS, cluster.tails()

    # Both resumed at epoch 1 (the non-chief from the chief's backup) and ran each later epoch once.
    assert _epoch_begins(cluster.events(0, start=1)) == [0, 1] and 0 in _epoch_ends(cluster.events(0, start=1))
    for index in range(WORKERS):
        assert _epoch_begins(cluster.events(index)) == list(range(1, EPOCHS)), index

    # The run folder holds every epoch once, and everything is the uninterrupted run's, to the bit.
    reference_run = uninterrupted.root / "w0" / "runs" / "gender"
    history, reference = pd.read_csv(out / "history.csv"), pd.read_csv(reference_run / "history.csv")
    columns = [c for c in reference.columns if c != "epoch_seconds"]  # wall time differs, nothing else may
    pd.testing.assert_frame_equal(history[columns], reference[columns], check_exact=True)
    finals = [_event(cluster.events(i), "end") for i in range(WORKERS)]
    expected = _event(uninterrupted.events(0), "end")
    assert finals[0]["weights_sha256"] == finals[1]["weights_sha256"] == expected["weights_sha256"]
    assert finals[0]["metrics"] == expected["metrics"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == EPOCHS
    assert metrics["strategy"] == tf.distribute.MultiWorkerMirroredStrategy.__name__  # CollectiveAllReduceStrategy
