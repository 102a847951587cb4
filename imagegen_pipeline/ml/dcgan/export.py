"""The EMA generator as a serving artifact: safetensors weights (config in its metadata) plus a JSON twin."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from imagegen_pipeline.atomic import write_json_atomic
from imagegen_pipeline.ml.checkpoint import load_weights, save_weights
from imagegen_pipeline.ml.dcgan.config import DCGANConfig
from imagegen_pipeline.ml.dcgan.ddp import unwrap
from imagegen_pipeline.ml.dcgan.models import Generator

WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "generator.json"


def export_generator(generator: torch.nn.Module, cfg: DCGANConfig, out_dir: str | os.PathLike, *,
                     step: int | None = None) -> Path:
    """Write out_dir/generator.safetensors and out_dir/generator.json; return the weights path."""
    out_dir = Path(out_dir)
    meta = {"format": "imagegen-dcgan-generator", "config": json.dumps(cfg.to_dict()), "step": str(step)}
    path = save_weights(out_dir / WEIGHTS_FILE, unwrap(generator).state_dict(), metadata=meta)
    write_json_atomic(out_dir / CONFIG_FILE, {"config": cfg.to_dict(), "step": step, "weights": WEIGHTS_FILE})
    return path


def load_generator(path_or_dir: str | os.PathLike, *, device: str | torch.device = "cpu"
                   ) -> tuple[torch.nn.Module, DCGANConfig]:
    """A generator in eval mode from an export (the directory or its .safetensors file): the DCGAN/VAE
    `Generator`, or a diffusion family's `DiffusionGenerator` (same forward(z, cond) contract), by the export's
    format."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    from imagegen_pipeline.ml.diffusion.export import EXPORT_FORMAT, load_diffusion  # (it imports this module)

    if meta.get("format") == EXPORT_FORMAT:
        return load_diffusion(path, device=device)
    if "config" in meta:
        cfg = DCGANConfig.from_dict(json.loads(meta["config"]))
    elif (path.parent / CONFIG_FILE).is_file():
        cfg = DCGANConfig.from_dict(json.loads((path.parent / CONFIG_FILE).read_text())["config"])
    else:
        raise FileNotFoundError(f"{path} has no config in its metadata and no {CONFIG_FILE} beside it")
    generator = Generator(cfg)
    generator.load_state_dict(load_weights(path))
    return generator.to(device).eval(), cfg
