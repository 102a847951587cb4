"""DCGAN generator and discriminator (Radford et al. 2016) for 32x32 / 64x64, 1 or 3 channels, with conditioning.

`cond` is None (unconditional), int64 labels (N,) for class conditioning, or float caption embeddings
(N, text_dim) for text conditioning.

The discriminator uses spectral norm instead of BatchNorm: it is what the projection discriminator and the hinge
loss were designed with (Miyato et al. 2018), and without batch statistics D scores each image on its own, so
real, fake and mismatched-caption images can go through D in one concatenated batch (one forward, one DDP
all-reduce) without the mix changing any image's score.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from imagegen_pipeline.ml.dcgan.config import DCGANConfig


def init_dcgan_(module: nn.Module) -> nn.Module:
    """DCGAN init: conv/linear/embedding weights ~ N(0, 0.02); BatchNorm scale ~ N(1, 0.02), shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


def _sn(module: nn.Module) -> nn.Module:
    return spectral_norm(init_dcgan_(module))


def _up(c_in: int, c_out: int, *, first: bool = False) -> nn.Sequential:
    """Transposed conv that doubles the side (or turns a 1x1 code into 4x4), then BatchNorm + ReLU."""
    conv = nn.ConvTranspose2d(c_in, c_out, 4, 1, 0, bias=False) if first else \
        nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(True))


def _down(c_in: int, c_out: int) -> nn.Sequential:
    """Strided conv that halves the side, then LeakyReLU(0.2)."""
    return nn.Sequential(_sn(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True))


def minibatch_stddev(h: torch.Tensor, group: int) -> torch.Tensor:
    """ProGAN's minibatch standard deviation: one extra channel holding how much the images of a small group
    differ. A generator that draws the same picture for every z gives a group std of ~0 there, which D sees at
    once; without it an SN discriminator scores each image alone and cannot see a collapse. Groups are
    consecutive rows, so batches concatenated from whole groups (real | fake) never mix."""
    n, c, hh, ww = h.shape
    g = min(group, n)
    while n % g:
        g -= 1
    s = h.float().view(n // g, g, c, hh, ww)  # (N/G, G, C, H, W): rows k*G .. k*G+G-1 form group k
    s = (s - s.mean(1, keepdim=True)).pow(2).mean(1).add(1e-8).sqrt()  # (N/G, C, H, W)
    s = s.mean((1, 2, 3)).to(h.dtype)  # (N/G,)
    s = s.repeat_interleave(g).view(n, 1, 1, 1).expand(n, 1, hh, ww)  # (N, 1, H, W)
    return torch.cat([h, s], 1)  # (N, C + 1, H, W)


def cond_input_dim(cfg: DCGANConfig) -> int:
    """Length of what is joined to z in G."""
    return {"none": 0, "class": cfg.class_embed_dim, "text": cfg.text_proj_dim}[cfg.conditioning]


def check_cond(cfg: DCGANConfig, cond: torch.Tensor | None, n: int) -> None:
    """Fail at the module boundary with a readable message instead of deep inside a matmul."""
    if cfg.conditioning == "none":
        if cond is not None:
            raise ValueError("unconditional model got a cond tensor")
    elif cond is None:
        raise ValueError(f"{cfg.conditioning}-conditional model needs cond")
    elif cfg.conditioning == "class" and (cond.dtype != torch.int64 or tuple(cond.shape) != (n,)):
        raise ValueError(f"class cond must be int64 labels of shape ({n},), got {cond.dtype} {tuple(cond.shape)}")
    elif cfg.conditioning == "text" and (not cond.is_floating_point() or tuple(cond.shape) != (n, cfg.text_dim)):
        raise ValueError(f"text cond must be float ({n}, {cfg.text_dim}), got {cond.dtype} {tuple(cond.shape)}")


class Generator(nn.Module):
    """z (N, z_dim) [+ cond] -> images (N, channels, res, res) in [-1, 1]."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        ngf, nc = cfg.ngf, cfg.channels
        if cfg.conditioning == "class":
            self.embed = nn.Embedding(cfg.num_classes, cfg.class_embed_dim)
        elif cfg.conditioning == "text":
            self.embed = nn.Sequential(nn.Linear(cfg.text_dim, cfg.text_proj_dim), nn.LeakyReLU(0.2, inplace=True))
        c_in = cfg.z_dim + cond_input_dim(cfg)
        if cfg.resolution == 64:
            self.net = nn.Sequential(
                _up(c_in, ngf * 8, first=True),  # (N, ngf*8, 4, 4)
                _up(ngf * 8, ngf * 4),  # (N, ngf*4, 8, 8)
                _up(ngf * 4, ngf * 2),  # (N, ngf*2, 16, 16)
                _up(ngf * 2, ngf),  # (N, ngf, 32, 32)
                nn.ConvTranspose2d(ngf, nc, 4, 2, 1),  # (N, nc, 64, 64)
                nn.Tanh())
        else:
            self.net = nn.Sequential(
                _up(c_in, ngf * 4, first=True),  # (N, ngf*4, 4, 4)
                _up(ngf * 4, ngf * 2),  # (N, ngf*2, 8, 8)
                _up(ngf * 2, ngf),  # (N, ngf, 16, 16)
                nn.ConvTranspose2d(ngf, nc, 4, 2, 1),  # (N, nc, 32, 32)
                nn.Tanh())
        init_dcgan_(self)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        n = z.shape[0]
        if tuple(z.shape) != (n, self.cfg.z_dim):
            raise ValueError(f"z must be (N, {self.cfg.z_dim}), got {tuple(z.shape)}")
        check_cond(self.cfg, cond, n)
        h = z if cond is None else torch.cat([z, self.embed(cond).to(z.dtype)], 1)  # (N, z_dim + cond_dim)
        return self.net(h[:, :, None, None])  # (N, nc, res, res)


class Discriminator(nn.Module):
    """images (N, channels, res, res) [+ cond] [+ frozen features] -> logits (N,) [, feature-head logits (N,)].

    class: projection discriminator, logit += <embed(y), sum_hw(h)> (Miyato & Koyama 2018).
    text: the compressed caption embedding is tiled over the 4x4 map and joined to it (Reed et al. 2016).
    """

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        ndf, nc = cfg.ndf, cfg.channels
        first = nn.Sequential(_sn(nn.Conv2d(nc, ndf, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True))
        if cfg.resolution == 64:
            self.blocks = nn.Sequential(
                first,  # (N, ndf, 32, 32)
                _down(ndf, ndf * 2),  # (N, ndf*2, 16, 16)
                _down(ndf * 2, ndf * 4),  # (N, ndf*4, 8, 8)
                _down(ndf * 4, ndf * 8))  # (N, ndf*8, 4, 4)
            c = ndf * 8
        else:
            self.blocks = nn.Sequential(
                first,  # (N, ndf, 16, 16)
                _down(ndf, ndf * 2),  # (N, ndf*2, 8, 8)
                _down(ndf * 2, ndf * 4))  # (N, ndf*4, 4, 4)
            c = ndf * 4
        if cfg.conditioning == "class":
            self.embed = _sn(nn.Embedding(cfg.num_classes, c))
        elif cfg.conditioning == "text":
            self.embed = nn.Sequential(_sn(nn.Linear(cfg.text_dim, cfg.text_proj_dim)), nn.LeakyReLU(0.2, True))
            self.joint = nn.Sequential(_sn(nn.Conv2d(c + cfg.text_proj_dim, c, 1, bias=False)),  # (N, c, 4, 4)
                                       nn.LeakyReLU(0.2, inplace=True))
        self.head = _sn(nn.Conv2d(c + (1 if cfg.mbstd_group else 0), 1, 4, 1, 0))  # (N, 1, 1, 1)
        if cfg.feature_head:
            self.feature_head = nn.Sequential(_sn(nn.Linear(cfg.feature_dim, 256)), nn.LeakyReLU(0.2, True),
                                              _sn(nn.Linear(256, 1)))  # (N, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, features: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, cfg = x.shape[0], self.cfg
        if tuple(x.shape[1:]) != (cfg.channels, cfg.resolution, cfg.resolution):
            raise ValueError(f"D expects (N, {cfg.channels}, {cfg.resolution}, {cfg.resolution}), got {tuple(x.shape)}")
        check_cond(cfg, cond, n)
        h = self.blocks(x)  # (N, c, 4, 4)
        proj = None
        if cfg.conditioning == "class":
            proj = (self.embed(cond) * h.sum((2, 3))).sum(1)  # (N,)
        elif cfg.conditioning == "text":
            t = self.embed(cond.to(h.dtype))[:, :, None, None].expand(-1, -1, *h.shape[2:])  # (N, text_proj, 4, 4)
            h = self.joint(torch.cat([h, t.to(h.dtype)], 1))  # (N, c, 4, 4)
        if cfg.mbstd_group:
            h = minibatch_stddev(h, cfg.mbstd_group)  # (N, c + 1, 4, 4)
        logits = self.head(h).flatten()  # (N,)
        if proj is not None:
            logits = logits + proj
        if cfg.feature_head != (features is not None):
            raise ValueError("features must be given exactly when cfg.feature_head is on")
        head = self.feature_head(features.to(h.dtype)).flatten() if features is not None else None  # (N,)
        return logits, head

    def freeze_blocks(self, k: int) -> None:
        """FreezeD: keep the first k conv blocks (the generic low-level filters) fixed when fine-tuning."""
        if k > len(self.blocks):
            raise ValueError(f"cannot freeze {k} blocks: D has {len(self.blocks)}")
        for block in list(self.blocks)[:k]:
            block.requires_grad_(False)
