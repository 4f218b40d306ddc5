"""Where decoded images live between epochs: in memory, in files on disk, or nowhere (decoded every epoch).

``choose_cache`` turns a setting (``auto | memory | disk | none``) into the mode a run uses and a
one-line reason for its log: ``auto`` keeps the decoded images in memory when they take at most
:data:`MEMORY_SHARE` of the memory available now, else on disk (when the disk has room), else nowhere.

A disk cache is a folder per set of inputs (:func:`inputs_key`: every file's path, size and
modification time, its label, the image size and whatever else decides the pixels), so a run with the
same inputs reads what an earlier run wrote and any other input writes afresh. tf.data marks a cache
being written with lock files; a process killed mid-write leaves them behind and every later run would
fail on them, so :func:`claim_cache_folder` removes what a dead writer left (it knows the writer is dead
because the writer's ``flock`` died with it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

try:  # POSIX; elsewhere a cache folder cannot be locked (see claim_cache_folder)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CACHE_MODES = ("auto", "memory", "disk", "none")
# auto: memory when the decoded images take at most this share of the available memory. The rest
# is for the model, its activations, TensorFlow itself (~0.7 GB) and whatever else the machine runs.
MEMORY_SHARE = 0.5
# auto: disk when the cache folder's file system has this much more room than the images need.
DISK_HEADROOM = 1.1
_LOCK_FILE = ".owner.lock"


@dataclass(frozen=True)
class CacheChoice:
    """The cache a run uses and why (printed at run start, recorded in ``metrics.json``)."""

    setting: str  # what was asked for: auto | memory | disk | none
    mode: str  # what the pipeline does: memory | disk | none
    reason: str
    decoded_bytes: int  # the images as uint8 at the model's size
    available_bytes: int | None  # memory available when chosen; None where the OS does not say

    def pipeline_cache(self, folder: str | Path) -> bool | Path:
        """``make_dataset``'s ``cache`` argument: True (memory), False (none) or the disk cache ``folder``."""
        return {"memory": True, "none": False}.get(self.mode, Path(folder))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def decoded_bytes(n_images: int, image_size: Sequence[int]) -> int:
    """Bytes of ``n_images`` decoded RGB uint8 images of ``image_size`` (H, W)."""
    return int(n_images) * int(image_size[0]) * int(image_size[1]) * 3


def available_memory_bytes() -> int | None:
    """Memory this process can still take: Linux's MemAvailable, capped by a container's cgroup limit.

    None where neither is known (not Linux). In a container, MemAvailable is the host's figure: the
    cgroup limit minus what the group already uses is the one that ends the process.
    """
    figures = [_meminfo_available(), _cgroup_room()]
    known = [value for value in figures if value is not None]
    return min(known) if known else None


def choose_cache(
    setting: str,
    n_images: int,
    image_size: Sequence[int],
    *,
    available_bytes: int | None = None,
    disk_folder: str | Path | None = None,
    free_disk_bytes: int | None = None,
) -> CacheChoice:
    """Resolves ``setting`` (one of :data:`CACHE_MODES`) for ``n_images`` decoded at ``image_size``.

    Args:
        setting: auto | memory | disk | none; anything but auto is taken as given.
        n_images: every image the run caches (train + val: each dataset keeps its own copy).
        image_size: (height, width) the images are decoded to.
        available_bytes: memory available now; default: measured (:func:`available_memory_bytes`).
        disk_folder: where a disk cache would go; auto checks its file system's free space.
        free_disk_bytes: free space there; default: measured at ``disk_folder`` (or its nearest parent).
    """
    if setting not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}. Received: cache={setting!r}")
    need = decoded_bytes(n_images, image_size)
    if available_bytes is None:
        available_bytes = available_memory_bytes()
    images = f"{_gb(need)} of decoded images ({n_images:,} x {image_size[0]}x{image_size[1]}x3 uint8)"
    if setting != "auto":
        return CacheChoice(setting, setting, f"--cache {setting}: {images}", need, available_bytes)
    if available_bytes is None:
        return CacheChoice(setting, "memory", f"{images}; available memory unknown on this OS, so memory",
                           need, available_bytes)
    limit = MEMORY_SHARE * available_bytes
    if need <= limit:
        return CacheChoice(setting, "memory", f"{images} fit in {MEMORY_SHARE:.0%} of the "
                           f"{_gb(available_bytes)} of memory available", need, available_bytes)
    too_big = f"{images} exceed {MEMORY_SHARE:.0%} of the {_gb(available_bytes)} of memory available"
    if free_disk_bytes is None and disk_folder is not None:
        free_disk_bytes = _free_disk(Path(disk_folder))
    if free_disk_bytes is not None and need * DISK_HEADROOM > free_disk_bytes:
        return CacheChoice(setting, "none", f"{too_big}, and {disk_folder} has only {_gb(free_disk_bytes)} free: "
                           "decoding every epoch", need, available_bytes)
    return CacheChoice(setting, "disk", f"{too_big}: files in {disk_folder or 'the cache folder'}",
                       need, available_bytes)


def inputs_key(paths: Sequence[str | Path], labels: Sequence[int], parts: Iterable[object]) -> str:
    """Hex digest of everything that decides a disk cache's contents.

    Each file's absolute path, size and modification time (a file rewritten in place gets a new key;
    ``stat`` follows symlinks, so a link pointed elsewhere does too), its label, and ``parts``: image
    size, order, layout, decoder version, whatever else the caller's pixels depend on.
    """
    digest = hashlib.sha256(repr(tuple(parts)).encode())
    for path, label in zip(paths, labels, strict=True):
        absolute = os.path.abspath(os.fspath(path))
        stat = os.stat(absolute)
        digest.update(f"{absolute}\0{stat.st_size}\0{stat.st_mtime_ns}\0{int(label)}\n".encode())
    return digest.hexdigest()


def is_complete(prefix: Path) -> bool:
    """Whether tf.data finished writing the cache file ``prefix`` (its index is written last)."""
    return prefix.with_name(prefix.name + ".index").is_file()


# One open lock file per cache folder this process has claimed: the flock lives as long as the process.
_CLAIMED: dict[Path, int] = {}


def claim_cache_folder(folder: Path, prefixes: Sequence[Path]) -> bool:
    """Makes ``folder`` this process's to write, removing what an interrupted writer left there.

    Returns False when another live process holds it (it is writing the same cache now). The lock is
    an ``flock`` held until this process ends, so a killed writer's lock is gone with it: whatever
    tf.data left for ``prefixes`` (lock files, partial ``tempstate`` files, a data file without its index)
    is then stale and deleted, and tf.data writes those files afresh instead of failing on the lock file.
    Cleaning happens at the first claim in a process only: later datasets of the same process may be
    writing there already, and tf.data discards the partial files of an iterator its own process drops.
    """
    folder = Path(folder).resolve()
    if folder in _CLAIMED:
        return True
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            return False
    _CLAIMED[folder] = handle
    for prefix in prefixes:
        _remove_partial(folder / Path(prefix).name)
    return True


def _remove_partial(prefix: Path) -> None:
    """Deletes tf.data's in-progress files of cache ``prefix``; a complete cache keeps its data and index."""
    # tf.data writes `PREFIX_<n>.lockfile` and `PREFIX_<n>.data-...tempstate...` while filling, then
    # `PREFIX.data-*` and, last, `PREFIX.index`.
    stale = list(prefix.parent.glob(f"{prefix.name}_*"))
    if not is_complete(prefix):
        stale += prefix.parent.glob(f"{prefix.name}.data-*")
    for path in stale:
        path.unlink(missing_ok=True)


def warn_busy(folder: Path) -> None:
    """The warning for a cache folder another live process is writing."""
    warnings.warn(f"Another process is writing the image cache in {folder} (it holds {_LOCK_FILE}); this "
                  "dataset decodes its images every epoch instead. Runs after that one will read the cache.",
                  stacklevel=4)  # the line that called make_dataset


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """A cgroup's memory limit minus its usage (v2, then v1); None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        # v2 says "max" without a limit; v1 says a number near 2**63.
        if limit == "max" or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - usage)
    return None


def _free_disk(folder: Path) -> int | None:
    for candidate in (folder, *folder.resolve().parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"
