"""A cross-process exclusive lock on a file (flock): two CLI runs, or a CLI run and a Dagster run, that write the
same dataset's shards take turns instead of deleting each other's files."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class LockTimeout(RuntimeError):
    """Another process held the lock for longer than we were willing to wait."""


@contextmanager
def exclusive_lock(path: str | os.PathLike, *, timeout: float, what: str, holder: str = "") -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if needed); wait up to `timeout` seconds (0: not at all) for
    another holder, then raise LockTimeout naming `what` and the holder: its pid and host, and `holder` (e.g. its
    run), which the file records while held. The kernel drops the lock if a holder dies."""
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
                    other = os.pread(fd, 1024, 0).decode(errors="replace").strip() or "unknown"
                    held = f"has held {path} for over {timeout:.0f} s" if timeout > 0 else f"holds {path}"
                    raise LockTimeout(f"{what} is busy: another process ({other}) {held}; wait for it to finish, "
                                      "then run again") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, ", ".join(filter(None, [f"pid {os.getpid()} on {socket.gethostname()}", holder])).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
