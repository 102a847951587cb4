"""Asset `prompt_gallery`: what the latest text-conditioned generator draws for a fixed list of prompts, best of K
candidates each by prompt score, as one grid per prompt and an index.html under
reports/<dataset>/prompts/v<version>/."""


import html
import re
from dataclasses import dataclass

import dagster as dg
import numpy as np
from pydantic import Field

from imagegen_pipeline.atomic import write_bytes_atomic, write_json_atomic
from imagegen_pipeline.defs.artifacts import (CAPTION_EMBEDDINGS, DCGAN_CHECKPOINT, EXTRACTOR_FILE, IMAGE_EMBEDDINGS,
                                              trained_generator)
from imagegen_pipeline.defs.common import dataset_of
from imagegen_pipeline.defs.metadata import markdown_table, png_markdown
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage
from imagegen_pipeline.ml.dcgan import generate
from imagegen_pipeline.ml.grids import image_grid, png_bytes
from imagegen_pipeline.ml.prompt_score import PromptScorer, best_of
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.ml.text_encoder import MissingTextModelError, TextEncoder

GROUP = "evaluation"
PROMPTS_DIR = "prompts"  # under reports/<dataset>/: one v<version>/ folder per generator version
INDEX_FILE = "index.html"
SCORES_FILE = "prompts.json"  # the same numbers as the page, for machines
PREVIEW_FILE = "preview.png"  # every prompt's best images, one row per prompt
DEFAULT_PROMPTS = ["a cat with a hat", "a red heart", "a smiling face", "a flag with stars", "a green tree",
                   "a dog face"]


class PromptGalleryConfig(dg.Config):
    prompts: list[str] = Field(default=DEFAULT_PROMPTS, description="What to ask the generator for, one grid each.")
    images_per_prompt: int = Field(default=8, description="Images kept per prompt (n).")
    candidates: int = Field(default=4, description="Candidates generated per kept image (K): the best of each K, "
                                                   "by prompt score, is kept.")
    neighbours: int = Field(default=5, description="Training images whose captions describe a generated image.")
    seed: int = Field(default=0, description="First noise seed; every prompt uses the same seeds, so rows compare.")
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'.")


@dataclass
class PromptRow:
    """One prompt's kept images, best first."""

    prompt: str
    file: str  # grid PNG, relative to the version folder
    images: np.ndarray  # uint8 (n, H, W, C)
    seeds: list[int]  # the noise seed of each kept image
    scores: list[float]  # prompt score of each kept image
    nearest: list[str]  # caption of each kept image's nearest training image

    @property
    def mean_score(self) -> float:
        return float(np.mean(self.scores))


def grid_file(index: int, prompt: str) -> str:
    """A safe, readable file name for a prompt's grid: '00-a-cat-with-a-hat.png'."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].strip("-") or "prompt"
    return f"{index:02d}-{slug}.png"


def best_images_for_prompt(generator, cfg, scorer: PromptScorer, prompt_vector: np.ndarray, prompt: str, *,
                           n: int, k: int, seed: int, runtime) -> tuple[np.ndarray, list[int], np.ndarray, list[str]]:
    """n*k candidates (seeds seed..seed+n*k-1) for one prompt, the best of each group of k kept, best first:
    (images uint8 (n, H, W, C), their seeds, their scores (n,), their nearest training captions)."""
    images = generate(generator, cfg, seeds=range(seed, seed + n * k), cond=prompt_vector, runtime=runtime)
    scores, nearest = scorer.score(images, prompt)
    keep = best_of(scores, k=k)
    return images[keep], [seed + int(i) for i in keep], scores[keep], [nearest[i] for i in keep]


def index_html(title: str, rows: list[PromptRow], meta: dict) -> str:
    """One page: per prompt its grid and, per image, its seed, score and nearest training caption (all escaped)."""
    esc = html.escape
    meta_rows = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in meta.items())
    sections = []
    for r in rows:
        cells = "".join(f"<tr><td>{s}</td><td>{v:.4f}</td><td>{esc(c)}</td></tr>"
                        for s, v, c in zip(r.seeds, r.scores, r.nearest))
        sections.append(f"<section><h2>{esc(r.prompt)}</h2><p>mean score {r.mean_score:.4f}</p>"
                        f"<img src='{esc(r.file)}' alt='{esc(r.prompt)}'>"
                        f"<table><tr><th>seed</th><th>score</th><th>nearest training caption</th></tr>{cells}</table>"
                        "</section>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:6px 0}}
td,th{{border:1px solid #ccc;padding:3px 8px}}img{{image-rendering:pixelated;max-width:560px}}</style>
</head><body><h1>{esc(title)}</h1><table>{meta_rows}</table>
<p>Score: mean cosine between the prompt and the captions of a generated image's nearest training images
(fine-tuned extractor space); each image is the best of its candidates.</p>{''.join(sections)}</body></html>"""


@dg.asset(partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN, group_name=GROUP,
          kinds={"pytorch", "html"}, deps=[DCGAN_CHECKPOINT, CAPTION_EMBEDDINGS, IMAGE_EMBEDDINGS],
          description="Best-of-K images for a fixed list of prompts from the latest text-conditioned generator, "
                      "scored by how well their nearest training images' captions match the prompt: a grid per "
                      "prompt and index.html under reports/<dataset>/prompts/v<version>/.")
def prompt_gallery(context: dg.AssetExecutionContext, config: PromptGalleryConfig,
                   storage: ImagegenStorage) -> dg.MaterializeResult:
    dataset = dataset_of(context)
    paths = storage.paths
    prompts = [p.strip() for p in config.prompts]
    if not prompts or not all(prompts):
        raise dg.Failure(f"prompts must be a non-empty list of non-blank texts, got {config.prompts!r}")
    if config.images_per_prompt < 1 or config.candidates < 1:
        raise dg.Failure("images_per_prompt and candidates must be at least 1")
    runtime = resolve_runtime(config.device)
    summary, generator, cfg = trained_generator(paths, dataset, device=runtime.device)
    name, version = summary["registered_model"], str(summary["version"])
    if cfg.conditioning != "text":
        raise dg.Failure(f"{dataset}: {name} v{version} is conditioned on {cfg.conditioning!r}, not on text, so it "
                         f"cannot follow prompts. Train a text model: `imagegen train {dataset} --conditioning text` "
                         "(after caption_embeddings).")
    try:
        encoder = TextEncoder()
        scorer = PromptScorer.load(extractor_file=paths.models(dataset) / EXTRACTOR_FILE,
                                   embeddings_dir=paths.embeddings(dataset), encoder=encoder,
                                   neighbours=config.neighbours, device=config.device)
    except (MissingTextModelError, FileNotFoundError, ValueError) as exc:
        raise dg.Failure(f"{dataset}: cannot score prompts ({exc}); materialize feature_extractor, image_embeddings "
                         "and caption_embeddings") from exc
    vectors = encoder.encode(prompts)  # (P, 384)
    out_dir = paths.reports(dataset) / PROMPTS_DIR / f"v{version}"
    n, k = config.images_per_prompt, config.candidates
    context.log.info(f"{dataset}: {len(prompts)} prompts x best of {k} for {n} images from {name} v{version} "
                     f"on {runtime.describe()['device_name']} into {out_dir}")
    rows: list[PromptRow] = []
    tile = max(64, cfg.resolution)
    for i, (prompt, vector) in enumerate(zip(prompts, vectors)):
        images, seeds, scores, nearest = best_images_for_prompt(generator, cfg, scorer, vector, prompt, n=n, k=k,
                                                                seed=config.seed, runtime=runtime)
        row = PromptRow(prompt, grid_file(i, prompt), images, seeds, [float(s) for s in scores], nearest)
        write_bytes_atomic(out_dir / row.file, png_bytes(image_grid(images, nrow=min(n, 8), tile=tile)))
        rows.append(row)
        context.log.info(f"{prompt!r}: mean score {row.mean_score:.4f}, best {row.scores[0]:.4f} "
                         f"(nearest: {row.nearest[0]!r})")
    preview = png_bytes(image_grid(np.concatenate([r.images for r in rows]), nrow=n, tile=tile))
    write_bytes_atomic(out_dir / PREVIEW_FILE, preview)
    title = f"{name} v{version}: prompts"
    meta = {"dataset": dataset, "generator steps": summary.get("steps"), "images per prompt": n,
            "candidates per image": k, "neighbours": config.neighbours, "first seed": config.seed}
    write_json_atomic(out_dir / SCORES_FILE, {
        "registered_model": name, "version": version, **meta,
        "prompts": [{"prompt": r.prompt, "file": r.file, "mean_score": r.mean_score, "seeds": r.seeds,
                     "scores": r.scores, "nearest": r.nearest} for r in rows]})
    write_bytes_atomic(out_dir / INDEX_FILE, index_html(title, rows, meta).encode())  # last: the page is complete
    table = markdown_table(["prompt", "mean score", "best image's nearest caption"],
                           [(html.escape(r.prompt), f"{r.mean_score:.4f}", html.escape(r.nearest[0])) for r in rows])
    return dg.MaterializeResult(metadata={
        "prompts": dg.MetadataValue.md(table),
        "preview": png_markdown(preview, "best images, one row per prompt"),
        "mean_score": round(float(np.mean([r.mean_score for r in rows])), 5),
        "generator": f"{name} v{version}",
        "index": dg.MetadataValue.path(str(out_dir / INDEX_FILE)),
    })


prompt_assets = [prompt_gallery]
