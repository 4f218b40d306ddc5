"""The image cache: memory, disk and none give the same pixels; auto's choice; disk reuse, keys, interrupted writes."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tf_models.data.pipeline as pipeline
from conftest import REPO_ROOT
from tf_models.config import TrainConfig
from tf_models.data.cache import choose_cache, claim_cache_folder, inputs_key
from tf_models.data.pipeline import make_dataset

SAMPLE = REPO_ROOT / "datasets" / "celeba" / "sample"
SIZE = (24, 20)
N = 70


@pytest.fixture
def small_layout(monkeypatch):
    """Several shards (16 images), records (4 images) and windows on a few dozen images."""
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 4 * SIZE[0] * SIZE[1] * 3)
    monkeypatch.setattr(pipeline, "SHARD_CHUNKS", 4)


@pytest.fixture
def images(tmp_path) -> list[str]:
    """N sample photos copied into tmp_path (tests rewrite some of them)."""
    folder = tmp_path / "images"
    folder.mkdir()
    sources = sorted((SAMPLE / "img_align_celeba").glob("*.jpg"))[:N]
    return [str(shutil.copy(source, folder / source.name)) for source in sources]


def _arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def _cache_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mode", ["disk", "none"])
def test_every_mode_yields_the_pixels_and_labels_of_memory(tmp_path, images, small_layout, mode):
    labels = list(range(N))  # one label per image: the label says which image a row is
    cache = tmp_path / "cache" if mode == "disk" else False
    expected_x, expected_y = _arrays(make_dataset(images, labels, SIZE, 8, training=False, cache=True))
    assert expected_y.tolist() == labels

    x, y = _arrays(make_dataset(images, labels, SIZE, 8, training=False, cache=cache))
    np.testing.assert_array_equal(y, expected_y)  # evaluation keeps file order
    np.testing.assert_array_equal(x, expected_x)

    training = make_dataset(images, labels, SIZE, 8, training=True, seed=3, cache=cache, shuffle_buffer=24)
    orders = []
    for _ in range(2):  # the pass that fills the cache, then one that reads it
        x, y = _arrays(training)
        assert sorted(y.tolist()) == labels  # every image exactly once per epoch
        np.testing.assert_array_equal(x[np.argsort(y)], expected_x)
        orders.append(y.tolist())
    assert orders[0] != labels and orders[0] != orders[1]  # shuffled, and afresh each epoch


def test_auto_picks_memory_when_it_fits_else_disk_else_none():
    fits = choose_cache("auto", 100_000, (64, 64), available_bytes=8 * 10**9)
    assert fits.mode == "memory" and "1.23 GB" in fits.reason
    short = choose_cache("auto", 100_000, (64, 64), available_bytes=2 * 10**9, disk_folder="/big",
                         free_disk_bytes=10**12)
    assert short.mode == "disk" and "2.00 GB of memory available" in short.reason
    no_room = choose_cache("auto", 100_000, (64, 64), available_bytes=10**9, disk_folder="/small",
                           free_disk_bytes=10**9)
    assert no_room.mode == "none" and "/small" in no_room.reason
    assert choose_cache("memory", 100_000, (64, 64), available_bytes=1).mode == "memory"  # as asked
    assert short.pipeline_cache("/big") == Path("/big") and fits.pipeline_cache("/x") is True
    assert no_room.pipeline_cache("/x") is False
    with pytest.raises(ValueError, match=r"cache must be one of .* Received: cache='ram'"):
        choose_cache("ram", 1, (8, 8))
    with pytest.raises(ValueError, match=r"Received: cache='ram'"):
        TrainConfig(cache="ram").validate()


def test_disk_cache_is_reused_for_the_same_inputs_and_never_for_others(tmp_path, images, small_layout):
    labels = [i % 2 for i in range(N)]
    cache = tmp_path / "cache"

    def pixels(files=images, file_labels=labels):
        return _arrays(make_dataset(files, file_labels, SIZE, 8, training=False, cache=cache))

    first, _ = pixels()
    written = _cache_files(cache)
    assert len({name.split("/")[0] for name in written}) == 1  # one folder for one set of inputs

    # Overwrite a file with junk of the same size and modification time: the key is unchanged, so a
    # decode would fail; the run must read the cache instead.
    target = Path(images[5])
    stat = target.stat()
    target.write_bytes(b"\0" * stat.st_size)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again, _ = pixels()
    np.testing.assert_array_equal(again, first)
    assert _cache_files(cache) == written  # nothing rewritten

    # The same bytes with a new modification time are other inputs: decoded afresh (the junk fails to decode).
    os.utime(target)
    with pytest.raises(tf.errors.InvalidArgumentError):
        pixels()
    # A real change (content, size, time) gets a new key: its pixels, not the stale ones.
    shutil.copy(images[6], target)
    changed, _ = pixels()
    np.testing.assert_array_equal(changed[5], first[6])
    assert len({path.parent for path in cache.rglob("*.index")}) == 2  # the first inputs' and the changed ones'
    # Other labels, another size or another order are other inputs too.
    assert inputs_key(images, labels, ["a"]) != inputs_key(images, [1 - v for v in labels], ["a"])
    assert inputs_key(images, labels, ["a"]) != inputs_key(images, labels, ["b"])
    assert inputs_key(images, labels, ["a"]) != inputs_key(images[::-1], labels[::-1], ["a"])


def test_an_interrupted_disk_cache_does_not_break_the_next_run(tmp_path, images, small_layout):
    """A process killed while filling the cache leaves tf.data's lock file; the next run must still work."""
    paths = images * 6  # more shards than the pipeline reads ahead: some are mid-write at any moment
    labels = list(range(len(paths)))
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        import tf_models.data.pipeline as pipeline
        pipeline.CHUNK_BYTES, pipeline.SHARD_CHUNKS = {4 * SIZE[0] * SIZE[1] * 3}, 4
        dataset = pipeline.make_dataset({paths!r}, {labels!r}, {SIZE!r}, 8, training=True,
                                        cache={str(cache)!r}, shuffle_buffer=8)
        for _ in dataset:
            if any(Path({str(cache)!r}).rglob("*.lockfile")):
                os._exit(0)  # like a kill -9, mid-write: no destructor removes the partial files
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(cache.rglob("*.lockfile")), "the killed writer left no lock file: the test sets nothing up"

    expected_x, _ = _arrays(make_dataset(paths, labels, SIZE, 8, training=False, cache=True))
    dataset = make_dataset(paths, labels, SIZE, 8, training=True, cache=cache, shuffle_buffer=8)
    for _ in range(2):  # fills what the killed run left unfinished, then reads it all back
        x, y = _arrays(dataset)
        np.testing.assert_array_equal(x[np.argsort(y)], expected_x)
    assert not list(cache.rglob("*.lockfile")) and not list(cache.rglob("*tempstate*"))


def test_a_cache_another_live_process_is_writing_is_left_alone(tmp_path, images, small_layout):
    labels = [i % 2 for i in range(N)]
    cache = tmp_path / "cache"
    make_dataset(images, labels, SIZE, 8, training=False, cache=cache)  # learn the key folder's name
    (folder,) = cache.iterdir()
    shutil.rmtree(folder)
    from tf_models.data import cache as cache_module

    os.close(cache_module._CLAIMED.pop(folder.resolve()))  # as if this process had never claimed it
    folder.mkdir()
    partial = folder / "shard-00000-of-00005_0.lockfile"
    partial.write_text("Created at: 0")
    other = os.open(folder / ".owner.lock", os.O_RDWR | os.O_CREAT)  # another open file: another owner
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert not claim_cache_folder(folder, [folder / "shard-00000-of-00005"])
        with pytest.warns(UserWarning, match="Another process is writing the image cache"):
            dataset = make_dataset(images, labels, SIZE, 8, training=False, cache=cache)
        x, _ = _arrays(dataset)  # decoded without the cache
        expected_x, _ = _arrays(make_dataset(images, labels, SIZE, 8, training=False))
        np.testing.assert_array_equal(x, expected_x)
        assert partial.is_file()  # the live writer's lock file is not touched
    finally:
        os.close(other)


def test_train_cli_takes_cache_disk_and_says_so(tmp_path, capsys):
    from scripts.train import main, parse_args
    from tf_models.config import config_from_args

    argv = ["--task", "gender", "--data-dir", str(SAMPLE), "--subset", "60", "--backbone", "alexnet_bn",
            "--mode", "scratch", "--weights", "none", "--input-size", "67", "67", "--head-units", "8",
            "--epochs", "1", "--batch-size", "16", "--cache", "disk", "--cache-path", str(tmp_path / "cache"),
            "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "scans")]
    config = config_from_args(parse_args(argv))
    assert config.cache == "disk" and config.cache_path == str(tmp_path / "cache")
    assert main(argv) == 0
    assert "image cache: disk (--cache disk:" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["image_cache"]["mode"] == "disk" and metrics["image_cache"]["setting"] == "disk"
    assert list((tmp_path / "cache").rglob("*.index"))  # the train and val caches were written there
    assert not (tmp_path / "run" / "image_cache").exists()


def test_auto_in_a_run_falls_back_to_disk_when_memory_is_short(tmp_path, monkeypatch, capsys):
    from tf_models.data import cache as cache_module
    from tf_models.train.training import train

    monkeypatch.setattr(cache_module, "available_memory_bytes", lambda: 1 << 20)  # 1 MiB free
    config = TrainConfig(task="gender", data_dir=str(SAMPLE), subset=60, backbone="alexnet_bn", mode="scratch",
                         weights="none", input_size=(67, 67), head_units=(8,), epochs=1, batch_size=16,
                         out=str(tmp_path / "run"), cache_dir=str(tmp_path / "scans")).validate()
    assert config.cache == "auto"
    result = train(config, verbose=0)
    assert "image cache: disk (" in capsys.readouterr().out
    assert result.metrics["image_cache"]["mode"] == "disk"
    assert list((tmp_path / "run" / "image_cache").rglob("*.index"))  # the run folder's, by default


def _needs_shared_celeba() -> None:
    if not (REPO_ROOT.parent / "shared" / "data" / "celeba" / "gender_labels.csv").is_file():
        pytest.skip("needs ../shared/data")


@pytest.mark.slow
def test_bench_cache_writes_a_row_per_mode(tmp_path, capsys):
    """The whole script, pipeline only: a fresh process per mode, then memory and disk side by side."""
    _needs_shared_celeba()
    from scripts.bench_cache import main

    assert main(["--n", "300", "--image-size", "32", "32", "--epochs", "2", "--rounds", "1", "--train-steps", "0",
                 "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")]) == 0
    rows = (tmp_path / "out" / "cache.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["memory", "disk", "none"]
    markdown = (tmp_path / "out" / "cache.md").read_text()
    assert "- cpu:" in markdown and "- cpu flags (speed-relevant):" in markdown
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("300 images at 32x32: peak RSS none") and markdown.rstrip().endswith(last)
    header = rows[0].split(",")
    for row in rows[1:]:
        values = dict(zip(header, row.split(",")))
        assert float(values["peak_rss_gb"]) >= float(values["rss_before_pass1_gb"]) > 0
        assert float(values["later_img_per_s"]) > 0 and values["train_img_per_s"] == ""  # no training asked for
    assert len(list((tmp_path / "work" / "celeba_300" / "img_align_celeba").iterdir())) == 300


@pytest.mark.slow
def test_bench_cache_training_rows_and_the_model_alone(tmp_path):
    """The training measurements, in this process (the script runs each in a fresh one): a mode trains from
    its next pass, the model alone trains on one batch, and the headline says what the mode adds to it."""
    _needs_shared_celeba()
    from tf_models.bench.cache import (
        MODES,
        CacheBenchSettings,
        build_link_dataset,
        headline,
        measure_model_alone,
        measure_mode,
        summary_rows,
    )

    settings = CacheBenchSettings(source_dir=REPO_ROOT.parent / "shared" / "data" / "celeba", labels_csv=None,
                                  x_col="image_id", y_col="Male", n=96, image_size=(32, 32), batch_size=16,
                                  epochs=2, rounds=1, work_dir=tmp_path / "work", train_steps=2, train_warmup=1)
    dataset_dir = build_link_dataset(settings)
    disk = measure_mode(str(dataset_dir), "disk", [32, 32], 16, 2, str(tmp_path / "cache"), train_steps=2,
                        train_warmup=1)
    assert disk["train"]["images"] == 2 * 16 and disk["peak_rss_train"] >= disk["peak_rss"]
    assert list((tmp_path / "cache").rglob("*.index"))  # pass 1 wrote the disk cache the training read
    alone = measure_model_alone([32, 32], 16, train_steps=2, train_warmup=1)
    assert alone["train"]["images"] == 2 * 16 and alone["peak_rss"] >= alone["start_rss"] > 0
    side = {"memory": disk["passes"], "disk": disk["passes"], "train": {mode: [disk["train"]] for mode in MODES}}
    rows = summary_rows(dict.fromkeys(MODES, disk), side, settings.n, 1, alone)
    for row in rows:
        assert row["peak_rss_train_above_model_gb"] == round((disk["peak_rss_train"] - alone["peak_rss"]) / 1e9, 2)
        assert row["train_side_by_side_vs_memory"] == 1.0
    last = headline(rows, settings, alone)
    assert last.startswith("96 images at 32x32: peak RSS none") and "training img/s from pass 2 on vs memory" in last
    assert f"(the model alone, no dataset: {alone['peak_rss'] / 1e9:.2f} GB; none/disk add " in last


def test_side_by_side_ratio_is_paired_by_round():
    """A mode doing 90% of memory's img/s in the same round reads 90%, even when the machine halves its speed
    between memory's turn and its own in one round: the ratio of the two median rounds would read 45%."""
    from tf_models.bench.cache import _paired_ratio, _per_second

    def rounds(images: int, speeds: list[float]) -> list[dict]:
        return [{"images": images, "seconds": 1.0 / speed} for speed in speeds]

    memory = rounds(100, [1.0, 1.0, 1.0, 0.5, 0.5])
    none = rounds(90, [1.0, 1.0, 0.5, 0.5, 0.5])  # the slow-down came between the two turns of round 3
    assert _per_second(none) / _per_second(memory) == pytest.approx(0.45)
    assert _paired_ratio(none, memory) == pytest.approx(0.9)
    assert _paired_ratio(memory, memory) == 1.0
    with pytest.raises(ValueError):  # rounds are paired one to one
        _paired_ratio(none[:4], memory)
