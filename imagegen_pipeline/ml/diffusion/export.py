"""The EMA denoiser as a serving artifact: safetensors weights (config in its metadata) plus a JSON twin, read
back as a `DiffusionGenerator` (no pickles)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from imagegen_pipeline.atomic import write_json_atomic
from imagegen_pipeline.ml.checkpoint import load_weights, save_weights
from imagegen_pipeline.ml.diffusion.config import DiffusionConfig
from imagegen_pipeline.ml.diffusion.sampler import DiffusionGenerator

WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "generator.json"
EXPORT_FORMAT = "imagegen-diffusion-generator"


def export_diffusion(denoiser: torch.nn.Module, cfg: DiffusionConfig, out_dir: str | os.PathLike, *,
                     step: int | None = None) -> Path:
    """out_dir/generator.safetensors + generator.json from the (EMA) denoiser; returns the weights path."""
    out_dir = Path(out_dir)
    meta = {"format": EXPORT_FORMAT, "config": json.dumps(cfg.to_dict()), "step": str(step)}
    state = {f"denoiser.{k}": v for k, v in denoiser.state_dict().items()}
    path = save_weights(out_dir / WEIGHTS_FILE, state, metadata=meta)
    write_json_atomic(out_dir / CONFIG_FILE, {"config": cfg.to_dict(), "step": step, "weights": WEIGHTS_FILE,
                                              "format": EXPORT_FORMAT})
    return path


def load_diffusion(path_or_dir: str | os.PathLike, *, device: str | torch.device = "cpu"
                   ) -> tuple[DiffusionGenerator, DiffusionConfig]:
    """A DiffusionGenerator in eval mode from an export (the directory or its .safetensors file)."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not a diffusion export (format {meta.get('format')!r})")
    cfg = DiffusionConfig.from_dict(json.loads(meta["config"]))
    model = DiffusionGenerator(cfg)
    model.load_state_dict(load_weights(path))
    return model.to(device).eval(), cfg
