"""Everything that defines one diffusion run, as one typed dataclass saved with every checkpoint and export."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

CONDITIONING = ("none", "class", "text")
# Fields a run may change between a kill and its resume (length, logging, sampling, speed knobs).
RESUMABLE_CHANGES = frozenset({"steps", "sample_every", "checkpoint_every", "log_every", "compile", "max_seconds",
                               "sample_steps", "guidance", "extra"})


@dataclass
class DiffusionConfig:
    """Defaults: a ~6M-parameter UNet for 32x32 images (the `gpu-*` presets' size). EDM's CIFAR-10 recipe for
    the noise distribution, preconditioning and sampler; a smaller net and batch for small grey images."""

    # data
    resolution: int = 32  # image side (a multiple of 2 ** (len(channel_mult) - 1))
    channels: int = 1  # 1 (grey) or 3 (RGB)
    # conditioning; a condition is replaced by "none" with probability cond_drop while training (CFG)
    conditioning: str = "none"  # "none" | "class" (labels) | "text" (caption embeddings)
    num_classes: int = 0  # class conditioning: number of labels
    text_dim: int = 384  # text conditioning: caption-embedding length (MiniLM)
    # caption vectors are multiplied by this before the condition MLP: unit-norm MiniLM vectors have components of
    # about 1/sqrt(384), so 1.0 starts the text signal ~20x weaker than the noise embedding's; sqrt(text_dim) ~ 19.6
    # gives it unit-variance inputs (the CPU preset's choice: the condition is learnt from the first steps)
    text_gain: float = 1.0
    # share of training images conditioned on one of their other captions (short names, tags; drawn uniformly)
    # instead of their name, where the data has them: "cat", "hat", "face" teach the parts a new prompt combines
    alt_caption_p: float = 0.0
    # token conditioning: > 0 reads each caption as up to this many MiniLM token states (N, text_tokens, text_dim)
    # instead of one pooled vector; the pooled vector (their mean) still drives the noise embedding, and the
    # pixels at cross_attn_resolutions attend to the tokens, so "cat" and "hat" stay apart (0 = pooled only)
    text_tokens: int = 0
    cross_attn_resolutions: tuple[int, ...] = ()  # cross-attention to the tokens at these sides (and the middle)
    cond_drop: float = 0.1  # share of training images that see the null condition (classifier-free guidance)
    # UNet (Ho et al. 2020 / ADM layout): widths per resolution level, residual blocks per level, attention
    patch: int = 1  # the UNet sees patch x patch pixel blocks as channels (pixel-unshuffle): patch^2 x fewer FLOPs
    model_channels: int = 64  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 2)  # level widths = model_channels * mult; 32 -> 16 -> 8 px
    num_blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    attn_resolutions: tuple[int, ...] = (8,)  # self-attention at these sides
    dropout: float = 0.1  # inside residual blocks (EDM: 0.13 on CIFAR-10)
    # EDM noise distribution and preconditioning
    sigma_data: float = 0.5  # std of the data in [-1, 1]
    p_mean: float = -1.2  # ln(sigma) ~ N(p_mean, p_std^2) during training
    p_std: float = 1.2
    # optimisation
    batch_size: int = 256
    steps: int = 20_000  # optimizer steps; a resumed run stops at the same step
    max_seconds: float = 0.0  # wall-clock budget of one call (0 = none): the run stops and saves at the next step
    lr: float = 1e-3  # Adam learning rate, after a linear warm-up
    lr_warmup: int = 500  # steps of linear warm-up
    ema_halflife_kimg: float = 500.0  # EMA half-life in thousands of images (EDM); the EMA net is exported
    ema_rampup: float = 0.05  # early on the half-life is at most this share of the images seen so far
    # sampling (Heun, EDM's time steps)
    sample_steps: int = 18  # ODE steps; Heun makes 2 * steps - 1 network evaluations
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    guidance: float = 1.0  # classifier-free guidance weight w: D = D_null + w (D_cond - D_null); 1 = none
    # bookkeeping
    sample_every: int = 1000  # steps between fixed-noise sample grids
    checkpoint_every: int = 2000  # steps between checkpoints (one is also written at the end)
    log_every: int = 100  # steps between metrics (each costs one device sync)
    num_samples: int = 64  # images in the fixed-noise grid
    compile: bool = False  # torch.compile the UNet (CUDA only)
    seed: int = 0
    extra: dict = field(default_factory=dict)  # free-form notes; never read here

    def __post_init__(self):
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        self.cross_attn_resolutions = tuple(int(r) for r in self.cross_attn_resolutions)
        checks = [
            (self.channels in (1, 3), f"channels must be 1 or 3, not {self.channels}"),
            (self.conditioning in CONDITIONING, f"conditioning must be one of {CONDITIONING}"),
            (self.conditioning != "class" or self.num_classes >= 1, "class conditioning needs num_classes >= 1"),
            (self.patch >= 1 and self.resolution % self.patch == 0, f"patch {self.patch} must divide the resolution"),
            (self.resolution % (self.patch * 2 ** (len(self.channel_mult) - 1)) == 0
             and self.resolution // self.patch >= 4,
             f"resolution {self.resolution} must be divisible by patch * 2^(levels-1) (patch {self.patch})"),
            (self.text_tokens >= 0 and (self.text_tokens == 0 or self.conditioning == "text"),
             "text_tokens needs conditioning 'text' (and is >= 0)"),
            (0.0 <= self.cond_drop < 1.0, "cond_drop must be in [0, 1)"),
            (0.0 <= self.alt_caption_p <= 1.0, "alt_caption_p must be in [0, 1]"),
            (min(self.batch_size, self.sample_every, self.checkpoint_every, self.log_every, self.num_samples,
                 self.sample_steps, self.model_channels, self.num_blocks) >= 1,
             "sizes, intervals and step counts must be >= 1"),
            (self.guidance >= 0.0, "guidance must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def family(self) -> str:
        """The generator family, as the pipeline's stage and registry tags name it."""
        return "diffusion"

    @property
    def feature_head(self) -> bool:
        """No discriminator, so no feature head (a DCGAN option the stage asks every family about)."""
        return False

    @property
    def text_shape(self) -> tuple[int, ...]:
        """One caption's condition: (text_dim,) pooled, or (text_tokens, text_dim) token states."""
        return (self.text_tokens, self.text_dim) if self.text_tokens else (self.text_dim,)

    @property
    def z_dim(self) -> int:
        """A sample's starting noise, flattened: what `noise_for_seed` draws for one seed."""
        return self.channels * self.resolution * self.resolution

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channel_mult"], d["attn_resolutions"] = list(self.channel_mult), list(self.attn_resolutions)
        d["cross_attn_resolutions"] = list(self.cross_attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DiffusionConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown DiffusionConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> DiffusionConfig:
        return dataclasses.replace(self, **changes)
