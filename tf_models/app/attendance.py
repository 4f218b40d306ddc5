"""The attendance log: who was present at which session, in SQLite (stdlib ``sqlite3``, WAL mode).

A session is a course and a date. A person is marked present at most once per session: a UNIQUE
constraint on (course, date, name) and ``INSERT OR IGNORE`` make the database itself refuse the
second mark, so concurrent requests (threads of the app, or several app processes) can neither
lose nor double a row, and the first mark's time and confidence are the ones kept.

Every call opens its own short-lived connection: sqlite3 connections must not cross threads or
forked processes, and one per call is cheap next to a face recognition. WAL lets readers (the admin
tab's log view, CSV export) run while a mark is written; ``busy_timeout`` makes a writer wait for
the lock instead of failing with "database is locked".
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import sqlite3
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from tf_models.files import atomic_write

BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another writer's lock before giving up
COLUMNS = ("course", "date", "name", "confidence", "marked_at")  # session_rows() and the CSV, in order
SCHEMA = """
CREATE TABLE IF NOT EXISTS marks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    course TEXT NOT NULL,
    date TEXT NOT NULL,             -- ISO 8601 date of the session, YYYY-MM-DD
    name TEXT NOT NULL,             -- NFC-normalised, stripped
    confidence REAL NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    marked_at TEXT NOT NULL,        -- ISO 8601 time with UTC offset
    UNIQUE (course, date, name)
);
CREATE INDEX IF NOT EXISTS marks_session ON marks (course, date);
"""


def _text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string. Received: {what}={value!r}")
    # One spelling per person and course: macOS and some keyboards give decomposed (NFD) accents.
    return unicodedata.normalize("NFC", value).strip()


def _date(value: str | dt.date) -> str:
    """A session date as 'YYYY-MM-DD' from a ``datetime.date`` or that exact text."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            parsed = dt.date.fromisoformat(value.strip())
        except ValueError:
            parsed = None
        # fromisoformat also takes '20250103' and '2025-W01-5' on Python 3.11+; one form is stored.
        if parsed is not None and parsed.isoformat() == value.strip():
            return parsed.isoformat()
    raise ValueError(f"date must be a datetime.date or text 'YYYY-MM-DD' (e.g. '2025-03-14'). Received: date={value!r}")


def _confidence(value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:  # NaN fails the comparison too
        raise ValueError(f"confidence must be a number in [0, 1]. Received: confidence={value!r}")
    return number


def _timestamp(when: dt.datetime | str | None) -> str:
    """ISO 8601 with the UTC offset; naive times are taken as local time."""
    if when is None:
        when = dt.datetime.now().astimezone()
    elif isinstance(when, str):
        try:
            when = dt.datetime.fromisoformat(when)
        except ValueError:
            raise ValueError(f"when must be a datetime or ISO 8601 text. Received: when={when!r}") from None
    elif not isinstance(when, dt.datetime):
        raise ValueError(f"when must be a datetime, ISO 8601 text or None (now). Received: when={when!r}")
    return when.astimezone().isoformat(timespec="milliseconds")


class AttendanceLog:
    """Attendance marks in one SQLite file; safe to share between threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            # WAL is a property of the file: set once, every later connection uses it.
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"{self.path} could not switch to WAL mode (got {mode!r}); WAL needs a local "
                                   "file system, not a network share.")
            connection.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: autocommit; each statement is its own transaction.
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA synchronous=NORMAL")  # WAL's recommended setting: durable at checkpoints
            yield connection
        finally:
            connection.close()

    def mark(self, course: str, date: str | dt.date, name: str, confidence: float,
             when: dt.datetime | str | None = None) -> bool:
        """Marks ``name`` present at session (course, date). True if newly marked, False if already present.

        The first mark of a session is kept; later ones change nothing. ``when`` defaults to now.
        """
        row = (_text(course, "course"), _date(date), _text(name, "name"), _confidence(confidence), _timestamp(when))
        with self._connect() as connection:
            cursor = connection.execute(
                "INSERT OR IGNORE INTO marks (course, date, name, confidence, marked_at) VALUES (?, ?, ?, ?, ?)", row)
            return cursor.rowcount == 1

    def session_rows(self, course: str, date: str | dt.date) -> pd.DataFrame:
        """The session's marks in the order they were made: columns course, date, name, confidence, marked_at."""
        with self._connect() as connection:
            rows = connection.execute(
                f"SELECT {', '.join(COLUMNS)} FROM marks WHERE course = ? AND date = ? ORDER BY id",
                (_text(course, "course"), _date(date))).fetchall()
        return pd.DataFrame(rows, columns=list(COLUMNS))

    def sessions(self) -> pd.DataFrame:
        """Every session with marks: columns course, date, present (count), latest first."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT course, date, COUNT(*) FROM marks GROUP BY course, date ORDER BY date DESC, course").fetchall()
        return pd.DataFrame(rows, columns=["course", "date", "present"])

    def export_csv(self, course: str, date: str | dt.date, path: str | Path) -> Path:
        """Writes the session's log as UTF-8 CSV (header: course,date,name,confidence,marked_at); returns the path.

        Written to a temporary file and renamed, so a download never gets a half-written log.
        """
        frame = self.session_rows(course, date)
        return atomic_write(path, frame.to_csv(index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n"))

    def __len__(self) -> int:
        with self._connect() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM marks").fetchone()[0])

    def __repr__(self) -> str:
        return f"AttendanceLog({str(self.path)!r})"
