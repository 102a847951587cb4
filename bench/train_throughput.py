"""DCGAN training throughput: our trainer vs. two plain loops of the same networks, in one run.

Same images, batch size, step count, resolution and conv stack (G and D have the same layer shapes). The ratio
that matters is (a) against (c), the fastest loop a user could write in a few lines; (b) is the labelled second
row, the example as published:
  (a) ours: `train_dcgan` on the images as one uint8 tensor (what image_shards holds), on the GPU when
      present, random-index batches, bf16 autocast + channels-last on CUDA, hinge loss, DiffAugment and EMA on
      (its defaults: it does more work per step than the baseline, not less);
  (b) baseline, written like pytorch/examples dcgan/main.py: torchvision ImageFolder over PNG files in a temp
      dir, DataLoader with worker processes, Resize/ToTensor/Normalize per image per step, fp32, BCE, a D with
      BatchNorm called separately on real and fake;
  (c) plain loop: (b)'s step, fp32, with the images already a float tensor on the device and random-index batches.
Prints images/s for both and the ratio; on CUDA also the trainer's achieved TFLOP/s (FLOPs of one training step
counted with torch.utils.flop_counter.FlopCounterMode) as a fraction of --peak-tflops. Writes JSON to
bench/results/.

    python bench/train_throughput.py [--images 2048] [--steps 40] [--batch-size 64] [--resolution 32] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator, TrainData, train_dcgan
from imagegen_pipeline.ml.dcgan.sample import render
from imagegen_pipeline.ml.runtime import Runtime, resolve_runtime

REPO = Path(__file__).resolve().parent.parent


def synthetic_images(n: int, resolution: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs (upsampled 4x4 noise), closer to photos than white noise; uint8 (N, H, W, 3)."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.random((n, 3, 4, 4), dtype=np.float32))
    big = torch.nn.functional.interpolate(small, size=resolution, mode="bicubic", align_corners=False)
    return (big.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_image_folder(images: np.ndarray, root: Path) -> None:
    for i, im in enumerate(images):
        d = root / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i:06d}.png")


def run_ours(images: np.ndarray, args, runtime: Runtime, out_dir: Path) -> dict:
    cfg = DCGANConfig(resolution=args.resolution, channels=3, batch_size=args.batch_size, steps=args.steps,
                      sample_every=10**9, checkpoint_every=10**9, log_every=max(args.steps, 1), num_samples=16,
                      compile=args.compile, seed=0, ema_start_step=0)
    data = TrainData(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())  # decoded once, like the shards
    t = time.perf_counter()
    result = train_dcgan(cfg, data, out_dir=out_dir, runtime=runtime)
    report = {"images_per_s": result.images_per_second, "wall_s": time.perf_counter() - t,
              "final_loss_d": result.metrics[-1]["loss_d"], "final_loss_g": result.metrics[-1]["loss_g"]}
    report.update(flops_of_one_step(cfg, data, runtime, out_dir / "flops"))
    return report


def flops_of_one_step(cfg: DCGANConfig, data: TrainData, runtime: Runtime, out_dir: Path) -> dict:
    """FLOPs (forward + backward, G and D) of one step of our trainer, less its one end-of-run sample render."""
    from torch.utils.flop_counter import FlopCounterMode

    one = cfg.replace(steps=1, num_samples=1, compile=False)
    with FlopCounterMode(display=False) as run:
        train_dcgan(one, data, out_dir=out_dir, runtime=runtime)
    with FlopCounterMode(display=False) as sample:
        render(runtime.to_device(Generator(one)), torch.zeros(1, one.z_dim), runtime=runtime)
    return {"flops_per_step": run.get_total_flops() - sample.get_total_flops()}


# --- baseline: pytorch/examples dcgan/main.py, with the same conv stack as ours ---------------------------------

class BaselineG(nn.Module):
    def __init__(self, nz: int, ngf: int, nc: int, resolution: int):
        super().__init__()
        mults = [8, 4, 2, 1] if resolution == 64 else [4, 2, 1]
        layers, c_in = [], nz
        for i, m in enumerate(mults):
            layers += [nn.ConvTranspose2d(c_in, ngf * m, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                       nn.BatchNorm2d(ngf * m), nn.ReLU(True)]
            c_in = ngf * m
        self.main = nn.Sequential(*layers, nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z):
        return self.main(z)


class BaselineD(nn.Module):
    def __init__(self, ndf: int, nc: int, resolution: int):
        super().__init__()
        mults = [1, 2, 4, 8] if resolution == 64 else [1, 2, 4]
        layers, c_in = [], nc
        for i, m in enumerate(mults):
            layers += [nn.Conv2d(c_in, ndf * m, 4, 2, 1, bias=False)] + \
                      ([nn.BatchNorm2d(ndf * m)] if i else []) + [nn.LeakyReLU(0.2, inplace=True)]
            c_in = ndf * m
        self.main = nn.Sequential(*layers, nn.Conv2d(c_in, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, x):
        return self.main(x).view(-1, 1).squeeze(1)


def weights_init(m):
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif name.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class PlainDCGAN:
    """The example's networks, losses and optimisers, one training step at a time (both baselines share it)."""

    nz = 100

    def __init__(self, args, device: torch.device):
        torch.manual_seed(0)
        self.device = device
        self.netG = BaselineG(self.nz, 64, 3, args.resolution).to(device)
        self.netG.apply(weights_init)
        self.netD = BaselineD(64, 3, args.resolution).to(device)
        self.netD.apply(weights_init)
        self.criterion = nn.BCELoss()
        self.optimizerD = torch.optim.Adam(self.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optimizerG = torch.optim.Adam(self.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def step(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        netD, netG, criterion = self.netD, self.netG, self.criterion
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        batch_size = real.size(0)
        label = torch.full((batch_size,), 1.0, dtype=real.dtype, device=self.device)
        output = netD(real)
        errD_real = criterion(output, label)
        errD_real.backward()
        noise = torch.randn(batch_size, self.nz, 1, 1, device=self.device)
        fake = netG(noise)
        label.fill_(0.0)
        output = netD(fake.detach())
        errD_fake = criterion(output, label)
        errD_fake.backward()
        errD = errD_real + errD_fake
        self.optimizerD.step()
        # (2) Update G network: maximize log(D(G(z)))
        netG.zero_grad()
        label.fill_(1.0)
        output = netD(fake)
        errG = criterion(output, label)
        errG.backward()
        self.optimizerG.step()
        return errD, errG


def _timed(batches, model: PlainDCGAN, steps: int) -> dict:
    """images/s over steps 2..N (the first is warm-up, as in the trainer's own figure)."""
    step, images, t_first, t = 0, 0, None, time.perf_counter()
    while step < steps:
        for real in batches():
            errD, errG = model.step(real)
            step += 1
            if t_first is None:
                _sync(model.device)
                t_first = time.perf_counter()
            else:
                images += real.size(0)
            if step >= steps:
                break
    _sync(model.device)
    elapsed = time.perf_counter() - t_first
    return {"images_per_s": images / elapsed if elapsed > 0 else 0.0, "wall_s": time.perf_counter() - t,
            "final_loss_d": errD.item(), "final_loss_g": errG.item()}


def run_baseline(folder: Path, args, device: torch.device) -> dict:
    """pytorch/examples dcgan/main.py as written: ImageFolder + DataLoader workers, per-image transforms."""
    import torchvision.datasets as dset
    import torchvision.transforms as transforms

    model = PlainDCGAN(args, device)
    dataset = dset.ImageFolder(root=str(folder), transform=transforms.Compose([
        transforms.Resize(args.resolution), transforms.CenterCrop(args.resolution), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    return _timed(lambda: (data[0].to(device) for data in loader), model, args.steps)


def run_plain_resident(images: np.ndarray, args, device: torch.device) -> dict:
    """The simplest fast loop a user could write: the same example step, fp32, with every image already a
    float tensor on the device and batches drawn by random index (no loader, no per-step host work)."""
    model = PlainDCGAN(args, device)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)  # (N, 3, R, R)

    def batches():
        while True:
            yield data[torch.randint(len(data), (args.batch_size,), device=device)]
    return _timed(batches, model, args.steps)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2048, help="synthetic training images")
    ap.add_argument("--steps", type=int, default=40, help="training steps for each side (first one is warm-up)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=32, choices=(32, 64))
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=2, help="baseline DataLoader worker processes")
    ap.add_argument("--compile", action="store_true", help="torch.compile our trainer (CUDA only)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="device peak (H100 SXM bf16 dense: 989)")
    ap.add_argument("--out", type=Path, help="JSON path (default bench/results/train_throughput_<device>.json)")
    args = ap.parse_args()
    runtime = resolve_runtime(args.device)
    images = synthetic_images(args.images, args.resolution)
    with tempfile.TemporaryDirectory(prefix="imagegen-train-bench-") as tmp:
        tmp = Path(tmp)
        write_image_folder(images, tmp / "folder")
        ours = run_ours(images, args, runtime, tmp / "run")
        plain = run_plain_resident(images, args, runtime.device)
        base = run_baseline(tmp / "folder", args, runtime.device)
    report = {"device": runtime.describe(), "images": args.images, "steps": args.steps,
              "batch_size": args.batch_size, "resolution": args.resolution, "baseline_workers": args.workers,
              "compile": args.compile, "ours": ours, "plain_resident": plain, "baseline": base,
              "speedup_vs_plain_resident": ours["images_per_s"] / plain["images_per_s"],
              "speedup": ours["images_per_s"] / base["images_per_s"]}
    flops_per_s = ours["flops_per_step"] * ours["images_per_s"] / args.batch_size
    report["ours"]["achieved_tflops"] = flops_per_s / 1e12
    if runtime.is_cuda:
        report["ours"]["fraction_of_peak"] = flops_per_s / 1e12 / args.peak_tflops
        report["peak_tflops"] = args.peak_tflops
    out = args.out or REPO / "bench" / "results" / f"train_throughput_{runtime.device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"device: {report['device']['device_name']} ({report['device']['amp_dtype']}), "
          f"{args.images} images {args.resolution}x{args.resolution}, batch {args.batch_size}, {args.steps} steps")
    print(f"ours     (uint8 tensor on device, random-index batches): {ours['images_per_s']:>9.1f} img/s")
    print(f"plain    (example's step, fp32, float data on device)  : {plain['images_per_s']:>9.1f} img/s")
    print(f"baseline (ImageFolder + DataLoader x{args.workers}, fp32, BCE)  : {base['images_per_s']:>9.1f} img/s")
    print(f"vs plain: {report['speedup_vs_plain_resident']:.2f}x   vs DataLoader example: {report['speedup']:.2f}x   ours: {ours['flops_per_step'] / 1e9:.2f} GFLOP/step, "
          f"{report['ours']['achieved_tflops']:.3f} TFLOP/s"
          + (f" = {report['ours']['fraction_of_peak']:.1%} of {args.peak_tflops:g}" if runtime.is_cuda else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
