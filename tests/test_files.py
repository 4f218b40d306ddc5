"""atomic_write: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os

import pytest

from tf_models import files
from tf_models.files import atomic_write


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "scan.csv"
    atomic_write(path, "path,size\na.jpg,1\n")
    atomic_write(path, b"path,size\nb.jpg,2\n")
    assert path.read_text(encoding="utf-8") == "path,size\nb.jpg,2\n"
    assert [p.name for p in path.parent.iterdir()] == ["scan.csv"]  # no temporary file left


def test_a_write_that_dies_midway_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    path = tmp_path / "gallery.json"
    atomic_write(path, '{"names": ["Ana"]}')

    def killed(fd):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", killed)  # the new bytes were written but never made it
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, '{"names": ["Ana", "Bo')
    assert path.read_text(encoding="utf-8") == '{"names": ["Ana"]}'
    assert sorted(os.listdir(tmp_path)) == ["gallery.json"]


def test_a_new_file_gets_the_mode_a_plain_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "scan.csv", "a\n")
        (tmp_path / "plain.csv").write_text("a\n")
    finally:
        os.umask(old)
    assert (tmp_path / "scan.csv").stat().st_mode & 0o777 == (tmp_path / "plain.csv").stat().st_mode & 0o777 == 0o640
