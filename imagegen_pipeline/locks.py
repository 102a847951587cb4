"""A cross-process exclusive lock on a file (flock): two CLI runs, or a CLI run and a Dagster run, that write the
same dataset's shards take turns instead of deleting each other's files."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class LockTimeout(RuntimeError):
    """Another process held the lock for longer than we were willing to wait."""


@contextmanager
def exclusive_lock(path: str | os.PathLike, *, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if needed); wait up to `timeout` seconds for another holder,
    then raise LockTimeout naming `what` and the holder's pid. The kernel drops the lock if a holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    raise LockTimeout(f"{what} is busy: another process (pid {holder}) has held {path} for over "
                                      f"{timeout:.0f} s; wait for it to finish, then run again") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
