"""Images from a trained generator: one seed -> one image, always the same one, and interpolation strips."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from imagegen_pipeline.ml.dcgan.config import DCGANConfig
from imagegen_pipeline.ml.runtime import Runtime

CondLike = torch.Tensor | np.ndarray | Sequence[int] | int | None


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1], (N, C, H, W) -> uint8 numpy (N, H, W, C)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def noise_for_seed(seed: int, z_dim: int) -> torch.Tensor:
    """z for one seed, drawn on CPU so the same seed gives the same z on every machine."""
    return torch.randn(z_dim, generator=torch.Generator().manual_seed(int(seed)))


def as_cond(cfg: DCGANConfig, cond: CondLike, n: int) -> torch.Tensor | None:
    """Labels (int, list, array, tensor) or text conditions (one or N of `cfg.text_shape`; (N, K, *text_shape):
    K concepts composed, for diffusion) -> the tensor G wants; one value is repeated for all n images."""
    if cfg.conditioning == "none" or cond is None:
        return None
    if cfg.conditioning == "class":
        t = torch.as_tensor(cond, dtype=torch.int64).reshape(-1)
    else:
        t = torch.as_tensor(np.asarray(cond, dtype=np.float32))
        shape = cfg.text_shape  # (D,) pooled or (L, D) tokens; one more axis is K concepts composed
        t = t if t.ndim == len(shape) + 2 else t.reshape(-1, *shape)
    if len(t) == 1:
        t = t.expand(n, *t.shape[1:])
    if len(t) != n:
        raise ValueError(f"got {len(t)} conditions for {n} images")
    if cfg.conditioning == "class" and (t.min() < 0 or t.max() >= cfg.num_classes):
        raise ValueError(f"class labels must be in [0, {cfg.num_classes}), got {t.tolist()}")
    return t


@torch.no_grad()
def render(generator: nn.Module, z: torch.Tensor, cond: torch.Tensor | None = None, *,
           runtime: Runtime | None = None, chunk: int = 16) -> np.ndarray:
    """Run G so that an image depends only on its own z and cond: eval mode (BatchNorm running stats), fp32,
    every chunk padded to the same shape, and cuDNN without autotuning, so batch-mates, batch size and
    kernel choice cannot change a pixel."""
    device = runtime.device if runtime else next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    out = []
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False, deterministic=True,
                                        allow_tf32=False):
            for i in range(0, len(z), chunk):
                zc, k = z[i:i + chunk], len(z[i:i + chunk])
                cc = None if cond is None else cond[i:i + chunk]
                if k < chunk:
                    zc = torch.cat([zc, zc.new_zeros(chunk - k, zc.shape[1])])
                    cc = None if cc is None else torch.cat([cc, cc[:1].expand(chunk - k, *cc.shape[1:])])
                x = generator(zc.to(device, torch.float32), None if cc is None else cc.to(device))
                out.append(to_uint8(x[:k]))
    finally:
        generator.train(was_training)
    return np.concatenate(out) if out else np.zeros((0,), np.uint8)


def class_index(label, class_names: Sequence[str], num_classes: int) -> int:
    """A request's class: its name, or its index written as a number ("7"); ValueError naming the known ones."""
    label = str(label)
    if label in class_names:
        return list(class_names).index(label)
    if label.lstrip("-").isdigit() and 0 <= int(label) < num_classes:
        return int(label)
    raise ValueError(f"unknown label {label!r}; known: {list(class_names)}")


def generate(generator: nn.Module, cfg: DCGANConfig, *, seeds: Sequence[int], cond: CondLike = None,
             runtime: Runtime | None = None) -> np.ndarray:
    """uint8 (N, H, W, C), one image per seed; the same seed (and cond) gives the same image."""
    z = torch.stack([noise_for_seed(s, cfg.z_dim) for s in seeds])
    return render(generator, z, as_cond(cfg, cond, len(seeds)), runtime=runtime)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation: Gaussian z live near a sphere, and the straight line between two cuts inside it."""
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1.0, 1.0))
    if omega.abs() < 1e-6:
        return torch.lerp(a, b, t)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def interpolate(generator: nn.Module, cfg: DCGANConfig, *, seed_a: int, seed_b: int, steps: int = 8,
                cond: CondLike = None, mode: str = "slerp", runtime: Runtime | None = None) -> np.ndarray:
    """A strip of `steps` images walking from seed_a's z to seed_b's z; uint8 (steps, H, W, C)."""
    if mode not in ("slerp", "lerp") or steps < 2:
        raise ValueError("mode must be 'slerp' or 'lerp' and steps >= 2")
    za, zb = noise_for_seed(seed_a, cfg.z_dim), noise_for_seed(seed_b, cfg.z_dim)
    mix = slerp if mode == "slerp" else torch.lerp
    z = torch.stack([mix(za, zb, float(t)) for t in torch.linspace(0, 1, steps)])
    return render(generator, z, as_cond(cfg, cond, steps), runtime=runtime)
