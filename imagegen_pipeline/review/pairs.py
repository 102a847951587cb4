"""Review items. Pairs: one real image from the shards and one generated for the same label or caption, sides at
random. Prompt questions: one generated picture and the prompt it was drawn for (a text model's held-out composite
prompts first, then real captions; a class model's labels).

No HTTP here: the server only looks items up by their random id.
"""

from __future__ import annotations

import hashlib
import io
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imagegen_pipeline.ml.dcgan.export import WEIGHTS_FILE as GENERATOR_FILE  # in data/models/<dataset>/
from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline.paths import DataPaths


@dataclass(frozen=True)
class GeneratorSource:
    """Where the generated images come from, and how to make them."""

    model_name: str  # imagegen-generator-<dataset>, or file:<path>
    model_version: str  # registry version, or sha256[:16] of the weights file
    description: str  # for people: "imagegen-generator-mnist v3 (@champion)"
    conditioning: str  # "none" | "class" | "text"
    generate: Callable[[Sequence[str | None], Sequence[int]], np.ndarray]  # prompts, seeds -> uint8 (N, H, W, C)


@dataclass(frozen=True)
class ReviewItem:
    id: str  # random token: says nothing about which side is real
    prompt: str | None  # label or caption both images should show; None for an unconditional model
    seed: int
    real_sha256: str | None
    real_side: str  # "left" | "right"
    left_png: bytes
    right_png: bytes


@dataclass(frozen=True)
class PromptQuestion:
    """Asks "does this picture show: <prompt>?" of one generated picture."""

    id: str
    prompt: str
    composite: bool  # one of ml/composite_prompts.py's held-out prompts
    seed: int
    png: bytes


def open_generator(paths: DataPaths, dataset: str, *, model_uri: str | None = None) -> GeneratorSource:
    """`model_uri`, else the registry's @champion, else @candidate, else the exported generator.safetensors."""
    from imagegen_pipeline.tracking.registry import find_generator

    found = find_generator(paths, dataset, model_uri, exported=paths.models(dataset) / GENERATOR_FILE)
    if isinstance(found, Path):
        return _file_source(found)
    return _pyfunc_source(found.model, found.name, found.version, found.description)


def _pyfunc_source(model, name: str, version: str, description: str) -> GeneratorSource:
    import pandas as pd

    conditioning = (model.metadata.metadata or {}).get("conditioning", "none")
    column = {"class": "label", "text": "prompt"}.get(conditioning)

    def generate(prompts: Sequence[str | None], seeds: Sequence[int]) -> np.ndarray:
        frame = pd.DataFrame({"seed": [int(s) for s in seeds], "count": [1] * len(seeds)})
        if column:
            frame.insert(0, column, list(prompts))
        return model.predict(frame, params={"format": "array"})

    return GeneratorSource(name, version, description, conditioning, generate)


def _file_source(weights: Path) -> GeneratorSource:
    from imagegen_pipeline.ml.dcgan import generate as dcgan_generate
    from imagegen_pipeline.ml.dcgan import load_generator
    from imagegen_pipeline.ml.dcgan.sample import class_index

    generator, cfg = load_generator(weights)
    class_names = list(cfg.extra.get("class_names", []))
    encoder = None

    def generate(prompts: Sequence[str | None], seeds: Sequence[int]) -> np.ndarray:
        nonlocal encoder
        if cfg.conditioning == "class":
            cond = [class_index(p, class_names, cfg.num_classes) for p in prompts]
        elif cfg.conditioning == "text":
            from imagegen_pipeline.ml.caption_tokens import prompt_conditions

            if encoder is None:
                from imagegen_pipeline.ml.text_encoder import TextEncoder

                encoder = TextEncoder()
            cond = prompt_conditions(cfg, prompts, encoder=encoder)
        else:
            cond = None
        return dcgan_generate(generator, cfg, seeds=list(seeds), cond=cond)

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return GeneratorSource(f"file:{weights}", digest, f"{weights} (sha256 {digest})", cfg.conditioning, generate)


def sample_real(reader: ShardReader, n: int, rng: random.Random) -> list[dict]:
    """n real rows ({'image': uint8 (H, W, C), 'label', 'caption', 'sha256'}) from val (train if val is empty);
    without repeats while the split lasts."""
    split = "val" if reader.num_rows("val") > 0 else "train"
    total = reader.num_rows(split)
    if total == 0:
        raise ValueError(f"{reader.dir} has no images to compare against")
    picks = rng.sample(range(total), n) if n <= total else [rng.randrange(total) for _ in range(n)]
    wanted: dict[int, list[int]] = {}
    for slot, row in enumerate(picks):
        wanted.setdefault(row, []).append(slot)
    out: list[dict] = [{}] * n
    offset = 0
    for batch in reader.iter_batches(split, columns=("label", "caption", "sha256")):
        k = len(batch["images"])
        for row in [r for r in wanted if offset <= r < offset + k]:
            i = row - offset
            rec = {"image": batch["images"][i].permute(1, 2, 0).numpy(), "label": batch["label"][i],
                   "caption": batch["caption"][i], "sha256": batch["sha256"][i]}
            for slot in wanted[row]:
                out[slot] = rec
        offset += k
    return out


def _png(image: np.ndarray, like: np.ndarray) -> bytes:
    """uint8 (H, W, C) as PNG, resized and converted to `like`'s size and channels so only content differs."""
    im = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    im = im.convert("L" if like.shape[-1] == 1 else "RGB")
    if im.size != (like.shape[1], like.shape[0]):
        im = im.resize((like.shape[1], like.shape[0]), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def build_pairs(source: GeneratorSource, reader: ShardReader, n: int, *, rng: random.Random | None = None
                ) -> list[ReviewItem]:
    """n pairs: a real image, its label (class models) or caption (text models) as the prompt, and an image
    generated for that prompt from a fresh random seed; the real one on a random side."""
    if not 1 <= n <= 1000:
        raise ValueError(f"n must be between 1 and 1000, got {n}")
    rng = rng or random.SystemRandom()
    real = sample_real(reader, n, rng)
    field = {"class": "label", "text": "caption"}.get(source.conditioning)
    prompts = [(r[field] or r["label"]) if field else None for r in real]
    seeds = [rng.randrange(2**31) for _ in range(n)]
    fake = source.generate(prompts, seeds)  # uint8 (n, H, W, C)
    items = []
    for r, prompt, seed, gen in zip(real, prompts, seeds, fake):
        real_png, gen_png = _png(r["image"], like=gen), _png(gen, like=gen)
        side = rng.choice(("left", "right"))
        left, right = (real_png, gen_png) if side == "left" else (gen_png, real_png)
        items.append(ReviewItem(secrets.token_urlsafe(12), prompt, seed, r["sha256"], side, left, right))
    return items


def question_prompts(source: GeneratorSource, reader: ShardReader, n: int, rng: random.Random
                     ) -> list[tuple[str, bool]]:
    """n (prompt, composite) pairs: for a text model the composite prompts first (on composed data "a cat with a
    hat" and the held-out pairs the concept judge scores, elsewhere ml/composite_prompts.py's), then captions of
    real images; for a class model labels of real images; none for an unconditional model."""
    if source.conditioning not in ("class", "text") or n < 1:
        return []
    chosen = [(p, True) for p in composite_questions(reader)][:n] if source.conditioning == "text" else []
    if len(chosen) < n:
        field = "caption" if source.conditioning == "text" else "label"
        chosen += [(str(r[field] or r["label"]), False) for r in sample_real(reader, n - len(chosen), rng)]
    return chosen


def composite_questions(reader: ShardReader) -> list[str]:
    """The prompts a text model is asked about first: the composition prompts where the shards hold composed
    pictures (a held-out pair's caption in val), else the caption-bank composite prompts."""
    from imagegen_pipeline.datasets.composition_pairs import held_out_prompts
    from imagegen_pipeline.ml.composite_prompts import prompts as composite_prompts
    from imagegen_pipeline.stages.composition_eval import USER_PROMPT

    held = [p for p, _, _ in held_out_prompts()]
    if reader.num_rows("val") and set(held) & set(reader.read_column("val", "caption")):
        return [USER_PROMPT, *held]
    return composite_prompts()


def build_questions(source: GeneratorSource, reader: ShardReader, n: int, *, rng: random.Random | None = None
                    ) -> list[PromptQuestion]:
    """n prompt questions (`question_prompts`), each with a picture generated from a fresh random seed."""
    if not 0 <= n <= 1000:
        raise ValueError(f"the number of prompt questions must be between 0 and 1000, got {n}")
    rng = rng or random.SystemRandom()
    chosen = question_prompts(source, reader, n, rng)
    if not chosen:
        return []
    seeds = [rng.randrange(2**31) for _ in chosen]
    fake = source.generate([p for p, _ in chosen], seeds)  # uint8 (n, H, W, C)
    return [PromptQuestion(secrets.token_urlsafe(12), prompt, composite, seed, _png(gen, like=gen))
            for (prompt, composite), seed, gen in zip(chosen, seeds, fake)]
