"""Every on-disk location derives from one data root, so tests and users can point anywhere."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
MAX_DATASET_NAME_LEN = 64


class InvalidDatasetName(ValueError):
    """A dataset (= partition) name that could escape the data root or is not portable."""


def validate_dataset_name(name: str) -> str:
    """Return `name` if it matches `[a-z0-9][a-z0-9_-]*`; raise a clear error otherwise."""
    if not isinstance(name, str) or not DATASET_NAME_RE.fullmatch(name) or len(name) > MAX_DATASET_NAME_LEN:
        raise InvalidDatasetName(
            f"invalid dataset name {name!r}: use lowercase letters, digits, '_' and '-', "
            f"starting with a letter or digit, at most {MAX_DATASET_NAME_LEN} characters "
            "(names become folder names under the data root)"
        )
    return name


def default_home() -> Path:
    """`$IMAGEGEN_HOME` if set, else the repository root."""
    env = os.environ.get("IMAGEGEN_HOME", "").strip()
    return Path(env).expanduser().resolve() if env else REPO_ROOT


# The data root's own files: the stage that writes each one imports its name from here, as does every reader.
MANIFEST_FILE = "manifest.parquet"  # raw_images: one row per landing file
DESCRIPTION_FILE = "description.json"  # image_shards: shape, classes, shard files of the current generation
PROMOTION_FILE = "promotion.json"  # evaluation_report: the last promotion decision


@dataclass(frozen=True)
class DataPaths:
    """The folders of one data root; every per-dataset path validates the dataset name."""

    home: Path

    @classmethod
    def from_home(cls, home: str | os.PathLike | None = None) -> "DataPaths":
        return cls(Path(home).expanduser().resolve() if home else default_home())

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def raw_root(self) -> Path:
        return self.data / "raw"

    @property
    def downloads(self) -> Path:
        return self.data / "downloads"

    @property
    def mlruns(self) -> Path:
        return self.home / "mlruns"

    def _per_dataset(self, kind: str, dataset: str) -> Path:
        return self.data / kind / validate_dataset_name(dataset)

    def raw(self, dataset: str) -> Path:
        return self._per_dataset("raw", dataset)

    def manifest_dir(self, dataset: str) -> Path:
        return self._per_dataset("manifests", dataset)

    def manifest(self, dataset: str) -> Path:
        return self.manifest_dir(dataset) / MANIFEST_FILE

    def shards(self, dataset: str) -> Path:
        return self._per_dataset("shards", dataset)

    def shards_location(self, dataset: str) -> Path | str:
        """Where the stages read a dataset's shards: $IMAGEGEN_SHARDS_URI/<dataset> (e.g. s3://bucket/shards/mnist,
        which image_shards mirrors each generation to) when set, else the local shard folder."""
        remote = os.environ.get("IMAGEGEN_SHARDS_URI", "").strip().rstrip("/")
        return f"{remote}/{validate_dataset_name(dataset)}" if remote else self.shards(dataset)

    def description(self, dataset: str) -> Path:
        return self.shards(dataset) / DESCRIPTION_FILE

    def previews(self, dataset: str) -> Path:
        return self._per_dataset("previews", dataset)

    def models(self, dataset: str) -> Path:
        """Trained weights the next stages read (extractor, exported generators), per dataset."""
        return self._per_dataset("models", dataset)

    def embeddings(self, dataset: str) -> Path:
        return self._per_dataset("embeddings", dataset)

    def checkpoints(self, dataset: str) -> Path:
        """Resumable training state (DCGAN `latest.pt`)."""
        return self._per_dataset("checkpoints", dataset)

    def reports(self, dataset: str) -> Path:
        """Evaluation reports, galleries and cached detector statistics."""
        return self._per_dataset("reports", dataset)

    def detector_cache(self, dataset: str) -> Path:
        """Detector features of real splits (keyed by content and detector, so safe to share): under the dataset's
        reports, or in `$IMAGEGEN_DETECTOR_CACHE` when set, one folder that several data roots (or a team's
        runs on shared storage) fill and reuse instead of each scoring the same real images again."""
        shared = os.environ.get("IMAGEGEN_DETECTOR_CACHE", "").strip()
        return Path(shared).expanduser().resolve() if shared else self.reports(dataset) / "detector_cache"

    def promotion(self, dataset: str) -> Path:
        return self.reports(dataset) / PROMOTION_FILE
