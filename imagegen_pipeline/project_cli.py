"""`imagegen project IMAGE --dataset D`: the registered generator's closest image to IMAGE (latent projection).

The image is decoded, converted and centre-crop-resized exactly as ingestion does for the dataset's shards,
projected (imagegen_pipeline.ml.projection: LPIPS + pixel L2, Adam over z, random restarts, every label of a
class model searched unless --label is given), and written as a strip PNG: original | reconstruction. The
printed distance is the standard ST-LPIPS of the metrics (0 = identical; a low value for an image the model
never saw means the model can draw it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imagegen_pipeline.paths import DataPaths, validate_dataset_name


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `project` to an argparse subparsers object; returns the new parser."""
    p = subparsers.add_parser("project", help="find the generator's closest image to IMAGE (latent projection) "
                                              "and write original | reconstruction as a PNG")
    p.add_argument("image", help="an image file (PNG, JPEG, ...); converted to the model's channels and size")
    p.add_argument("--dataset", required=True, help="whose generator: imagegen-generator-<dataset>")
    p.add_argument("--label", help="class name (or index) for class-conditioned models; default: search every label")
    p.add_argument("--steps", type=int, default=200, help="Adam steps per restart (default 200)")
    p.add_argument("--restarts", type=int, default=4, help="random restarts optimised (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starting points")
    p.add_argument("--out", help="strip PNG to write (default: IMAGE's name + -projection.png in the current folder)")
    p.add_argument("--model-uri", help="an MLflow model URI or a generator.safetensors (or its folder); default "
                                       "models:/imagegen-generator-<dataset>@champion, else @candidate, else "
                                       "data/models/<dataset>/generator.safetensors")
    p.set_defaults(func=cmd_project)
    return p


def load_generator_for(paths: DataPaths, dataset: str, model_uri: str | None = None):
    """(generator, cfg, description): `model_uri` (an MLflow URI, or a local generator.safetensors / its export
    folder), else what `find_generator` finds (the registered generator, else the exported file)."""
    from imagegen_pipeline.ml.dcgan import load_generator
    from imagegen_pipeline.ml.dcgan.export import WEIGHTS_FILE
    from imagegen_pipeline.tracking.registry import find_generator

    local = Path(model_uri) if model_uri else None
    if local is not None and (local.is_file() or (local / WEIGHTS_FILE).is_file()):
        generator, cfg = load_generator(local)
        return generator, cfg, str(local)
    found = find_generator(paths, dataset, model_uri, exported=paths.models(dataset) / WEIGHTS_FILE)
    if isinstance(found, Path):
        generator, cfg = load_generator(found)
        return generator, cfg, str(found)
    inner = found.model.unwrap_python_model()  # serving.generator_model.GeneratorModel after load_context
    return inner.generator, inner.cfg, found.description


def cmd_project(args: argparse.Namespace, paths: DataPaths | None = None) -> int:
    import numpy as np
    import torch

    from imagegen_pipeline.ingest.validate import load_normalized
    from imagegen_pipeline.ml.dcgan.sample import class_index
    from imagegen_pipeline.ml.grids import image_grid, png_bytes
    from imagegen_pipeline.ml.metrics.lpips_weights import VARIANT
    from imagegen_pipeline.ml.projection import project

    paths = paths or DataPaths.from_home(getattr(args, "home", None))
    dataset = validate_dataset_name(args.dataset)
    if args.steps < 0 or args.restarts < 1:
        raise ValueError("--steps must be >= 0 and --restarts >= 1")
    image_path = Path(args.image)
    if not image_path.is_file():
        raise FileNotFoundError(f"no image file {image_path}")
    generator, cfg, description = load_generator_for(paths, dataset, args.model_uri)
    if cfg.conditioning == "text":
        raise ValueError(f"{description} is conditioned on text; projection supports unconditional and class models")
    cond = None
    if args.label is not None:
        if cfg.conditioning != "class":
            raise ValueError(f"{description} is not class-conditioned: drop --label")
        cond = class_index(args.label, list(cfg.extra.get("class_names", [])), cfg.num_classes)
    pixels = load_normalized(image_path, resolution=cfg.resolution, channels="L" if cfg.channels == 1 else "RGB")
    image = torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]  # (1, C, H, W) uint8
    result = project(generator, image, cfg=cfg, cond=cond, steps=args.steps, restarts=args.restarts,
                     search=max(16, args.restarts), seed=args.seed)
    out = Path(args.out) if args.out else Path(f"{image_path.stem}-projection.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    strip = np.stack([pixels, result.reconstructions[0].transpose(1, 2, 0)])  # (2, H, W, C)
    out.write_bytes(png_bytes(image_grid(strip, nrow=2, tile=max(64, cfg.resolution))))
    label = ""
    if result.cond is not None and cfg.conditioning == "class":
        k = int(result.cond[0])
        names = list(cfg.extra.get("class_names", []))
        label = f", label {names[k] if k < len(names) else k}"
    print(f"generator {description}: {VARIANT} distance {result.distances[0]:.4f} (pixel RMSE "
          f"{float(np.sqrt(result.pixel_mse[0])):.4f}{label}); wrote {out} (original | reconstruction)")
    return 0

