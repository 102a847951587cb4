"""The torchrun side reports its materialization as one long JSON line; the reader must wait for the whole line."""

from __future__ import annotations

import json
import threading
import time

import pytest

from imagegen_pipeline.defs.pipes_reader import WholeLineFileMessageReader


class Handler:
    """What the reader hands on: the messages, and any framework exception (Dagster's handler logs it)."""

    def __init__(self):
        self.messages, self.errors = [], []

    def handle_message(self, message: dict) -> None:
        self.messages.append(message)

    def report_pipes_framework_exception(self, origin: str, exc_info) -> None:
        self.errors.append(f"{origin}: {exc_info[1]!r}")


def read_while_writing(tmp_path, pieces: list[str]) -> Handler:
    handler = Handler()
    reader = WholeLineFileMessageReader(str(tmp_path / "messages"))
    with reader.read_messages(handler) as params:
        path = params["path"]
        time.sleep(0.1)  # the reader is tailing the empty file
        for piece in pieces:
            with open(path, "a", encoding="utf-8") as fh:  # as dagster_pipes' file channel appends
                fh.write(piece)
            time.sleep(0.2)  # the reader sees each piece on its own, as when the writer is slow
    assert not any("_reader_thread" in t.name for t in threading.enumerate())  # joined when the session closed
    return handler


def test_a_message_line_written_in_pieces_arrives_whole(tmp_path):
    """Issue 29 (a red `make test`): a resumed torchrun run came back without its materialization, because
    Dagster's reader parsed the first piece of the line (JSONDecodeError: Unterminated string)."""
    metadata = {"resumed_from_step": {"raw_value": 5, "type": "int"}, "samples": "x" * 20_000}
    first = json.dumps({"__dagster_pipes_version": "0.1", "method": "log", "params": {"message": "hi"}}) + "\n"
    line = json.dumps({"__dagster_pipes_version": "0.1", "method": "report_asset_materialization",
                       "params": {"asset_key": None, "metadata": metadata, "data_version": None}}) + "\n"
    handler = read_while_writing(tmp_path, [first, line[:1373], line[1373:9000], line[9000:]])
    assert handler.errors == []
    assert [m["method"] for m in handler.messages] == ["log", "report_asset_materialization"]
    assert handler.messages[1]["params"]["metadata"] == metadata


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread re-raises, as Dagster's
def test_a_writer_that_died_mid_line_is_reported_not_hidden(tmp_path):
    line = json.dumps({"__dagster_pipes_version": "0.1", "method": "log", "params": {"message": "x" * 100}})
    handler = read_while_writing(tmp_path, [line[:50]])
    assert handler.messages == [] and len(handler.errors) == 1 and "reader thread" in handler.errors[0]
