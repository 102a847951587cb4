"""Checkpoints and exported weights: one dict, written atomically, read back without unpickling code.

`save_checkpoint`/`load_checkpoint` hold training state (state_dicts, optimizer state, step, config, RNG);
`load_checkpoint` uses `weights_only=True`, so a tampered file cannot run code. Model weights that leave the
training loop (MLflow artifacts, the registry) are safetensors: tensors only, nothing executable.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from imagegen_pipeline import uri
from imagegen_pipeline.atomic import atomic_path

CHECKPOINT_VERSION = 1


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file that cannot be read back (truncated, overwritten, not a checkpoint)."""


def previous_path(path: str | os.PathLike) -> Path:
    """Where `save_checkpoint` keeps the generation before the current one: latest.pt -> latest.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path | str:
    """Write `state` (plus a format version) to `path` atomically: a kill leaves the old file or the new one.
    The file it replaces stays as `previous_path(path)`, a fallback when the current one is damaged later.
    `path` may be a URI (s3://...): one PUT of the whole file, through pyarrow.fs."""
    if uri.is_uri(path):
        buf = io.BytesIO()
        torch.save({"format_version": CHECKPOINT_VERSION, **state}, buf)
        uri.write_bytes(path, buf.getvalue())
        return str(path)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format_version": CHECKPOINT_VERSION, **state}, tmp)
        if path.is_file():  # a hard link, then a rename: `path` itself is never missing
            link = path.with_name(f".{path.name}.prev-link")
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)
            except OSError:  # a file system without hard links: copy instead
                shutil.copyfile(path, link)
            os.replace(link, previous_path(path))
    return path


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; tensors, numbers, strings and dicts only. A damaged
    file raises CorruptCheckpoint naming it. `path` may be a URI, read through pyarrow.fs."""
    source = io.BytesIO(uri.read_bytes(path)) if uri.is_uri(path) else Path(path)
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip, pickle and torch errors all mean "cannot use this file"
        raise CorruptCheckpoint(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it is "
                                "truncated or damaged") from exc


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], *,
                 metadata: dict[str, str] | None = None) -> Path:
    """A module's state_dict as safetensors (contiguous CPU copies), written atomically."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_weights(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))
