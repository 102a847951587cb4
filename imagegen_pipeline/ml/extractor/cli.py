"""Fine-tune the extractor on a shard folder without Dagster (GPU boxes, quick experiments), print JSON.

    python -m imagegen_pipeline.ml.extractor.cli --shards data/shards/fashion-mnist --input-size 96 \
        --head-epochs 1 --finetune-epochs 4 --device cuda --embed-all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields

import torch

from imagegen_pipeline.ml.extractor.config import ExtractorConfig
from imagegen_pipeline.ml.extractor.embed import embed_images
from imagegen_pipeline.ml.extractor.train import train_extractor
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.ml.shard_reader import ShardReader


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", required=True)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--embed-all", action="store_true", help="also time embedding every image of both splits")
    p.add_argument("--out", help="write the JSON here too")
    for f in fields(ExtractorConfig):
        if f.type in ("int", "float", "int | None"):
            p.add_argument("--" + f.name.replace("_", "-"), type=float if f.type == "float" else int)
    args = p.parse_args(argv)
    cfg = ExtractorConfig(**{f.name: getattr(args, f.name) for f in fields(ExtractorConfig)
                             if getattr(args, f.name, None) is not None})
    runtime = resolve_runtime(args.device, cpu_channels_last=True)
    reader = ShardReader(args.shards)
    xtr, ytr = reader.load_split("train")
    xva, yva = reader.load_split("val")
    t0 = time.perf_counter()
    report = train_extractor(xtr, ytr, xva, yva, cfg, runtime=runtime, class_names=reader.class_names,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
    out = {"shards": args.shards, "train_images": len(xtr), "val_images": len(xva), **report.summary(),
           "train_seconds": round(time.perf_counter() - t0, 1), "config": cfg.to_dict(), "runtime": runtime.describe(),
           "history": [r for res in (report.finetune, report.baseline) if res for r in res.history]}
    if args.embed_all:
        images = torch.cat([xtr, xva])
        embed_images(report.model, images[:2048], runtime=runtime)  # warm-up
        if runtime.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        emb, _ = embed_images(report.model, images, runtime=runtime, batch_size=cfg.embed_batch_size)
        seconds = time.perf_counter() - t0
        out["embed"] = {"images": len(images), "seconds": round(seconds, 2),
                        "images_per_second": round(len(images) / seconds, 1), "dim": int(emb.shape[1])}
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.out:
        open(args.out, "w").write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
