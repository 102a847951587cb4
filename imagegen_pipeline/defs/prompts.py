"""Asset `prompt_gallery`: what the latest text-conditioned generator draws for a fixed list of prompts, best of K
candidates each by prompt score, as one grid per prompt and an index.html under
reports/<dataset>/prompts/v<version>/."""


import dagster as dg
from pydantic import Field

from imagegen_pipeline.defs.artifacts import CAPTION_EMBEDDINGS, DCGAN_CHECKPOINT, IMAGE_EMBEDDINGS
from imagegen_pipeline.defs.common import dataset_of
from imagegen_pipeline.defs.metadata import materialized, stage_failures
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.stages.prompt_gallery import DEFAULT_PROMPTS, draw_prompts

GROUP = "evaluation"


class PromptGalleryConfig(dg.Config):
    prompts: list[str] = Field(default=DEFAULT_PROMPTS, description="What to ask the generator for, one grid each.")
    images_per_prompt: int = Field(default=8, description="Images kept per prompt (n).")
    candidates: int = Field(default=4, description="Candidates generated per kept image (K): the best of each K, "
                                                   "by prompt score, is kept.")
    neighbours: int = Field(default=5, description="Training images whose captions describe a generated image.")
    seed: int = Field(default=0, description="First noise seed; every prompt uses the same seeds, so rows compare.")
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'.")


@dg.asset(partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN, group_name=GROUP,
          kinds={"pytorch", "html"}, deps=[DCGAN_CHECKPOINT, CAPTION_EMBEDDINGS, IMAGE_EMBEDDINGS],
          description="Best-of-K images for a fixed list of prompts from the latest text-conditioned generator, "
                      "scored by how well their nearest training images' captions match the prompt: a grid per "
                      "prompt and index.html under reports/<dataset>/prompts/v<version>/.")
def prompt_gallery(context: dg.AssetExecutionContext, config: PromptGalleryConfig,
                   storage: ImagegenStorage) -> dg.MaterializeResult:
    with stage_failures():
        return materialized(draw_prompts(
            storage.paths, dataset_of(context), config.prompts, images_per_prompt=config.images_per_prompt,
            candidates=config.candidates, neighbours=config.neighbours, seed=config.seed, device=config.device,
            log=context.log.info))


prompt_assets = [prompt_gallery]
