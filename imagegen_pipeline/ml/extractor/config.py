"""The extractor's settings: one typed dataclass, saved with every model it trains."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ExtractorConfig:
    """The defaults are the pipeline's (`cpu-demo`); the feature_extractor asset's Config takes them from here."""

    # resize to this side: MobileNetV2 sees 28-32 px digits poorly (96+ on a GPU). On MNIST, 2 CPU cores: 48 px
    # 34 s of training + 44 s to embed 70,000 images at 99.1% val accuracy; 64 px 47 + 59 s, 99.1%;
    # 32 px 22 + 27 s, 98.1%
    input_size: int = 48
    batch_size: int = 64  # training images per optimizer step
    head_epochs: int = 0  # phase 1: a new head trained on the frozen ImageNet backbone (0 = skip)
    finetune_epochs: int = 1  # phase 2: the last `unfreeze_blocks` backbone blocks trained too
    unfreeze_blocks: int = 19  # how many of the 19 `features` blocks (counted from the top) phase 2 unfreezes
    finetune_batchnorm: bool = True  # phase 2 re-estimates BatchNorm statistics on this data (digits are not ImageNet)
    lr_head: float = 1e-3  # AdamW learning rate of phase 1 (head only)
    lr_finetune: float = 2e-3  # AdamW peak rate of phase 2 (one-cycle: 15% warm-up, cosine to ~0)
    lr_scratch: float = 2e-3  # AdamW peak rate of the from-scratch baseline (all layers, random init, same schedule)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay, all phases
    label_smoothing: float = 0.1  # cross-entropy label smoothing: calmer logits, better-spread embeddings
    dropout: float = 0.2  # dropout before the linear head (torchvision's MobileNetV2 uses 0.2)
    # cap on labelled training images (None = all): on MNIST, 2 CPU cores, 46 s to 99.2% val accuracy
    # (24,000: 86 s, 99.3%)
    max_train_images: int | None = 12000
    max_val_images: int | None = 2000  # cap on labelled validation images (None = all)
    train_baseline: bool = False  # also train the same net from scratch for the same steps: what transfer bought
                                  # (doubles the time; on in the gpu-* presets)
    seed: int = 0  # seeds init, shuffling and augmentation (via runtime.seed_everything)
    augment: bool = True  # light random shift and zoom (no flips: they change digits and text)
    max_shift: float = 0.1  # augmentation: largest translation, as a fraction of the image side
    max_zoom: float = 0.1  # augmentation: largest zoom-in, as a fraction (crop of 90-100% of the image)
    embed_batch_size: int | None = None  # images per forward pass when embedding; None = the device's (embed.py)

    def to_dict(self) -> dict:
        return asdict(self)
