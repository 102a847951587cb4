"""Train a DCGAN on a shard directory, in one process or many:

    python -m imagegen_pipeline.ml.dcgan.train_cli --shards data/shards/mnist --out runs/mnist --steps 5000
    torchrun --nproc_per_node 8 -m imagegen_pipeline.ml.dcgan.train_cli --shards ... --out ... --steps ...

Re-running the same command after a crash or kill resumes from OUT/latest.pt and stops at the same step.
Prints one JSON line with the result on rank 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from imagegen_pipeline.ml.dcgan import ddp
from imagegen_pipeline.ml.dcgan.config import CONDITIONING, LOSSES, DCGANConfig
from imagegen_pipeline.ml.dcgan.train import TrainData, train_dcgan
from imagegen_pipeline.ml.shard_reader import ShardReader

# flag -> DCGANConfig field; a flag left out keeps the --config file's value, then the dataclass default.
FLAGS = {"steps": int, "batch_size": int, "conditioning": str, "z_dim": int, "ngf": int, "ndf": int,
         "lr_g": float, "lr_d": float, "loss": str, "diffaugment": str, "ema_beta": float, "ema_start_step": int,
         "sample_every": int, "checkpoint_every": int, "log_every": int, "num_samples": int, "seed": int,
         "mbstd_group": int}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="shard directory (with description.json), or its URI (s3://...)")
    p.add_argument("--out", required=True, type=Path, help="run directory: latest.pt, samples/, generator.*")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only (0 = all)")
    p.add_argument("--config", type=Path, help="JSON file of DCGANConfig fields; flags override it")
    p.add_argument("--text-embeddings", type=Path, help=".npy (N, text_dim), one row per image of the split")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--compile", action="store_true", help="torch.compile G and D (CUDA only)")
    p.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on a CPU with native bf16 (as the asset)")
    p.add_argument("--no-progress", action="store_true")
    for name, typ in FLAGS.items():
        extra = {"choices": CONDITIONING} if name == "conditioning" else {"choices": LOSSES} if name == "loss" else {}
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None, **extra)
    return p.parse_args(argv)


def load_data(args: argparse.Namespace) -> tuple[TrainData, ShardReader]:
    reader = ShardReader(args.shards)
    images, labels = reader.load_split(args.split)
    text = torch.from_numpy(np.load(args.text_embeddings)).float() if args.text_embeddings else None
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
        text = text[:args.limit] if text is not None else None
    return TrainData(images, labels, text), reader


def build_config(args: argparse.Namespace, data: TrainData, reader: ShardReader) -> DCGANConfig:
    d = json.loads(args.config.read_text()) if args.config else {}
    d.update({k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None})
    c, h, _ = reader.shape
    d.update(resolution=h, channels=c, compile=args.compile or d.get("compile", False))
    d.setdefault("extra", {})["shards"] = str(args.shards)
    if d.get("conditioning") == "class":
        d.setdefault("num_classes", len(reader.class_names))
    if data.text is not None:
        d.setdefault("text_dim", int(data.text.shape[1]))
    return DCGANConfig.from_dict(d)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, runtime = ddp.init_distributed(args.device, cpu_bf16=args.cpu_bf16)
    try:
        data, reader = load_data(args)
        cfg = build_config(args, data, reader)
        bar = None
        if info.is_main and not args.no_progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.steps, desc="dcgan", unit="step", file=sys.stderr)

        def on_step(step: int, m: dict) -> None:
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(loss_d=f"{m['loss_d']:.3f}", loss_g=f"{m['loss_g']:.3f}",
                                ips=f"{m['images_per_second']:.0f}")

        log = (lambda msg: bar.write(msg)) if bar is not None else (lambda msg: print(msg, file=sys.stderr))
        result = train_dcgan(cfg, data, out_dir=args.out, runtime=runtime, on_step=on_step, log=log)
        if bar is not None:
            bar.close()
        if info.is_main:
            print(json.dumps({"final_step": result.final_step, "checkpoint": str(result.checkpoint_path),
                              "generator": str(result.generator_path), "resumed_from": result.resumed_from,
                              "images_per_second": round(result.images_per_second, 1),
                              "world_size": info.world_size, "ranks_agree": result.ranks_agree,
                              "device": str(runtime.device)}), flush=True)
    finally:
        ddp.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
