"""Quality per second: our trainer against the PyTorch DCGAN example's recipe for the same wall-clock time.

Both train on the same uint8 shards (the dataset's train split) on the same device:
  (a) ours: `train_dcgan` with a named preset's DCGAN settings and steps, in the precision the asset picks
      (default cpu-demo: what `make demo` trains), timed;
  (b) the 2016 recipe of pytorch/examples dcgan/main.py, for as many seconds as (a) took: BatchNorm in G and D,
      BCE, Adam 2e-4 / beta1 0.5, ngf = ndf = 64, batch 64, fp32, no EMA, no augmentation, unconditional (the
      example has no labels).
Then each draws `--n` images (ours: labels cycling over the classes) and both are scored by one judge: FID
with the standard Inception against `--n` val images, the real train-vs-val floor at the same N, the share of
dark pixels and the within-label pixel spread as a share of real (for the baseline: overall spread). Prints a
table and the FID ratio baseline / ours (>1 = ours is better); writes JSON and both sample grids to
bench/results/.

    python bench/train_quality.py [--dataset mnist] [--steps N] [--n 1000] [--preset cpu-demo] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from train_throughput import BaselineD, BaselineG, weights_init  # noqa: E402  (the recipe's nets, one copy)

from imagegen_pipeline.defs.dcgan import DcganTrainConfig  # noqa: E402
from imagegen_pipeline.stages.dcgan import model_config  # noqa: E402
from imagegen_pipeline.ml.dcgan import DCGANConfig, TrainData, generate, load_generator, train_dcgan  # noqa: E402
from imagegen_pipeline.ml.dcgan.monitor import pixel_spread, within_label_spread  # noqa: E402
from imagegen_pipeline.ml.dcgan.sample import to_uint8  # noqa: E402
from imagegen_pipeline.ml.grids import image_grid  # noqa: E402
from imagegen_pipeline.ml.metrics import fid_from_features  # noqa: E402
from imagegen_pipeline.ml.metrics.inception import InceptionFeatures  # noqa: E402
from imagegen_pipeline.ml.runtime import Runtime, resolve_runtime  # noqa: E402
from imagegen_pipeline.ml.shard_reader import ShardReader  # noqa: E402
from imagegen_pipeline.presets import preset_run_config  # noqa: E402


def ours_config(preset: str, reader: ShardReader, dataset: str, steps: int | None) -> tuple[DCGANConfig, bool]:
    """The preset's dcgan_checkpoint settings, built as the asset builds them (its steps unless `steps`), and
    whether the asset would train in bf16 on this CPU."""
    over = preset_run_config(preset)["ops"].get("dcgan_checkpoint", {}).get("config", {})
    asset = DcganTrainConfig(**{k: v for k, v in over.items() if k not in ("device", "compile", "conditioning")})
    c, h, _ = reader.shape
    cfg = model_config(asset.to_job(), resolution=h, channels=c, conditioning="class",
                       num_classes=len(reader.class_names), extra={"dataset": dataset})
    return cfg.replace(steps=steps or cfg.steps, sample_every=10**9, checkpoint_every=10**9, log_every=100,
                       num_samples=10), asset.cpu_bf16


def run_ours(cfg: DCGANConfig, data: TrainData, runtime: Runtime, out_dir: Path, n: int) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)  # a checkpoint left by an earlier bench run would be resumed
    result = train_dcgan(cfg, data, out_dir=out_dir, runtime=runtime)
    G, gcfg = load_generator(out_dir / "generator.safetensors", device=runtime.device)
    labels = np.arange(n) % cfg.num_classes
    images = generate(G, gcfg, seeds=list(range(n)), cond=labels, runtime=runtime)
    return {"steps": result.final_step, "images": images, "labels": labels}


def run_baseline(data: TrainData, runtime: Runtime, seconds: float, n: int) -> dict:
    """The example's loop, step for step, on batches drawn from the same in-memory images."""
    device, (c, res) = runtime.device, (data.images.shape[1], data.images.shape[2])
    torch.manual_seed(0)
    netG, netD = BaselineG(100, 64, c, res).to(device), BaselineD(64, c, res).to(device)
    netG.apply(weights_init)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    images, step, deadline = data.images, 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        real = images[torch.randint(len(images), (64,))].to(device).float().div(127.5).sub(1.0)
        netD.zero_grad()
        label = torch.ones(64, device=device)
        criterion(netD(real), label).backward()
        fake = netG(torch.randn(64, 100, 1, 1, device=device))
        criterion(netD(fake.detach()), label.fill_(0.0)).backward()
        opt_d.step()
        netG.zero_grad()
        criterion(netD(fake), label.fill_(1.0)).backward()
        opt_g.step()
        step += 1
    netG.eval()  # the example samples with BatchNorm running statistics
    with torch.no_grad():
        z = torch.stack([torch.randn(100, generator=torch.Generator().manual_seed(s)) for s in range(n)])
        out = np.concatenate([to_uint8(netG(z[i:i + 250, :, None, None].to(device))) for i in range(0, n, 250)])
    return {"steps": step, "images": out, "labels": None}


def judge(images: np.ndarray, labels: np.ndarray | None, real_features: np.ndarray, detector, val: TrainData) -> dict:
    fake = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    real_images, real_labels = val.images.permute(0, 2, 3, 1).numpy(), val.labels.numpy()
    if labels is None:
        spread, real_spread = pixel_spread(images), pixel_spread(real_images)
    else:
        keep = np.isin(real_labels, np.unique(labels))
        spread, real_spread = within_label_spread(images, labels), within_label_spread(real_images[keep],
                                                                                       real_labels[keep])
    return {"fid": fid_from_features(detector.features(fake), real_features), "dark_share": float((images < 10).mean()),
            "within_label_spread_vs_real": float(spread / real_spread)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--home", type=Path, default=REPO, help="data root holding data/shards/<dataset>")
    ap.add_argument("--steps", type=int, default=None, help="our steps (default: the preset's); the recipe then "
                                                             "trains for as long as ours took")
    ap.add_argument("--n", type=int, default=1000, help="samples and val images for FID")
    ap.add_argument("--preset", default="cpu-demo")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    runtime = resolve_runtime(args.device)
    reader = ShardReader(args.home / "data" / "shards" / args.dataset)
    train, val = TrainData(*reader.load_split("train")), TrainData(*reader.load_split("val"))
    pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:args.n]
    val = TrainData(val.images[pick], val.labels[pick])
    detector = InceptionFeatures(runtime=runtime)
    real_features = detector.features(val.images)
    floor_pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:args.n]
    floor = fid_from_features(detector.features(train.images[floor_pick]), real_features)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    cfg, cpu_bf16 = ours_config(args.preset, reader, args.dataset, args.steps)
    ours_runtime = resolve_runtime(args.device, cpu_bf16=cpu_bf16)  # as the asset resolves it
    for name in ("ours", "dcgan_example"):
        t = time.perf_counter()
        if name == "ours":
            out = run_ours(cfg, train, ours_runtime, args.out / "train_quality_run", args.n)
            seconds = time.perf_counter() - t
        else:  # the same wall time as ours took
            out = run_baseline(train, runtime, seconds, args.n)
        rows[name] = {"steps": out["steps"], "train_seconds": round(time.perf_counter() - t, 1),
                      **judge(out["images"], out["labels"], real_features, detector, val)}
        labels = out["labels"]  # a grid of one row per label (10 seeds each), or 100 unconditional samples
        order = (np.concatenate([np.flatnonzero(labels == k)[:10] for k in np.unique(labels)[:10]])
                 if labels is not None else np.arange(min(100, len(out["images"]))))
        image_grid(out["images"][order], nrow=10).save(args.out / f"train_quality_{name}.png")
    report = {"dataset": args.dataset, "device": ours_runtime.describe(), "seconds_each": round(seconds, 1),
              "n": args.n,
              "preset": args.preset, "real_floor_fid": floor, **rows,
              "fid_ratio_baseline_over_ours": rows["dcgan_example"]["fid"] / rows["ours"]["fid"]}
    (args.out / f"train_quality_{runtime.device.type}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.dataset}, {seconds:.0f} s of training each on {runtime.describe()['device_name']}, "
          f"FID at {args.n} samples vs {args.n} val images (real floor {floor:.1f})")
    print(f"{'':15} {'steps':>7} {'FID':>7} {'dark':>6} {'spread/real':>12}")
    for name, r in rows.items():
        print(f"{name:15} {r['steps']:>7} {r['fid']:>7.1f} {r['dark_share']:>6.2f} "
              f"{r['within_label_spread_vs_real']:>12.2f}")
    print(f"FID ratio baseline / ours: {report['fid_ratio_baseline_over_ours']:.2f}x")


if __name__ == "__main__":
    main()
