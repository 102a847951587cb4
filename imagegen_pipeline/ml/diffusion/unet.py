"""The denoiser: a small ADM-style UNet F and EDM's preconditioning around it, D(x; sigma) = c_skip x +
c_out F(c_in x; c_noise) (Karras et al. 2022, table 1), so F sees unit-variance inputs and targets at every
noise level.

The condition (a label or a caption embedding) is mapped to the width of the noise embedding and added to it;
`keep` (N,) multiplies it first, so keep = 0 is the null condition that classifier-free guidance needs. A
token-conditioned model (cfg.text_tokens > 0) takes a caption as its token states (N, L, D), zero rows padding:
their mean is the pooled vector above, and the pixels at cfg.cross_attn_resolutions attend to the tokens
(Rombach et al. 2022), beside a learnt null token that is all a dropped caption (keep = 0) leaves them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from imagegen_pipeline.ml.diffusion.config import DiffusionConfig


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialised output layers: each residual branch starts as the identity (ADM, EDM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _norm(c: int) -> nn.GroupNorm:
    """32 groups (at least 4 channels each), or the most that divide c (widths such as 48 * 3)."""
    groups = min(32, c // 4) if c >= 8 else 1
    while c % groups:
        groups -= 1
    return nn.GroupNorm(groups, c, eps=1e-6)


class NoiseEmbedding(nn.Module):
    """c_noise (N,) -> sinusoidal features (N, dim) (the transformer's positional encoding of a real number)."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10_000) * torch.arange(half) / half), persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.float()[:, None] * self.freqs[None] * 1000.0  # (N, dim/2); c_noise is ~[-2, 1.2]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; the embedding scales and shifts the second norm (adaptive GroupNorm); /sqrt(2)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.drop = _norm(c_out), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (N, C, 1, 1) each
        h = F.silu(torch.addcmul(shift, self.norm2(h), scale + 1))
        h = self.conv2(self.drop(h))
        return (h + self.skip(x)) * (1 / math.sqrt(2))


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a low-resolution map, as a residual branch."""

    def __init__(self, c: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, c // head_dim)
        self.norm, self.qkv, self.proj = _norm(c), nn.Conv2d(c, 3 * c, 1), _zero(nn.Conv2d(c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(n, c, h, w)  # (N, C, H, W)
        return (x + self.proj(out)) * (1 / math.sqrt(2))


class CrossAttention(nn.Module):
    """Multi-head attention from the pixels of a map to the caption's tokens, as a residual branch."""

    def __init__(self, c: int, ctx_dim: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, c // head_dim)
        self.norm, self.q, self.proj = _norm(c), nn.Conv2d(c, c, 1), _zero(nn.Conv2d(c, c, 1))
        self.kv = nn.Linear(ctx_dim, 2 * c)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_keep: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W); ctx (N, T, ctx_dim); ctx_keep bool (N, T): which tokens may be attended."""
        n, c, h, w = x.shape
        d = c // self.heads
        q = self.q(self.norm(x)).reshape(n, self.heads, d, h * w).transpose(-1, -2)  # (N, heads, HW, d)
        k, v = self.kv(ctx).reshape(n, ctx.shape[1], 2, self.heads, d).permute(2, 0, 3, 1, 4)  # (N, heads, T, d)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=ctx_keep[:, None, None, :])
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return (x + self.proj(out)) * (1 / math.sqrt(2))


class TokenContext(nn.Module):
    """Caption token states (N, L, D), zero rows padding, and keep (N,) -> (pooled (N, D) unit vector, context
    (N, 1 + L, ctx_dim), attendable (N, 1 + L)): a learnt null token first, always attendable, so a dropped
    caption (keep = 0) still gives every query somewhere to look."""

    def __init__(self, text_dim: int, ctx_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, ctx_dim))
        self.null = nn.Parameter(torch.zeros(1, 1, ctx_dim))

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor | None):
        from imagegen_pipeline.ml.text_encoder import pool_tokens

        tokens = tokens.float()
        mask = tokens.abs().sum(-1) > 0  # (N, L)
        pooled = pool_tokens(tokens, mask)
        if keep is not None:
            mask = mask & (keep[:, None] > 0)
        ctx = torch.cat([self.null.expand(len(tokens), -1, -1), self.proj(tokens)], dim=1)
        return pooled, ctx, torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)


class UNet(nn.Module):
    """F(x (N, C, R, R), c_noise (N,), cond, keep (N,)) -> (N, C, R, R)."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels
        self.noise_emb = NoiseEmbedding(mc)
        self.emb_mlp = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.conditioning == "class":
            self.cond_emb = nn.Embedding(cfg.num_classes, emb_dim)
        elif cfg.conditioning == "text":
            self.cond_emb = nn.Sequential(nn.Linear(cfg.text_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if cfg.text_tokens:
                self.tokens = TokenContext(cfg.text_dim, emb_dim)
        pixels = cfg.channels * cfg.patch ** 2  # channels of one patch
        self.stem = nn.Conv2d(pixels, mc, 3, padding=1)
        self.down, skips, c, res = nn.ModuleList(), [mc], mc, cfg.resolution // cfg.patch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_blocks):
                self.down.append(self._block(c, mc * mult, emb_dim, res))
                c = mc * mult
                skips.append(c)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # halves the side
                skips.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, cfg.dropout), Attention(c),
                                  *([CrossAttention(c, emb_dim)] if cfg.text_tokens else []),
                                  ResBlock(c, c, emb_dim, cfg.dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_blocks + 1):
                self.up.append(self._block(c + skips.pop(), mc * mult, emb_dim, res))
                c = mc * mult
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(c, c, 3, padding=1)))
                res *= 2
        self.out = nn.Sequential(_norm(c), nn.SiLU(), _zero(nn.Conv2d(c, pixels, 3, padding=1)))

    def _block(self, c_in: int, c_out: int, emb_dim: int, res: int) -> nn.Module:
        block = ResBlock(c_in, c_out, emb_dim, self.cfg.dropout)
        extra = [Attention(c_out)] if res in self.cfg.attn_resolutions else []
        if self.cfg.text_tokens and res in self.cfg.cross_attn_resolutions:
            extra.append(CrossAttention(c_out, emb_dim))
        return nn.ModuleList([block, *extra]) if extra else block

    @staticmethod
    def _run(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor, ctx) -> torch.Tensor:
        """One layer: a residual block, (self-, cross-) attention, a resampling conv, or a ModuleList of them."""
        if isinstance(layer, nn.ModuleList):  # a residual block followed by attention
            for sub in layer:
                h = UNet._run(sub, h, emb, ctx)
            return h
        if isinstance(layer, ResBlock):
            return layer(h, emb)
        return layer(h, *ctx) if isinstance(layer, CrossAttention) else layer(h)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.emb_mlp(self.noise_emb(c_noise))  # (N, 4 mc)
        ctx = None
        if self.cfg.conditioning != "none":
            if cond is None:
                raise ValueError(f"{self.cfg.conditioning}-conditional model needs cond")
            if self.cfg.text_tokens:
                cond, *ctx = self.tokens(cond, keep)  # the pooled vector, and the tokens to attend to
            c = self.cond_emb(cond if self.cfg.conditioning == "class" else cond.to(emb.dtype) * self.cfg.text_gain)
            emb = emb + c * (keep.to(c.dtype)[:, None] if keep is not None else 1.0)
        emb = F.silu(emb)
        if self.cfg.patch > 1:
            x = F.pixel_unshuffle(x, self.cfg.patch)  # (N, C p^2, R/p, R/p)
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = self._run(layer, h, emb, ctx)
            hs.append(h)
        h = self._run(self.mid, h, emb, ctx)
        for layer in self.up:
            if isinstance(layer, nn.Sequential):  # upsampling
                h = layer(h)
            else:
                h = self._run(layer, torch.cat([h, hs.pop()], dim=1), emb, ctx)
        out = self.out(h)
        return F.pixel_shuffle(out, self.cfg.patch) if self.cfg.patch > 1 else out


class Denoiser(nn.Module):
    """EDM's preconditioned denoiser D(x; sigma, cond) ~ E[clean image | noisy x]."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg, self.sigma_data = cfg, cfg.sigma_data
        self.net = UNet(cfg)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        sigma = sigma.float().reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in = 1 / (sigma ** 2 + sd2).sqrt()
        c_noise = sigma.log().flatten() / 4
        f = self.net((c_in * x).to(x.dtype), c_noise, cond, keep)
        return c_skip * x.float() + c_out * f.float()


def edm_loss(denoiser: nn.Module, x: torch.Tensor, cond: torch.Tensor | None, keep: torch.Tensor | None,
             cfg: DiffusionConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """EDM's training loss: ln sigma ~ N(P_mean, P_std^2), weight (sigma^2 + sd^2) / (sigma sd)^2 (mean over
    pixels and images)."""
    n = len(x)
    sigma = (torch.randn(n, device=x.device, generator=gen) * cfg.p_std + cfg.p_mean).exp()
    noise = torch.randn(x.shape, device=x.device, generator=gen) * sigma[:, None, None, None]
    weight = (sigma ** 2 + cfg.sigma_data ** 2) / (sigma * cfg.sigma_data) ** 2
    d = denoiser(x + noise, sigma, cond, keep)
    return (weight[:, None, None, None] * (d - x.float()) ** 2).mean()
