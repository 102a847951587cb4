"""What the landing sensor decides, as plain functions: which datasets changed and are ready to ingest.

A dataset is requested once its folder's fingerprint (file count, bytes, newest mtime) has
stayed the same for one sensor tick, so a burst of copies gives one run, not one per file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from imagegen_pipeline.datasets.landing import walk_files
from imagegen_pipeline.paths import DATASET_NAME_RE


@dataclass(frozen=True)
class Fingerprint:
    files: int
    total_bytes: int
    newest_mtime_ns: int

    @property
    def token(self) -> str:
        return hashlib.sha256(f"{self.files}:{self.total_bytes}:{self.newest_mtime_ns}".encode()).hexdigest()[:16]


def fingerprint(folder: Path) -> Fingerprint:
    files = total = newest = 0
    for _, entry in walk_files(folder):
        st = entry.stat(follow_symlinks=False)
        files, total, newest = files + 1, total + st.st_size, max(newest, st.st_mtime_ns)
    return Fingerprint(files, total, newest)


@dataclass
class WatchDecision:
    ready: list[str]  # datasets to ingest now
    skipped: dict[str, str]  # folder name -> why it is ignored
    cursor: dict  # new cursor: {"requested": {ds: token}, "pending": {ds: token}}


def decide(raw_root: Path, cursor: dict, *, manifest_mtime_ns: dict[str, int]) -> WatchDecision:
    """Compare the landing folders with the cursor; `manifest_mtime_ns` marks datasets already ingested."""
    requested = dict(cursor.get("requested", {}))
    pending = dict(cursor.get("pending", {}))
    ready, skipped = [], {}
    entries = sorted(os.scandir(raw_root), key=lambda e: e.name) if raw_root.is_dir() else []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue  # importers build datasets in hidden temp folders
        if not DATASET_NAME_RE.fullmatch(name):
            skipped[name] = "invalid dataset name (use [a-z0-9][a-z0-9_-]*)"
            continue
        fp = fingerprint(Path(entry.path))
        if fp.files == 0:
            skipped[name] = "empty folder"
            continue
        if requested.get(name) == fp.token:
            pending.pop(name, None)
        elif name not in requested and manifest_mtime_ns.get(name, -1) >= fp.newest_mtime_ns:
            requested[name] = fp.token  # ingested before the sensor first saw it
        elif pending.get(name) == fp.token:
            ready.append(name)
            requested[name] = fp.token
            pending.pop(name)
        else:
            pending[name] = fp.token  # changed (or still changing): wait one tick for it to settle
    return WatchDecision(ready, skipped, {"requested": requested, "pending": pending})
