"""Writing a file so that a reader never sees half of it: the suite's caches, galleries and logs.

A process killed mid-write, or two processes writing one cache file, must leave the old file or the
new one, never a truncated mix that a later run would read as data.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Writes ``data`` (str: UTF-8) to a temporary file beside ``path``, fsyncs it, renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would (caches may be shared).
        os.chmod(temp, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)  # atomic on one file system: the temporary file sits in the same folder
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """This process's umask, read without changing it (os.umask sets while it reads: not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


__all__ = ["atomic_write"]
