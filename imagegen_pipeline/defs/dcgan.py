"""Asset `dcgan_checkpoint`: the conditional DCGAN trained inside the op (GPU when present), resumable, tracked in
MLflow, its EMA generator registered as imagegen-generator-<dataset> (alias `candidate`; evaluation moves
`champion`). The work is `stages.dcgan.train_generator`; the defaults are `DCGANConfig`'s."""

from dataclasses import asdict
from typing import Any

import dagster as dg
from pydantic import Field

from imagegen_pipeline.defs.artifacts import CAPTION_EMBEDDINGS, FEATURE_EXTRACTOR, IMAGE_SHARDS
from imagegen_pipeline.defs.automation import RETRAIN_WHEN_DATA_CHANGES
from imagegen_pipeline.defs.common import dataset_of
from imagegen_pipeline.defs.metadata import materialized, stage_failures
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker, TrainingLauncher
from imagegen_pipeline.ml.dcgan import DCGANConfig
from imagegen_pipeline.stages.dcgan import GeneratorJob, train_generator

GROUP = "generation"
CORE, JOB = DCGANConfig(), GeneratorJob()  # the defaults: one source, checked by test_config_defaults


class DcganTrainConfig(dg.Config):
    family: str = Field(default=CORE.family, description="'dcgan' (adversarial, EMA generator), 'vae' (the same "
                                                         "generator as a VAE decoder) or 'diffusion' (EDM; GPU-sized "
                                                         "by default, see bench/gpu_presets.py; the cpu-emoji-text "
                                                         "preset sizes it for 2 cores); all compete for champion.")
    diffusion: dict[str, Any] = Field(default_factory=dict, description="family 'diffusion': DiffusionConfig fields "
                                      "(model_channels, channel_mult, sample_steps, guidance, max_seconds, ...); "
                                      "steps, batch_size, lr_g, seed and the *_every fields come from above.")
    kl_weight: float = Field(default=CORE.kl_weight, description="vae: weight of the KL term against the summed "
                                                                 "squared pixel error.")
    device: str = Field(default=JOB.device, description="'auto' (CUDA when present), 'cpu' or 'cuda'.")
    conditioning: str = Field(default=JOB.conditioning, description="'none', 'class', 'text' or 'auto' (class when "
                                                                    "the dataset has at least 2 classes, else none).")
    steps: int = Field(default=CORE.steps, description="Optimizer steps (the cpu-demo default: FID 18.1 on MNIST "
                                                       "against 23.1 at 6,000 steps; 8-14 min on 2 cores; see "
                                                       "`imagegen presets` for GPU sizes).")
    batch_size: int = Field(default=CORE.batch_size, description="Images per step.")
    ngf: int = Field(default=CORE.ngf, description="Generator width (64 is the paper's).")
    ndf: int = Field(default=CORE.ndf, description="Discriminator width (64 is the paper's).")
    lr_g: float = Field(default=CORE.lr_g, description="Generator Adam learning rate (at batch 64 on MNIST, 6,000 "
                                                       "steps: FID 23.7 at 1.2e-3, 26.2 at 8e-4, 27.6 at 4e-4; "
                                                       "README). The vae family's one learning rate.")
    lr_d: float = Field(default=CORE.lr_d, description="Discriminator Adam learning rate.")
    loss: str = Field(default=CORE.loss, description="'hinge' or 'bce'.")
    diffaugment: str = Field(default=CORE.diffaugment, description="DiffAugment policy, e.g. 'color,translation,"
                                                                   "cutout', for small datasets (<10k images); on 60k "
                                                                   "MNIST images it made G collapse, so it is off.")
    ema_beta: float = Field(default=CORE.ema_beta, description="Generator weight averaging (the EMA model is served).")
    ema_start_step: int = Field(default=CORE.ema_start_step, description="EMA copies G until this step.")
    feature_head: bool = Field(default=CORE.feature_head, description="Extra D head on the frozen fine-tuned "
                                                                      "extractor's features (needs feature_extractor).")
    init_from: str = Field(default=JOB.init_from, description="Start from another dataset's trained DCGAN (its "
                                                              "registered champion's, else newest, checkpoint).")
    freeze_d_blocks: int = Field(default=CORE.freeze_d_blocks, description="With init_from: keep the first k D "
                                                                           "blocks fixed.")
    sample_every: int = Field(default=CORE.sample_every, description="Steps between fixed-noise sample grids (logged "
                                                                     "to MLflow with the z_sensitivity monitor).")
    checkpoint_every: int = Field(default=CORE.checkpoint_every, description="Steps between checkpoints.")
    log_every: int = Field(default=CORE.log_every, description="Steps between metrics.")
    compile: bool = Field(default=CORE.compile, description="torch.compile G and D (CUDA only).")
    cpu_bf16: bool = Field(default=JOB.cpu_bf16, description="On a CPU with native bf16 (AVX512-BF16 or AMX), train "
                                                             "in bf16 autocast like on CUDA (1.3-1.8x the steps per "
                                                             "second on 2 cores); false = fp32. Ignored elsewhere.")
    cpu_threads: int = Field(default=JOB.cpu_threads, description="torch threads while training on a CPU; 0 = "
                                                               "torch's default (one per core). 1 on a shared "
                                                               "2-core box: 2 threads per busy process oversubscribe "
                                                               "it (a diffusion step ran 6-12x slower).")
    seed: int = Field(default=CORE.seed, description="Seed for weights, batches and the fixed sample noise.")

    def to_job(self) -> GeneratorJob:
        """Fields of the job (how to run) go to the job, the rest (the model) to DCGANConfig."""
        values = self.model_dump()
        model = {k: values.pop(k) for k in list(values) if k not in GeneratorJob.__dataclass_fields__}
        return GeneratorJob(model=model, **values)


@dg.asset(automation_condition=RETRAIN_WHEN_DATA_CHANGES,
          partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN,
          group_name=GROUP, kinds={"pytorch", "mlflow"}, pool="gpu",
          deps=[IMAGE_SHARDS, FEATURE_EXTRACTOR, CAPTION_EMBEDDINGS],
          description="Conditional DCGAN (G + D, EMA generator) trained on the shards; checkpoints every N steps "
                      "and resumes after a kill. The EMA generator is registered as imagegen-generator-<dataset>.")
def dcgan_checkpoint(context: dg.AssetExecutionContext, config: DcganTrainConfig, storage: ImagegenStorage,
                     mlflow_tracker: MlflowTracker, training: TrainingLauncher) -> dg.MaterializeResult:
    with stage_failures():
        if training.external:  # torchrun processes through Dagster Pipes: imagegen_pipeline.external
            return training.launch(context, extras={
                "home": str(storage.paths.home), "tracking_uri": mlflow_tracker.tracking_uri, "run_tag": context.run_id,
                "ui_url": mlflow_tracker.ui_url, "dataset": dataset_of(context), "job": asdict(config.to_job())})
        return materialized(train_generator(
            storage.paths, dataset_of(context), config.to_job(), tracker=mlflow_tracker.open(storage.paths),
            run_tag=context.run_id, log=context.log.info, warn=context.log.warning))
