"""A Pipes message reader that hands on whole lines only.

Dagster's `PipesFileMessageReader` tails the message file with `readline()`, which also returns a line the writer
has only partly written: a materialization with sample pictures is one long JSON line, written in several pieces.
`json.loads` then fails, the reader thread dies, and the run loses the materialization the training reported
(seen under `make test`'s parallel workers as a resumed torchrun run without its metadata). This reader keeps
the unfinished part until its newline arrives.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable, Iterator

import dagster as dg


def tail_whole_lines(path: str, should_stop: Callable[[], bool], poll_s: float = 0.01) -> Iterator[str]:
    """The lines appended to `path`, each once it is complete; once `should_stop()` and nothing more is there, a
    last unfinished line too (the writer died mid-message: its JSON error is then reported, not hidden)."""
    pending = ""
    with open(path, encoding="utf-8") as stream:
        while True:
            piece = stream.readline()
            if piece:
                pending += piece
                if pending.endswith("\n"):
                    yield pending
                    pending = ""
            elif should_stop():
                if pending.strip():
                    yield pending
                return
            else:
                time.sleep(poll_s)


class WholeLineFileMessageReader(dg.PipesFileMessageReader):
    """`PipesFileMessageReader` whose thread parses a message only once its line is complete."""

    def _reader_thread(self, handler, is_resource_complete) -> None:  # dagster 1.13's hook for the tailing loop
        try:
            for line in tail_whole_lines(self._path, is_resource_complete.is_set):
                handler.handle_message(json.loads(line))
        except Exception:
            handler.report_pipes_framework_exception(f"{self.__class__.__name__} reader thread", sys.exc_info())
            raise
