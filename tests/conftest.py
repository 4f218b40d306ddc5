"""Shared fixtures. Tests run on CPU with tiny inputs; real data lives in ../shared/data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pathlib import Path

import keras
import pytest

from tf_models import get_backbone, list_backbones

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

ALL_BACKBONES = list_backbones()
MODES = ("transfer", "finetune", "scratch")


def small_input(backbone: str) -> tuple[int, int]:
    """The smallest input each backbone accepts, but never below 32: keeps tests fast."""
    spec = get_backbone(backbone)
    return (max(spec.min_input[0], 32), max(spec.min_input[1], 32))


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Each test starts with a clean Keras graph state and a fixed seed.

    Without Python's full garbage collection, which ``clear_session`` runs by default: a quarter of a
    second per test once TensorFlow's objects fill the heap (two minutes over the suite); Python still
    collects on its own thresholds, and each module's teardown collects in full (below).
    """
    try:
        keras.backend.clear_session(free_memory=False)
    except TypeError:  # a Keras 3 older than its free_memory argument: it collects no garbage anyway
        keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage_after_each_module():
    """The big objects of a module (its trained runs, models, sessions) go when the module ends."""
    yield
    import gc

    gc.collect()


# An AVX2-only x86-64 CPU (no AVX-512, no VNNI, no AMX), emulated by qemu-user (Debian's qemu-user,
# installed by `make test`): what ONNX Runtime's int8 kernels compute on such a machine, whatever
# CPU runs the suite. Haswell-v1 has the same integer units as the AVX2-only AMD EPYCs.
EMULATED_AVX2_CPU = "Haswell-v1"


def run_on_emulated_avx2(code: str, *args: str, timeout: float = 600) -> str:
    """Runs ``python -c code args`` with this venv's Python on an emulated AVX2-only CPU; its stdout.

    Skips where qemu-x86_64 is missing or the host is not x86-64 (ARM machines have no AVX2 to emulate).
    """
    import platform
    import shutil
    import subprocess
    import sys

    qemu = shutil.which("qemu-x86_64")
    if platform.machine() not in ("x86_64", "AMD64") or qemu is None:
        pytest.skip("needs qemu-x86_64 on an x86-64 host to emulate an AVX2-only CPU (apt-get install qemu-user)")
    result = subprocess.run([qemu, "-cpu", EMULATED_AVX2_CPU, sys.executable, "-c", code, *args],
                            capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    assert result.returncode == 0, f"emulated run failed:\n{result.stderr[-3000:]}"
    return result.stdout


CELEBA_SAMPLE = REPO_ROOT / "datasets" / "celeba" / "sample"
STUDENTS_SAMPLE = REPO_ROOT / "datasets" / "students" / "sample"


def train_tiny_run(task: str, out: Path, cache_dir: Path, *, epochs: int, **overrides) -> Path:
    """A real run folder on a bundled sample: alexnet_bn from scratch at 72x72, what tests serve and export."""
    from tf_models.config import TrainConfig
    from tf_models.train.training import train

    settings = {"task": task, "data_dir": str(CELEBA_SAMPLE if task == "gender" else STUDENTS_SAMPLE),
                "backbone": "alexnet_bn", "mode": "scratch", "weights": "none", "input_size": (72, 72),
                "epochs": epochs, "batch_size": 32 if task == "gender" else 16, "out": str(out),
                "cache_dir": str(cache_dir)}
    if task == "identity":  # 6 photos per person: one for validation, one for test
        settings.update(val_fraction=0.17, test_fraction=0.17)
    train(TrainConfig(**{**settings, **overrides}), verbose=0)
    return Path(out)


def run_in_threads(work, workers: int) -> list[BaseException]:
    """Runs ``work(worker_index)`` in ``workers`` threads at once; returns what they raised."""
    import threading

    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index)
        except BaseException as err:  # noqa: BLE001 - returned to the test, which asserts none
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
