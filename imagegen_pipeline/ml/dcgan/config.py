"""Everything that defines one DCGAN run, as one typed dataclass saved with every checkpoint and export."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

CONDITIONING = ("none", "class", "text")
FAMILIES = ("dcgan", "vae")  # the generator's training objective; both export the same Generator
LOSSES = ("hinge", "bce")
AUGMENTATIONS = ("color", "translation", "cutout")

# Fields a run may change between a kill and its resume (length, logging, speed knobs); any other change is a
# different experiment, and resuming it from the old checkpoint would silently mix two runs.
RESUMABLE_CHANGES = frozenset({"steps", "sample_every", "checkpoint_every", "log_every", "compile",
                               "nan_guard", "explode_threshold", "extra"})
# Fields that fix most tensor shapes: init_from names them when another run's weights do not fit.
ARCHITECTURE = ("resolution", "channels", "z_dim", "ngf", "ndf")


@dataclass
class DCGANConfig:
    """The defaults are the pipeline's (the `cpu-demo` preset: 2 CPU cores, 8-14 minutes of training on MNIST);
    the `gpu-*` presets set the paper's sizes. The dcgan_checkpoint asset's Config and both CLIs take their
    defaults from here."""

    # model family: "dcgan" (adversarial) or "vae" (the same Generator as the decoder of a VAE, vae.py)
    family: str = "dcgan"
    kl_weight: float = 1.0  # vae: weight of KL(q(z|x) || N(0, I)) against the summed squared pixel error
    # data and architecture (Radford et al. 2016)
    resolution: int = 32  # image side, 32 or 64; the shards must already have it (no per-step resizing)
    channels: int = 1  # 1 (grey) or 3 (RGB)
    z_dim: int = 100  # noise vector length
    ngf: int = 32  # generator width: channels of its last hidden layer (the paper's 64 in the gpu-* presets)
    ndf: int = 32  # discriminator width: channels of its first layer (the paper's 64 in the gpu-* presets)
    # conditioning
    conditioning: str = "none"  # "none" | "class" (labels) | "text" (caption embeddings)
    num_classes: int = 0  # class conditioning: number of labels (embedding rows)
    class_embed_dim: int = 64  # class conditioning: label embedding joined to z in G
    text_dim: int = 384  # text conditioning: sentence-embedding size of the data's caption vectors
    text_proj_dim: int = 128  # text conditioning: compressed caption embedding joined to z and to D (Reed et al.)
    matching_aware: bool = True  # text: D also sees real images with wrong captions, scored as fake (GAN-CLS)
    text_interpolation: bool = True  # text: G also learns from mixes of two captions' embeddings (GAN-INT)
    feature_head: bool = False  # extra D head on a frozen feature network's embedding of the same images
    feature_dim: int = 1280  # length of that feature network's embedding
    mbstd_group: int = 4  # D's minibatch-stddev group size (ProGAN): lets D see a collapse; 0 turns it off
    freeze_d_blocks: int = 0  # with init_from: keep the first k D conv blocks fixed (FreezeD, Mo et al. 2020)
    # augmentation and averaging
    # DiffAugment policy (Zhao et al. 2020), for small datasets: on 60k MNIST images translation + cutout made G
    # draw one digit per label (within-label diversity 0.10 of real vs 0.94 without, 4,000 steps, CPU demo sizes)
    diffaugment: str = ""
    ema_beta: float = 0.995  # generator weight averaging; the EMA generator is the one sampled and exported
    ema_start_step: int = 100  # before this step the EMA generator simply copies G
    # optimisation
    loss: str = "hinge"  # "hinge" (default) or "bce" (non-saturating, as in the DCGAN paper)
    batch_size: int = 64  # images per step per process (global batch = batch_size * world size)
    # optimizer steps for both G and D; a resumed run stops at the same step. On MNIST (cpu-demo, quick protocol)
    # FID 23.1 at 6,000, 20.9 at 9,000, 20.3 at 12,000 and 18.1 at 15,000 (docs/measurements.md)
    steps: int = 15_000
    lr_g: float = 1.2e-3  # Adam learning rate of G (at batch 64 on MNIST, 6,000 steps: FID 23.7 vs 27.6 at 4e-4)
    lr_d: float = 1.2e-3  # Adam learning rate of D
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas (DCGAN's beta1 = 0.5)
    # bookkeeping
    sample_every: int = 250  # steps between fixed-noise sample grids
    checkpoint_every: int = 500  # steps between checkpoints (one is also written at the end)
    log_every: int = 50  # steps between metrics (each costs one device sync)
    num_samples: int = 64  # images in the fixed-noise grid
    compile: bool = False  # torch.compile G and D (CUDA only; ignored on CPU)
    seed: int = 0  # weights, batches and noise; DDP rank r uses seed * world_size + r
    nan_guard: bool = True  # raise TrainingDiverged on a NaN/inf loss instead of training on garbage
    explode_threshold: float = 1e4  # ... or on |loss| above this (0 turns the check off)
    extra: dict = field(default_factory=dict)  # free-form notes (dataset name, caller's tags); never read here

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        checks = [
            (self.resolution in (32, 64), f"resolution must be 32 or 64, not {self.resolution}"),
            (self.channels in (1, 3), f"channels must be 1 or 3, not {self.channels}"),
            (self.conditioning in CONDITIONING, f"conditioning must be one of {CONDITIONING}"),
            (self.family in FAMILIES, f"family must be one of {FAMILIES}, not {self.family!r}"),
            (self.family != "vae" or (self.conditioning != "text" and not self.feature_head),
             "the vae family takes conditioning none or class and no feature head"),
            (self.conditioning != "class" or self.num_classes >= 1, "class conditioning needs num_classes >= 1"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, not {self.loss!r}"),
            (set(self.augment_policy) <= set(AUGMENTATIONS),
             f"diffaugment may only name {AUGMENTATIONS}, not {self.diffaugment!r}"),
            (min(self.batch_size, self.sample_every, self.checkpoint_every, self.log_every, self.num_samples) >= 1,
             "batch_size, sample_every, checkpoint_every, log_every and num_samples must be >= 1"),
            (min(self.steps, self.freeze_d_blocks, self.mbstd_group) >= 0,
             "steps, freeze_d_blocks and mbstd_group must be >= 0"),
            (0.0 <= self.ema_beta < 1.0, "ema_beta must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def augment_policy(self) -> list[str]:
        return [p.strip() for p in self.diffaugment.split(",") if p.strip()]

    @property
    def text_shape(self) -> tuple[int, ...]:
        """One caption's condition: a pooled vector (the diffusion family may read token states instead)."""
        return (self.text_dim,)

    def to_dict(self) -> dict:
        """Plain JSON/`weights_only` types (the tuple becomes a list)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DCGANConfig:
        """Unknown keys are an error: a misspelt field must not silently fall back to its default."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown DCGANConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> DCGANConfig:
        return dataclasses.replace(self, **changes)
