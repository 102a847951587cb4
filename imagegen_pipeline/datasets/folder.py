"""A user's own ImageFolder (sub-folder = class name, optional captions.csv) copied into the landing zone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from imagegen_pipeline.datasets.landing import DATASET_FILE, DatasetDefaults, LandingWriter
from imagegen_pipeline.atomic import write_json_atomic
from imagegen_pipeline.paths import DataPaths


def import_folder(paths: DataPaths, src: Path, *, name: str, resolution: int = 64, overwrite: bool = False,
                  progress=None) -> Path:
    """Copy `src` as it is (hard links where possible); symlinks stay links so ingestion can judge them."""
    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise NotADirectoryError(f"{src} is not a folder")
    writer = LandingWriter(paths, name, overwrite=overwrite)
    try:
        for root, dirs, files in os.walk(src):
            dirs.sort()
            rel_root = Path(root).relative_to(src)
            (writer.tmp / rel_root).mkdir(parents=True, exist_ok=True)
            for f in sorted(files):
                s, d = Path(root) / f, writer.tmp / rel_root / f
                if s.is_symlink():
                    os.symlink(os.readlink(s), d)
                else:
                    try:
                        os.link(s, d)
                    except OSError:
                        shutil.copy2(s, d)
                if progress:
                    progress(1)
        if not (writer.tmp / DATASET_FILE).exists():
            write_json_atomic(writer.tmp / DATASET_FILE, DatasetDefaults(
                resolution=resolution, channels="auto", source=f"folder {src}").__dict__)
        return writer.publish()
    except BaseException:
        writer.abort()
        raise
