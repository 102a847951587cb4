"""Stage `prompt_gallery`: what the latest text-conditioned generator draws for a fixed list of prompts, best of K
candidates each by prompt score, as one grid per prompt and an index.html under
reports/<dataset>/prompts/v<version>/."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from imagegen_pipeline.atomic import write_bytes_atomic, write_json_atomic
from imagegen_pipeline.ml.dcgan import generate
from imagegen_pipeline.ml.grids import image_grid, png_bytes
from imagegen_pipeline.ml.caption_tokens import prompt_conditions
from imagegen_pipeline.ml.prompt_score import PromptScorer, keep_best
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.ml.text_encoder import MissingTextModelError, TextEncoder
from imagegen_pipeline.pages import key_value_table, page
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline.stages.artifacts import EXTRACTOR_FILE, trained_generator
from imagegen_pipeline.stages.outputs import FilePath, Markdown, Png, StageFailed, markdown_table

PROMPTS_DIR = "prompts"  # under reports/<dataset>/: one v<version>/ folder per generator version
INDEX_FILE = "index.html"
SCORES_FILE = "prompts.json"  # the same numbers as the page, for machines
PREVIEW_FILE = "preview.png"  # every prompt's best images, one row per prompt
DEFAULT_PROMPTS = ["a cat with a hat", "a red heart", "a smiling face", "a flag with stars", "a green tree",
                   "a dog face"]


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
    keep, scores, nearest = keep_best(scorer, images, prompt, k=k)
    return images[keep], [seed + int(i) for i in keep], scores, nearest


def index_html(title: str, rows: list[PromptRow], meta: dict) -> str:
    """One page: per prompt its grid and, per image, its seed, score and nearest training caption (all escaped)."""
    esc = html.escape
    sections = []
    for r in rows:
        cells = "".join(f"<tr><td>{s}</td><td>{v:.4f}</td><td>{esc(c)}</td></tr>"
                        for s, v, c in zip(r.seeds, r.scores, r.nearest))
        sections.append(f"<section><h2>{esc(r.prompt)}</h2><p>mean score {r.mean_score:.4f}</p>"
                        f"<img src='{esc(r.file)}' alt='{esc(r.prompt)}'>"
                        f"<table><tr><th>seed</th><th>score</th><th>nearest training caption</th></tr>{cells}</table>"
                        "</section>")
    return page(title, f"<h1>{esc(title)}</h1>{key_value_table(meta)}<p>Score: mean cosine between the prompt and "
                       "the captions of a generated image's nearest training images (fine-tuned extractor space); "
                       f"each image is the best of its candidates.</p>{''.join(sections)}")


def draw_prompts(paths: DataPaths, dataset: str, prompts: list[str], *, images_per_prompt: int, candidates: int,
                 neighbours: int, seed: int, device: str, log: Callable[[str], None]) -> dict:
    """Best-of-K images per prompt, their grids, scores and page; the metadata of what was made."""
    prompts = [p.strip() for p in prompts]
    if not prompts or not all(prompts):
        raise StageFailed(f"prompts must be a non-empty list of non-blank texts, got {prompts!r}")
    if images_per_prompt < 1 or candidates < 1:
        raise StageFailed("images_per_prompt and candidates must be at least 1")
    runtime = resolve_runtime(device)
    summary, generator, cfg = trained_generator(paths, dataset, device=runtime.device)
    name, version = summary["registered_model"], str(summary["version"])
    if cfg.conditioning != "text":
        raise StageFailed(f"{dataset}: {name} v{version} is conditioned on {cfg.conditioning!r}, not on text, so it "
                         f"cannot follow prompts. Train a text model: `imagegen train {dataset} --conditioning text` "
                         "(after caption_embeddings).")
    try:
        encoder = TextEncoder()
        scorer = PromptScorer.load(extractor_file=paths.models(dataset) / EXTRACTOR_FILE,
                                   embeddings_dir=paths.embeddings(dataset), encoder=encoder,
                                   neighbours=neighbours, device=device)
    except (MissingTextModelError, FileNotFoundError, ValueError) as exc:
        raise StageFailed(f"{dataset}: cannot score prompts ({exc}); materialize feature_extractor, image_embeddings "
                         "and caption_embeddings") from exc
    vectors = prompt_conditions(cfg, prompts, encoder=encoder)  # (P, 384) pooled, (P, L, 384) token states
    out_dir = paths.reports(dataset) / PROMPTS_DIR / f"v{version}"
    n, k = images_per_prompt, candidates
    log(f"{dataset}: {len(prompts)} prompts x best of {k} for {n} images from {name} v{version} "
                     f"on {runtime.describe()['device_name']} into {out_dir}")
    rows: list[PromptRow] = []
    tile = max(64, cfg.resolution)
    for i, (prompt, vector) in enumerate(zip(prompts, vectors)):
        images, seeds, scores, nearest = best_images_for_prompt(generator, cfg, scorer, vector, prompt, n=n, k=k,
                                                                seed=seed, runtime=runtime)
        row = PromptRow(prompt, grid_file(i, prompt), images, seeds, [float(s) for s in scores], nearest)
        write_bytes_atomic(out_dir / row.file, png_bytes(image_grid(images, nrow=min(n, 8), tile=tile)))
        rows.append(row)
        log(f"{prompt!r}: mean score {row.mean_score:.4f}, best {row.scores[0]:.4f} "
                         f"(nearest: {row.nearest[0]!r})")
    preview = png_bytes(image_grid(np.concatenate([r.images for r in rows]), nrow=n, tile=tile))
    write_bytes_atomic(out_dir / PREVIEW_FILE, preview)
    title = f"{name} v{version}: prompts"
    meta = {"dataset": dataset, "generator steps": summary.get("steps"), "images per prompt": n,
            "candidates per image": k, "neighbours": neighbours, "first seed": seed}
    write_json_atomic(out_dir / SCORES_FILE, {
        "registered_model": name, "version": version, **meta,
        "prompts": [{"prompt": r.prompt, "file": r.file, "mean_score": r.mean_score, "seeds": r.seeds,
                     "scores": r.scores, "nearest": r.nearest} for r in rows]})
    write_bytes_atomic(out_dir / INDEX_FILE, index_html(title, rows, meta).encode())  # last: the page is complete
    table = markdown_table(["prompt", "mean score", "best image's nearest caption"],
                           [(html.escape(r.prompt), f"{r.mean_score:.4f}", html.escape(r.nearest[0])) for r in rows])
    return {
        "prompts": Markdown(table),
        "preview": Png(preview, "best images, one row per prompt"),
        "mean_score": round(float(np.mean([r.mean_score for r in rows])), 5),
        "generator": f"{name} v{version}",
        "index": FilePath(str(out_dir / INDEX_FILE)),
    }
