"""DCGAN in plain PyTorch: config, models, training loop (single process or torchrun/DDP), sampling, export."""

from imagegen_pipeline.ml.dcgan.config import DCGANConfig
from imagegen_pipeline.ml.dcgan.export import export_generator, load_generator
from imagegen_pipeline.ml.dcgan.models import Discriminator, Generator
from imagegen_pipeline.ml.dcgan.sample import generate, interpolate
from imagegen_pipeline.ml.dcgan.train import TrainData, TrainingDiverged, TrainResult, train_dcgan

__all__ = ["DCGANConfig", "Discriminator", "Generator", "TrainData", "TrainResult", "TrainingDiverged",
           "export_generator", "generate", "interpolate", "load_generator", "train_dcgan"]
