"""A process named by host, pid and start time. A pid alone lies: the kernel reuses it for another program, a zombie
still has one, and a machine sharing the same storage has its own. Workers record themselves this way, and a
worker that must not outlive the process answering for it watches that process and dies with it."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

import psutil

START_TOLERANCE_S = 0.05  # start times are kept to 1/100 s (the kernel counts in clock ticks)


@dataclass(frozen=True)
class ProcessRecord:
    host: str
    pid: int
    started: float | None  # psutil's create_time; None in records written before start times were kept

    @classmethod
    def of(cls, pid: int | None = None) -> ProcessRecord:
        """This process, or the live process `pid` of this host (psutil.NoSuchProcess when there is none)."""
        process = psutil.Process(pid)
        return cls(socket.gethostname(), process.pid, round(process.create_time(), 2))

    @classmethod
    def started_by(cls, pid: int, deadline: float) -> ProcessRecord:
        """The process `pid` of this host if it started by `deadline` (the time of an event it logged); else a
        record that matches no process, since a process started later is another program that got the pid."""
        try:
            started = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            started = -1.0
        return cls(socket.gethostname(), pid, round(started, 2) if started <= deadline + 1 else -1.0)

    @classmethod
    def parse(cls, text: str) -> ProcessRecord:
        """'host:pid:started' (or the older 'host:pid')."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            raise ValueError(f"process record {text!r}: expected 'host:pid:start_time'")
        return cls(parts[0], int(parts[1]), float(parts[2]) if len(parts) == 3 else None)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}" + ("" if self.started is None else f":{self.started:.2f}")

    @property
    def local(self) -> bool:
        """Only this host can tell whether the process lives."""
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """Whether this very process still runs (not a zombie, not a later process with its pid)."""
        if not self.local:
            raise ValueError(f"process {self} runs on {self.host}, not on {socket.gethostname()}: judge it there")
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            return self.started is None or abs(process.create_time() - self.started) <= START_TOLERANCE_S
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # someone else's process, still there
            return True


def kill_this_process_tree() -> None:
    """SIGKILL this process's children (a Pipes/torchrun child, its ranks), wait for them, then this process: what
    a kill of the whole tree looks like, which the atomic checkpoints are made to survive."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=30)
    os.kill(os.getpid(), signal.SIGKILL)


def die_with(owner: ProcessRecord, *, every_s: float = 1.0) -> threading.Thread:
    """Kill this process (and its children) once `owner` is gone. A step process has no parent-death signal of its
    own (its parent may be a forkserver, not its orchestrator), so a thread polls the owner's record instead."""
    if not owner.local:
        raise ValueError(f"cannot watch process {owner} from {socket.gethostname()}: it runs on another host")
    def watch() -> None:
        while owner.alive():
            time.sleep(every_s)
        kill_this_process_tree()

    thread = threading.Thread(target=watch, name=f"die-with-{owner.pid}", daemon=True)
    thread.start()
    return thread
