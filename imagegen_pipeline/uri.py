"""Files by local path or URI (file://, s3://, gs://, hdfs://) through pyarrow.fs, for data beyond one disk.

A plain path stays on the local file system with the atomic writes of `atomic.py`. A URI goes to the file system
pyarrow picks for it: S3 needs pyarrow's S3 support (in the wheel) and the usual AWS variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or `?region=` / `?endpoint_override=` in the URI);
an object store's single PUT is already all-or-nothing, so a reader sees the old object or the new one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

Location = str | os.PathLike


def is_uri(location: Location) -> bool:
    return "://" in str(location)


def resolve(location: Location) -> tuple[pafs.FileSystem, str]:
    """The file system and the path inside it."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def join(location: Location, *names: str) -> Location:
    """`location / name`: a Path for a path, a string for a URI (its query, if any, kept at the end)."""
    if not is_uri(location):
        return Path(location).joinpath(*names)
    base, _, query = str(location).partition("?")
    joined = "/".join([base.rstrip("/"), *names])
    return f"{joined}?{query}" if query else joined


def exists(location: Location) -> bool:
    fs, path = resolve(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(location: Location) -> bytes:
    """The whole file; FileNotFoundError (naming the location) when there is none."""
    if not is_uri(location):
        return Path(location).read_bytes()
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"no file at {location}")
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: Location, data: bytes) -> None:
    """Write all of `data` or nothing: a temp file and a rename on disk, one PUT on an object store."""
    fs, path = resolve(location)
    if isinstance(fs, pafs.LocalFileSystem):  # a path or file://: temp file + rename
        from imagegen_pipeline.atomic import write_bytes_atomic

        write_bytes_atomic(Path(path), data)
        return
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def open_input_file(location: Location):
    """A seekable file for readers that take one (Parquet); a plain path stays a path."""
    if not is_uri(location):
        return location
    fs, path = resolve(location)
    return fs.open_input_file(path)
