"""Named presets: run-config fragments for the whole chain, layered under a --config file and CLI flags.

`cpu-demo` is the assets' own defaults (what `make demo` runs on 2 cores). The `gpu-*` presets size every stage
for one H100/H200: all images for the extractor, tens of thousands of DCGAN steps at batch 256, and the
evaluation at 10,000 samples. Show one with `imagegen presets NAME`; use it with
`imagegen pipeline DATASET --preset NAME` (also `train` and `features`), or paste its `ops` into the launchpad.
"""

from __future__ import annotations

import copy

_GPU_FEATURES = {"device": "cuda", "input_size": 96, "finetune_epochs": 3, "batch_size": 256, "train_baseline": True,
                 "max_train_images": None, "max_val_images": None}
_GPU_EMBED = {"device": "cuda"}
_GPU_DCGAN = {"device": "cuda", "steps": 20_000, "batch_size": 256, "ngf": 64, "ndf": 64, "lr_g": 2e-4, "lr_d": 2e-4,
              "ema_beta": 0.999, "ema_start_step": 2000, "sample_every": 1000, "checkpoint_every": 2000,
              "log_every": 100, "compile": True}
_GPU_EVAL = {"device": "cuda", "protocol": "paper"}
# DiffusionConfig fields of the CPU text model (the rest are its defaults; steps, batch and lr come from the asset)
_CPU_TEXT_DIFFUSION = {"patch": 2, "model_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1,
                       "attn_resolutions": [4], "dropout": 0.0, "lr_warmup": 200, "ema_halflife_kimg": 50.0,
                       "cond_drop": 0.15, "text_gain": 19.6, "sample_steps": 12, "guidance": 3.0}

# the CPU text model on composed emoji (`imagegen datasets import emoji --compose`): the same UNet reading each
# caption as 16 MiniLM token states with cross-attention at 8 and 4 px (the pooled vector still drives the noise
# embedding), and half the images speaking under another of their captions ("a cat in a hat" for every hat)
_CPU_COMPOSE_DIFFUSION = {**_CPU_TEXT_DIFFUSION, "text_tokens": 16, "cross_attn_resolutions": [8, 4],
                          "alt_caption_p": 0.5}
# the emoji presets keep the 64 px extractor their figures (docs/measurements.md) were measured with
_CPU_TEXT_FEATURES = {"finetune_epochs": 3, "input_size": 64}
_CPU_TEXT_TRAINING = {"conditioning": "text", "family": "diffusion", "steps": 4500, "batch_size": 64, "lr_g": 2e-3,
                      "cpu_threads": 1, "sample_every": 1500, "checkpoint_every": 500, "log_every": 100}


def _gpu(**dcgan) -> dict:
    return {"feature_extractor": _GPU_FEATURES, "image_embeddings": _GPU_EMBED,
            "dcgan_checkpoint": {**_GPU_DCGAN, **dcgan}, "evaluation_report": _GPU_EVAL,
            "sample_gallery": {"device": "cuda"}}


PRESETS: dict[str, dict] = {
    "cpu-demo": {},  # the defaults of every asset's Config: 2 CPU cores, 10-20 minutes for MNIST after the install
    "gpu-mnist": _gpu(conditioning="class"),
    "gpu-mnist-uncond": _gpu(conditioning="none"),
    "gpu-fashion-mnist": _gpu(conditioning="class", steps=30_000),
    "gpu-fashion-mnist-uncond": _gpu(conditioning="none", steps=30_000),
    # emoji on 2 CPU cores, after `imagegen ingest emoji --resolution 32`: text-conditioned EDM diffusion, at most
    # 30 minutes of training. A small UNet on 2x2 pixel patches (380 MFLOP per training image), caption vectors
    # scaled to unit variance (text_gain), 15% caption dropout for classifier-free guidance (served at w=3), one
    # torch thread (on the shared 2-core box 2 threads ran 6-12x slower). It replaced the DCGAN below, which
    # reached 20% of real images' R-precision and was rejected by the gate (MS-SSIM collapse).
    "cpu-emoji-text": {"feature_extractor": _CPU_TEXT_FEATURES,
                       "dcgan_checkpoint": {**_CPU_TEXT_TRAINING, "diffusion": _CPU_TEXT_DIFFUSION}},
    # composed emoji on 2 CPU cores (`make demo-text`): token-conditioned, at most 30 minutes of training
    "cpu-emoji-compose": {"feature_extractor": _CPU_TEXT_FEATURES,
                          "dcgan_checkpoint": {**_CPU_TEXT_TRAINING, "steps": 6000, "sample_every": 2000,
                                               "diffusion": _CPU_COMPOSE_DIFFUSION}},
    # the same on one pooled caption vector: what cpu-emoji-compose is measured against (docs/measurements.md)
    "cpu-emoji-compose-pooled": {"feature_extractor": _CPU_TEXT_FEATURES,
                                 "dcgan_checkpoint": {**_CPU_TEXT_TRAINING, "steps": 6000, "sample_every": 2000,
                                                      "diffusion": {
                                     **_CPU_COMPOSE_DIFFUSION, "text_tokens": 0, "cross_attn_resolutions": []}}},
    # the DCGAN that `cpu-emoji-text` was until issue 27 (fp32, lr 4e-4; the README's DCGAN emoji figures)
    "cpu-emoji-text-dcgan": {"feature_extractor": _CPU_TEXT_FEATURES,
                             "dcgan_checkpoint": {"conditioning": "text", "steps": 20_000, "lr_g": 4e-4,
                                                  "lr_d": 4e-4, "cpu_bf16": False, "sample_every": 1000,
                                                  "checkpoint_every": 1000, "log_every": 200,
                                                  "diffaugment": "translation,color"}},
    # 7.5k images: DiffAugment keeps D from memorising them (on 60k MNIST images it made G collapse)
    "gpu-emoji-text": _gpu(conditioning="text", steps=30_000, batch_size=128,
                           diffaugment="color,translation,cutout"),
}


def preset_run_config(name: str) -> dict:
    """{"ops": {op: {"config": {...}}}} for the named preset (a copy: callers may layer on top of it)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return {"ops": {op: {"config": copy.deepcopy(cfg)} for op, cfg in PRESETS[name].items()}}
