"""Token against pooled caption conditioning on composed emoji: the same shards, steps, batch, seed and judge.

Each preset's generator is trained by the pipeline's own core (`train_diffusion` on the data the
dcgan_checkpoint stage builds: the train split's captions, their variants and, for a token model, their token
states), then judged by `evaluate_composition`: the concept judge's subject / accessory / both-right rates for
the held-out pairs and one seen pair per subject, beside the judge's ceiling on real pictures and chance, and
"a cat with a hat" out of N seeds. `--generator DIR` judges an export instead of training (e.g. the pipeline's
run under data/runs/). Writes bench/results/composition-<preset>.json and each prompt's grid; prints a table.

    python bench/composition.py [--dataset emoji-compose] [--presets cpu-emoji-compose,cpu-emoji-compose-pooled]
                                [--steps N] [--images 8] [--generator DIR]

Needs `imagegen datasets import emoji --compose`, `imagegen ingest emoji-compose --resolution 32` and the
caption_embeddings asset (e.g. from a `make demo-text` run).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

from imagegen_pipeline.defs.dcgan import DcganTrainConfig  # noqa: E402
from imagegen_pipeline.ml.diffusion import load_diffusion, train_diffusion  # noqa: E402
from imagegen_pipeline.ml.runtime import resolve_runtime  # noqa: E402
from imagegen_pipeline.ml.text_encoder import TextEncoder  # noqa: E402
from imagegen_pipeline.paths import DataPaths  # noqa: E402
from imagegen_pipeline.presets import PRESETS  # noqa: E402
from imagegen_pipeline.stages import dcgan as stage  # noqa: E402
from imagegen_pipeline.stages.common import open_shards  # noqa: E402
from imagegen_pipeline.stages.composition_eval import composed_labels, composed_real, evaluate_composition  # noqa: E402
from imagegen_pipeline.ml.evaluation import RealSplit  # noqa: E402


def train(paths: DataPaths, dataset: str, preset: str, steps: int | None, out_dir: Path) -> tuple[Path, float]:
    job = DcganTrainConfig(**PRESETS[preset]["dcgan_checkpoint"]).to_job()
    if steps:
        job.model["steps"] = steps
    reader = open_shards(paths, dataset)
    tokens = int(job.diffusion.get("text_tokens", 0))
    captions = stage._train_captions(paths, dataset, reader, variants=float(job.diffusion.get("alt_caption_p", 0)) > 0,
                                     tokens=tokens)
    cfg = stage._model_config(job, reader, dataset, "text", captions)
    data = stage._train_data(reader, "text", captions, print)
    if job.cpu_threads:
        torch.set_num_threads(job.cpu_threads)
    t = time.perf_counter()
    result = train_diffusion(cfg, data, out_dir=out_dir, runtime=resolve_runtime("cpu"),
                             log=lambda m: print(f"[{preset}] {m}", flush=True),
                             on_step=lambda s, m: print(f"[{preset}] step {s} {m}", flush=True) if s % 500 == 0 else None)
    return result.generator_path, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="emoji-compose")
    p.add_argument("--presets", default="cpu-emoji-compose,cpu-emoji-compose-pooled")
    p.add_argument("--steps", type=int, default=None, help="override the presets' steps (same for each)")
    p.add_argument("--images", type=int, default=8, help="seeds per composition prompt")
    p.add_argument("--generator", default=None, help="judge this diffusion export instead of training")
    p.add_argument("--guidance", default=None,
                   help="comma-separated guidance weights to judge each generator at (default: its own)")
    args = p.parse_args()
    paths = DataPaths(Path(os.environ.get("IMAGEGEN_HOME", REPO)))
    reader = open_shards(paths, args.dataset)
    splits = [RealSplit(*reader.load_split(s), reader.read_column(s, "sha256")) for s in ("train", "val")]
    real = composed_real(composed_labels(paths.manifest(args.dataset)), splits)
    if real is None:
        raise SystemExit(f"{args.dataset} has no composed pictures: `imagegen datasets import emoji --compose`")
    encoder, results = TextEncoder(), REPO / "bench" / "results"
    runs = [("export", None)] if args.generator else [(p, None) for p in args.presets.split(",")]
    for name, _ in runs:
        out = results / f"composition-{name}"
        if args.generator:
            weights, seconds = Path(args.generator), None
        else:
            weights, seconds = train(paths, args.dataset, name, args.steps, out / "run")
        generator, trained_cfg = load_diffusion(weights)
        weights_to_try = [float(w) for w in args.guidance.split(",")] if args.guidance else [trained_cfg.guidance]
        for w in weights_to_try:
            generator.guidance = w  # the sampler reads the generator's own weight (as serving sets it per request)
            judge(name, replace(trained_cfg, guidance=w), generator, real, encoder, splits, args.images,
                  out / f"w{w:g}" if args.guidance else out, results, seconds, weights)


def judge(name, cfg, generator, real, encoder, splits, images, out, results, seconds, weights) -> None:
    """Judge one generator at one guidance weight; write its record and print its row."""
    t = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() // 2))
    record = evaluate_composition(generator, cfg, real, encoder=encoder, train_images=splits[0].images.numpy(),
                                  images_per_prompt=images, seed=0, runtime=resolve_runtime("cpu"),
                                  out_dir=out)
    record.update(preset=name, train_seconds=seconds, judge_seconds=time.perf_counter() - t,
                  config=cfg.to_dict(), generator=str(weights))
    tag = f"{name}-w{cfg.guidance:g}"
    (results / f"composition-{tag}.json").write_text(json.dumps(record, indent=2, default=str))
    s = record["summary"]
    print(f"{tag}: train {seconds or 0:.0f} s; held-out both right {s.get('heldout_both_right'):.3f} "
          f"(real {s.get('heldout_both_right_real'):.3f}, chance {s.get('concept_chance_both'):.4f}); seen "
          f"{s.get('seen_both_right'):.3f} (real {s.get('seen_both_right_real'):.3f}); subject / accessory on "
          f"held-out {s.get('heldout_subject_accuracy'):.3f} / {s.get('heldout_accessory_accuracy'):.3f}; "
          f"'a cat with a hat' {s['cat_with_hat_right']}/{s['cat_with_hat_of']}", flush=True)


if __name__ == "__main__":
    main()
