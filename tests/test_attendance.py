"""Attendance log: once per session, first mark kept, CSV round trip, bad input, threads and processes."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sqlite3
import warnings

import pandas as pd
import pytest
from conftest import run_in_threads

from tf_models.app.attendance import COLUMNS, AttendanceLog

NAMES = ["José Álvarez", "Ayşe Demir", "王小明", "Chloé Dubois", "Dario Šimić", "Ana María López"]


def test_wal_mode_and_unique_schema(tmp_path):
    log = AttendanceLog(tmp_path / "a.sqlite")
    with sqlite3.connect(log.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(log) == 0 and log.sessions().empty
    assert list(log.session_rows("ML", "2025-03-14").columns) == list(COLUMNS)


def test_marked_once_per_session_first_mark_kept(tmp_path):
    log = AttendanceLog(tmp_path / "a.sqlite")
    first = dt.datetime(2025, 3, 14, 9, 0, 5, tzinfo=dt.timezone.utc)
    assert log.mark("ML", "2025-03-14", "José Álvarez", 0.91, when=first) is True
    assert log.mark("ML", dt.date(2025, 3, 14), "José Álvarez", 0.99, when=first + dt.timedelta(minutes=5)) is False
    rows = log.session_rows("ML", "2025-03-14")
    assert len(rows) == 1
    assert rows.loc[0, "confidence"] == 0.91
    assert dt.datetime.fromisoformat(rows.loc[0, "marked_at"]) == first  # ISO 8601 with offset, first time kept
    # Same person, another session (date or course): another row.
    assert log.mark("ML", "2025-03-21", "José Álvarez", 0.8) is True
    assert log.mark("Vision", "2025-03-14", "José Álvarez", 0.8) is True
    assert len(log) == 3
    sessions = log.sessions()
    assert sessions[["course", "date"]].values.tolist() == [["ML", "2025-03-21"], ["ML", "2025-03-14"],
                                                           ["Vision", "2025-03-14"]]
    assert sessions["present"].tolist() == [1, 1, 1]


def test_names_are_normalised(tmp_path):
    import unicodedata

    log = AttendanceLog(tmp_path / "a.sqlite")
    assert log.mark("ML", "2025-03-14", unicodedata.normalize("NFD", "Chloé Dubois"), 0.5)
    assert not log.mark("ML", "2025-03-14", " Chloé Dubois ", 0.6)  # NFC + stripped: the same person
    assert log.session_rows("ML", "2025-03-14")["name"].tolist() == ["Chloé Dubois"]


def test_export_csv_round_trip(tmp_path):
    log = AttendanceLog(tmp_path / "a.sqlite")
    for k, name in enumerate(NAMES):
        log.mark("Visión por computador", "2025-03-14", name, k / 10)
    log.mark("Other", "2025-03-14", "Not in this session", 1.0)
    path = log.export_csv("Visión por computador", "2025-03-14", tmp_path / "out" / "log.csv")
    raw = path.read_bytes()
    assert raw.startswith(b"course,date,name,confidence,marked_at") and "王小明".encode() in raw  # plain UTF-8
    back = pd.read_csv(path, encoding="utf-8")
    expected = log.session_rows("Visión por computador", "2025-03-14")
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert back["name"].tolist() == NAMES
    assert [p.name for p in path.parent.iterdir()] == ["log.csv"]  # the temporary file is gone


@pytest.mark.parametrize("kwargs, message", [
    ({"name": ""}, "name=''"),
    ({"name": "   "}, "name='   '"),
    ({"name": None}, "name=None"),
    ({"course": ""}, "course=''"),
    ({"confidence": 1.5}, "confidence=1.5"),
    ({"confidence": -0.1}, "confidence=-0.1"),
    ({"confidence": float("nan")}, "confidence=nan"),
    ({"confidence": "high"}, "confidence='high'"),
    ({"date": "14/03/2025"}, "date='14/03/2025'"),
    ({"date": "2025-02-30"}, "date='2025-02-30'"),
    ({"date": "20250314"}, "date='20250314'"),
    ({"when": "yesterday"}, "when='yesterday'"),
])
def test_bad_input_is_a_clear_error(tmp_path, kwargs, message):
    log = AttendanceLog(tmp_path / "a.sqlite")
    values = {"course": "ML", "date": "2025-03-14", "name": "Ana", "confidence": 0.9} | kwargs
    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        log.mark(**values)
    assert len(log) == 0


def test_threads_lose_and_double_nothing(tmp_path):
    log = AttendanceLog(tmp_path / "a.sqlite")
    names = [f"Student {k:02d} ñ" for k in range(40)]
    newly = []

    def work(worker: int) -> None:
        for i in range(25):
            # Workers overlap: each name is marked by several threads, in two sessions.
            name = names[(worker * 5 + i) % len(names)]
            date = "2025-03-14" if i % 2 == 0 else "2025-03-15"
            newly.append(log.mark("ML", date, name, 0.5 + worker / 100))

    assert run_in_threads(work, 8) == []
    expected = {(name, "2025-03-14" if i % 2 == 0 else "2025-03-15")
                for w in range(8) for i in range(25) for name in [names[(w * 5 + i) % len(names)]]}
    rows = pd.concat([log.session_rows("ML", d) for d in ("2025-03-14", "2025-03-15")])
    assert sorted(zip(rows["name"], rows["date"])) == sorted(expected)  # every pair once, no pair twice
    assert sum(newly) == len(expected) == len(log)  # mark() said True exactly once per row


def _process_worker(path: str, worker: int, count: int) -> None:
    log = AttendanceLog(path)
    for i in range(count):
        log.mark("ML", "2025-03-14", f"Student {(worker * 7 + i) % 30:02d}", 0.75)
        log.mark("ML", "2025-03-14", f"Own {worker}-{i}", 0.5)  # rows only this process writes


def test_processes_lose_and_double_nothing(tmp_path):
    path = str(tmp_path / "a.sqlite")
    AttendanceLog(path)
    # fork: the children inherit the parent's imports (the test session has TensorFlow loaded); spawn elsewhere.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded process ... fork()": children only use sqlite3
        processes = [multiprocessing.get_context(method).Process(target=_process_worker, args=(path, w, 25))
                     for w in range(4)]
        for process in processes:
            process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * 4
    names = AttendanceLog(path).session_rows("ML", "2025-03-14")["name"].tolist()
    shared = {f"Student {(w * 7 + i) % 30:02d}" for w in range(4) for i in range(25)}
    own = {f"Own {w}-{i}" for w in range(4) for i in range(25)}
    assert len(names) == len(set(names)) == len(shared) + len(own)
    assert set(names) == shared | own
