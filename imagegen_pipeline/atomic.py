"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

NEARLY_FULL = 1 << 20  # bytes free below which a failed write is put down to a full disk


class DiskFull(OSError):
    """A write failed because its file system is full; the message names the mount point and the file."""


def mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _full_disk(exc: BaseException, where: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:  # torch.save and pyarrow report ENOSPC as their own errors: judge by the space left
        return shutil.disk_usage(where).free < NEARLY_FULL
    except OSError:
        return False


def _size_limit(exc: BaseException, tmp: Path) -> int | None:
    """The file size limit (ulimit -f, in bytes) that stopped a write, or None. torch.save loses the EFBIG, so a
    temp file that reached the limit tells it too."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return limit
    try:
        return limit if tmp.stat().st_size >= limit else None
    except OSError:
        return None


def require_free_space(path: Path, min_free: int = 32 << 20) -> None:
    """Refuse to start writing under `path` when its file system has less than `min_free` bytes: DiskFull names
    it now, instead of a write failing later with the store's own words (sqlite: "database or disk is full")."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    if free < min_free:
        mount = mount_point(path)
        raise DiskFull(errno.ENOSPC, f"no space left on {mount}: {free / 2**20:.1f} MiB free, at least "
                                     f"{min_free / 2**20:.0f} MiB needed to start. Free space on {mount} and run "
                                     "again; what is there now is kept")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success fsync it and rename it over `target`. On a full disk the
    old `target` stays as it was and DiskFull says which file system to free."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except Exception as exc:
        limit = _size_limit(exc, tmp_path)
        if limit is not None:
            raise DiskFull(errno.EFBIG, f"{target} would exceed the file size limit ({limit / 2**20:.1f} MiB, "
                                        "ulimit -f); the previous version of the file is kept. Raise the limit "
                                        "and run again") from exc
        if not _full_disk(exc, target.parent):
            raise
        mount = mount_point(target.parent)
        raise DiskFull(errno.ENOSPC, f"no space left on {mount} (the file system holding {target}); the previous "
                                     f"version of the file is kept. Free space on {mount} and run again") from exc
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(target, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
