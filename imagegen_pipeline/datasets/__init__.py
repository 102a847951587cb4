"""Importers that put known datasets, or a user's folder, into the landing zone `data/raw/<dataset>/`."""

from __future__ import annotations

from pathlib import Path

from imagegen_pipeline.datasets.emoji import import_emoji
from imagegen_pipeline.datasets.folder import import_folder
from imagegen_pipeline.datasets.idx import FASHION_MNIST, MNIST, SourceNotFound, import_idx_dataset
from imagegen_pipeline.datasets.landing import DatasetExists
from imagegen_pipeline.paths import DataPaths, validate_dataset_name

KNOWN = ("mnist", "fashion-mnist", "emoji")

__all__ = ["KNOWN", "DatasetExists", "SourceNotFound", "import_dataset", "import_folder"]


def import_dataset(kind: str, paths: DataPaths, *, name: str | None = None, source: Path | None = None,
                   limit: int | None = None, train_limit: int | None = None, overwrite: bool = False,
                   progress=None, styles=None) -> Path:
    """Import a known dataset `kind` under the dataset name `name` (default: `kind`); `train_limit` (MNIST and
    Fashion-MNIST) keeps the first N training images and the whole official test split; `styles` (emoji) picks
    the emoji styles ("google,twitter,fluent-flat" or a sequence; default google and twitter)."""
    name = validate_dataset_name(name or kind)
    if styles is not None and kind != "emoji":
        raise ValueError(f"styles are for the emoji dataset, not {kind!r}")
    if kind in ("mnist", "fashion-mnist"):
        spec = MNIST if kind == "mnist" else FASHION_MNIST
        return import_idx_dataset(spec, paths, name=name, source=source, limit=limit, train_limit=train_limit,
                                  overwrite=overwrite, progress=progress)
    if train_limit is not None:
        raise ValueError(f"train_limit needs a dataset with an official train/test split (mnist, fashion-mnist), "
                         f"not {kind!r}")
    if kind == "emoji":
        return import_emoji(paths, name=name, source=source, limit=limit, overwrite=overwrite, progress=progress,
                            **({"styles": styles} if styles is not None else {}))
    raise ValueError(f"unknown dataset {kind!r}; known: {', '.join(KNOWN)} (or `folder PATH` for your own images)")
