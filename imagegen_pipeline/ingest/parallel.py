"""An ordered, bounded process-pool map: both cores busy, and never more than a few chunks in memory."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(workers: int) -> int:
    """0 means one worker per available core."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` items (the last may be shorter); a stream is never held in memory beyond one chunk."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def ordered_map(fn: Callable[[T], R], chunks: Iterable[T], *, workers: int, in_flight_per_worker: int = 2) -> Iterator[R]:
    """`map(fn, chunks)` in order; in worker processes when `workers > 1`.

    Uses the `spawn` start method: forking a process that runs Dagster's threads can deadlock.
    """
    if workers <= 1:
        yield from map(fn, chunks)
        return
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(fn, chunk))
            if len(pending) >= workers * in_flight_per_worker:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
