"""The landing-zone format every importer writes: image files, `labels.csv`, `dataset.json`.

Importers build the folder under a hidden temp name and rename it into place, so the
new-data sensor never sees half a dataset.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from PIL import Image

from imagegen_pipeline.atomic import write_json_atomic
from imagegen_pipeline.paths import DataPaths

LABELS_FILE = "labels.csv"
CAPTIONS_FILE = "captions.csv"
DATASET_FILE = "dataset.json"
SIDECAR_PREFIXES = ("LICENSE", "NOTICE", "README")
SIDECAR_NAMES = frozenset({LABELS_FILE, CAPTIONS_FILE, DATASET_FILE})
# labels.csv column an importer fills for a file it could not turn into an image: ingestion quarantines the row
# with this reason whatever the file's bytes decode to (see LandingWriter.add_refused)
IMPORT_ERROR = "import_error"


def is_sidecar(rel_path: str) -> bool:
    """Top-level files that describe the dataset rather than being images of it."""
    if "/" in rel_path:
        return False
    return rel_path in SIDECAR_NAMES or rel_path.startswith(SIDECAR_PREFIXES)


def walk_files(root: str | os.PathLike) -> Iterator[tuple[str, os.DirEntry]]:
    """Every non-folder entry under `root` as ('/'-separated relative path, entry); symlinks are never followed."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(root, rel_dir)) as it:
            for e in it:
                rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
                if e.is_dir(follow_symlinks=False):
                    stack.append(rel)
                else:
                    yield rel, e


def slug(text: str) -> str:
    """A folder-safe form of a class name ("T-shirt/top" -> "t-shirt-top")."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unnamed"


class DatasetExists(FileExistsError):
    pass


@dataclass
class DatasetDefaults:
    """What `dataset.json` tells `image_shards` when its config leaves a field unset."""

    resolution: int  # square side of the shards, in pixels
    channels: str  # "L", "RGB" or "auto" (RGB unless every accepted image is grayscale)
    source: str  # where the files came from, for people
    license: str = ""  # licence of the images, for people
    extra: dict = field(default_factory=dict)


@dataclass
class LandingRow:
    path: str  # relative to the dataset folder, "/"-separated
    label: str | None
    caption: str | None
    extra: dict = field(default_factory=dict)


class LandingWriter:
    """Writes one dataset into a temp folder; `commit()` renames it to `data/raw/<dataset>/`."""

    def __init__(self, paths: DataPaths, dataset: str, *, overwrite: bool = False):
        self.final = paths.raw(dataset)
        if self.final.exists() and not overwrite:
            raise DatasetExists(f"dataset {dataset!r} already exists at {self.final} (use --overwrite to replace it)")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.overwrite = overwrite
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{dataset}.importing-", dir=self.final.parent))
        self.rows: list[LandingRow] = []

    def add_image(self, rel_path: str, image: Image.Image, *, label: str | None, caption: str | None, **extra) -> None:
        target = self.tmp / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, format="PNG", compress_level=1)
        self.rows.append(LandingRow(rel_path, label, caption, extra))

    def add_refused(self, rel_path: str, data: bytes, reason: str, *, label: str | None, caption: str | None,
                    **extra) -> None:
        """Land a source file the importer could not use as it came, with the reason: raw_images then lists it
        as quarantined with that reason, so a broken file in a package is visible, not silently dropped, and
        never stops the import."""
        self.add_file(rel_path, data)
        self.rows.append(LandingRow(rel_path, label, caption, {**extra, IMPORT_ERROR: reason}))

    def add_file(self, rel_path: str, data: bytes) -> None:
        target = self.tmp / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def commit(self, defaults: DatasetDefaults) -> Path:
        if all(r.extra.get(IMPORT_ERROR) for r in self.rows):
            refused = [r for r in self.rows if r.extra.get(IMPORT_ERROR)]
            self.abort()
            raise ValueError("the import produced no images" + (
                f" ({len(refused)} refused, e.g. {refused[0].path}: {refused[0].extra[IMPORT_ERROR]})"
                if refused else ""))
        extra_keys = sorted({k for r in self.rows for k in r.extra})
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label", "caption", *extra_keys])
        for r in self.rows:
            w.writerow([r.path, r.label or "", r.caption or "", *(r.extra.get(k, "") for k in extra_keys)])
        (self.tmp / LABELS_FILE).write_text(buf.getvalue(), encoding="utf-8")
        write_json_atomic(self.tmp / DATASET_FILE, defaults.__dict__)
        return self.publish()

    def publish(self) -> Path:
        """Rename the temp folder into place (replacing an old one only when `overwrite`)."""
        if self.final.exists():
            graveyard = self.final.with_name(f".{self.final.name}.replaced-{os.getpid()}")
            os.replace(self.final, graveyard)
            os.replace(self.tmp, self.final)
            shutil.rmtree(graveyard, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_dataset_defaults(dataset_dir: Path) -> DatasetDefaults | None:
    f = dataset_dir / DATASET_FILE
    if not f.is_file():
        return None
    d = json.loads(f.read_text(encoding="utf-8"))
    return DatasetDefaults(
        resolution=int(d.get("resolution", 64)),
        channels=str(d.get("channels", "auto")),
        source=str(d.get("source", "")),
        license=str(d.get("license", "")),
        extra=dict(d.get("extra", {})),
    )


def read_label_table(dataset_dir: Path) -> dict[str, dict[str, str]]:
    """Merge `labels.csv` and `captions.csv` (columns: path, label?, caption?, ...) by path."""
    table: dict[str, dict[str, str]] = {}
    for name in (LABELS_FILE, CAPTIONS_FILE):
        f = dataset_dir / name
        if not f.is_file():
            continue
        with open(f, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ValueError(f"{f} needs a 'path' column (found {reader.fieldnames})")
            for row in reader:
                path = (row.pop("path") or "").strip().replace("\\", "/")
                if path:
                    table.setdefault(path, {}).update({k: v for k, v in row.items() if k and v not in (None, "")})
    return table

