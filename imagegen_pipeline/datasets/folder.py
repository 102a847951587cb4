"""A user's own ImageFolder (sub-folder = class name, optional captions.csv) copied into the landing zone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from imagegen_pipeline.datasets.landing import DATASET_FILE, DatasetDefaults, LandingWriter
from imagegen_pipeline.atomic import write_json_atomic
from imagegen_pipeline.paths import DataPaths


FICLONE = 0x40049409  # Linux ioctl: share the extents copy-on-write (btrfs, XFS, bcachefs); EOPNOTSUPP elsewhere


def copy_file(src: Path, dst: Path) -> None:
    """An independent copy of `src` (data, mode and times): a reflink where supported, else a byte copy."""
    with open(src, "rb") as fs, open(dst, "xb") as fd:
        try:
            import fcntl

            fcntl.ioctl(fd.fileno(), FICLONE, fs.fileno())
        except (ImportError, OSError):
            shutil.copyfileobj(fs, fd, 1 << 20)
    shutil.copystat(src, dst)


def import_folder(paths: DataPaths, src: Path, *, name: str, resolution: int = 64, overwrite: bool = False,
                  progress=None) -> Path:
    """Copy `src` as it is (reflinks where the file system has them); symlinks stay links so ingestion can judge
    them. Never hard links: editing a source photo would silently change the landing copy and its hash."""
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
                    copy_file(s, d)
                if progress:
                    progress(1)
        if not (writer.tmp / DATASET_FILE).exists():
            write_json_atomic(writer.tmp / DATASET_FILE, DatasetDefaults(
                resolution=resolution, channels="auto", source=f"folder {src}").__dict__)
        return writer.publish()
    except BaseException:
        writer.abort()
        raise
