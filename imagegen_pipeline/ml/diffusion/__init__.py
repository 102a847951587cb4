"""EDM diffusion (Karras et al. 2022) as the third generator family: a small UNet denoiser, trained with EDM's
preconditioning and noise distribution, sampled with Heun's 2nd-order ODE solver and classifier-free guidance.

Sampling is deterministic in its starting noise, so a trained model exports as a `DiffusionGenerator` whose
`forward(z, cond)` maps a flat noise vector to an image: the same seeds, `render`, galleries and evaluation as
the GAN and VAE families.
"""

from imagegen_pipeline.ml.diffusion.config import DiffusionConfig
from imagegen_pipeline.ml.diffusion.export import export_diffusion, load_diffusion
from imagegen_pipeline.ml.diffusion.sampler import DiffusionGenerator, edm_sample
from imagegen_pipeline.ml.diffusion.train import train_diffusion
from imagegen_pipeline.ml.diffusion.unet import Denoiser, UNet

__all__ = ["Denoiser", "DiffusionConfig", "DiffusionGenerator", "UNet", "edm_sample", "export_diffusion", "load_diffusion",
           "train_diffusion"]
