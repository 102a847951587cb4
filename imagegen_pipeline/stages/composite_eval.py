"""The held-out composite prompts in a text model's evaluation report: for each prompt of COMPOSITE_PROMPTS, the
best of K candidates by the judge's prompt score (PromptScorer and best_of, as prompt_gallery), which concepts
their nearest training images name, and a grid of each pick beside its nearest training image with the distance:
the judge is built on the training images, so a copy of one scores well, and the grid shows it."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from imagegen_pipeline.atomic import write_bytes_atomic
from imagegen_pipeline.ml.caption_tokens import prompt_conditions
from imagegen_pipeline.ml.composite_prompts import COMPOSITE_PROMPTS, concept_shares
from imagegen_pipeline.ml.embeddings_store import rows_by_sha256
from imagegen_pipeline.ml.grids import image_grid, png_bytes
from imagegen_pipeline.ml.dcgan import generate
from imagegen_pipeline.ml.prompt_score import PromptScorer, best_of
from imagegen_pipeline.stages.outputs import markdown_table
from imagegen_pipeline.stages.prompt_gallery import grid_file

COMPOSITE_DIR = "composite"  # under reports/<dataset>/eval-v<N>/: one grid per prompt
SUMMARY_KEYS = {"mean_score": "composite_prompt_score", "subject_share": "composite_subject_share",
                "accessory_share": "composite_accessory_share", "both_share": "composite_concept_share",
                "nn_distance_mean": "composite_nn_distance"}  # per-prompt figure -> the report's headline key


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    return 1.0 - (a * b).sum(-1)  # b: the bank's unit rows


def train_nn_scale(scorer: PromptScorer, *, probes: int = 512, seed: int = 0) -> float:
    """Median cosine distance from a training image to its nearest other training image: picks far closer than
    this to a training image are copies rather than new drawings."""
    vecs = scorer.bank.image_vectors
    if len(vecs) < 2:
        return float("nan")
    rows = np.random.default_rng(seed).choice(len(vecs), min(probes, len(vecs)), replace=False)
    sims = vecs[rows] @ vecs.T
    sims[np.arange(len(rows)), rows] = -np.inf  # not itself
    return float(np.median(1.0 - sims.max(axis=1)))


def evaluate_composites(generator, cfg, scorer: PromptScorer, *, train_images, train_sha256: list[str],
                        images_per_prompt: int, candidates: int, seed: int, runtime, out_dir: Path) -> dict:
    """Each composite prompt: best of `candidates` for `images_per_prompt` picks (seeds as prompt_gallery's), their
    figures and a grid written to out_dir/composite/. `train_images` uint8 (N, C, H, W) with `train_sha256` (N,):
    where the bank's nearest images are drawn from. The record for report.json: per-prompt rows, the summary
    figures and the settings. The candidates of all prompts go through the extractor in one pass: on CPU a call's
    setup outweighs a few images (16 calls of 2 images took 6.5 s, one of 48 0.8 s, 2 shared cores)."""
    n, k = images_per_prompt, candidates
    prompts = [p for p, _, _ in COMPOSITE_PROMPTS]
    vectors = scorer.encoder.encode(prompts)  # (P, D): what the judge scores against
    drawn = [generate(generator, cfg, seeds=range(seed, seed + n * k), cond=c, runtime=runtime)
             for c in prompt_conditions(cfg, prompts, encoder=scorer.encoder)]  # what the model reads
    embedded = scorer.embed(np.concatenate(drawn)).reshape(len(drawn), n * k, -1)  # (P, n*k, E)
    bank = scorer.bank
    tile = max(64, cfg.resolution)
    rows = []
    for i, (prompt, subject, accessory) in enumerate(COMPOSITE_PROMPTS):
        all_scores = bank.score(embedded[i], vectors[i], k=scorer.neighbours)
        keep = best_of(all_scores, k=k)  # each group's best, best first: what keep_best keeps
        images, emb, scores = drawn[i][keep], embedded[i][keep], all_scores[keep]
        near = bank.neighbours(emb, k=scorer.neighbours)  # (n, neighbours) bank rows, nearest first
        captions = [[bank.captions[j] for j in row] for row in near]
        distance = _cosine_distance(emb, bank.image_vectors[near[:, 0]])
        file = f"{COMPOSITE_DIR}/{grid_file(i, prompt)}"
        write_bytes_atomic(out_dir / file, png_bytes(image_grid(
            _beside_nearest(images, near[:, 0], bank.sha256, train_images, train_sha256), nrow=2, tile=tile)))
        rows.append({"prompt": prompt, "subject": list(subject), "accessory": list(accessory), "file": file,
                     "mean_score": float(np.mean(scores)), **concept_shares(captions, subject, accessory),
                     "nn_distance_mean": float(distance.mean()),
                     "picks": [{"seed": seed + int(j), "score": float(v), "nearest_captions": c,
                                "nn_distance": float(d)} for j, v, c, d in zip(keep, scores, captions, distance)]})
    summary = {key: float(np.mean([r[field] for r in rows])) for field, key in SUMMARY_KEYS.items()}
    return {"prompts": rows, "summary": summary,
            "settings": {"images_per_prompt": n, "candidates": k, "neighbours": scorer.neighbours,
                         "first_seed": seed, "train_nn_distance_median": train_nn_scale(scorer, seed=seed)}}


def _beside_nearest(picks: np.ndarray, bank_rows: np.ndarray, bank_sha256: list[str] | None, train_images,
                    train_sha256: list[str]) -> np.ndarray:
    """(2n, H, W, C): each pick followed by its nearest training image (a white tile where it is not at hand)."""
    out = np.full((2 * len(picks), *picks.shape[1:]), 255, dtype=np.uint8)
    out[0::2] = picks
    if bank_sha256 is None:
        return out
    found = rows_by_sha256([bank_sha256[j] for j in bank_rows], train_sha256)
    for k, row in enumerate(found):
        if row < 0:
            continue
        im = np.asarray(train_images[int(row)]).transpose(1, 2, 0)  # (H, W, C)
        if im.shape == picks.shape[1:]:
            out[2 * k + 1] = im
        elif im.shape[-1] == 1 and picks.shape[-1] == 3 and im.shape[:2] == picks.shape[1:3]:
            out[2 * k + 1] = np.repeat(im, 3, axis=-1)
    return out


def with_human(record: dict, by_prompt: dict) -> dict:
    """Beside the judge's figures, each prompt's human answers to "does this picture show: <prompt>?" (review
    page; this version's answers), as yes / answers."""
    for row in record["prompts"]:
        got = by_prompt.get(row["prompt"]) or {}
        row["human_answers"], row["human_yes"] = int(got.get("answers", 0)), int(got.get("yes", 0))
    return record


COLUMNS = ("prompt", "judge score", "subject", "accessory", "both", "NN distance", "human: shows it")


def _cells(row: dict) -> list[str]:
    human = f"{row['human_yes']}/{row['human_answers']}" if row.get("human_answers") else "no answers"
    return [row["prompt"], f"{row['mean_score']:.4f}", f"{row['subject_share']:.2f}", f"{row['accessory_share']:.2f}",
            f"{row['both_share']:.2f}", f"{row['nn_distance_mean']:.3f}", human]


def _intro(record: dict) -> str:
    s = record["settings"]
    return (f"{len(record['prompts'])} held-out prompts pairing a subject and an accessory the data shows only "
            f"apart; best of {s['candidates']} candidates for each of {s['images_per_prompt']} picks by the judge's "
            f"prompt score. Subject / accessory / both: share of picks whose {s['neighbours']} nearest training "
            "images' captions name it. NN distance: cosine distance (extractor space) of a pick to its nearest "
            f"training image; training images lie {s['train_nn_distance_median']:.3f} from their nearest other one "
            "(median): far below that is a copy, which the judge, built on the training images, rewards.")


def _distances(row: dict) -> str:
    return ", ".join(f"{p['nn_distance']:.3f}" for p in row["picks"])


def composite_markdown(record: dict) -> str:
    rows = [[html.escape(c) for c in _cells(r)] for r in record["prompts"]]
    return "**Composite prompts**\n\n" + _intro(record) + "\n\n" + markdown_table(COLUMNS, rows)


def composite_html(record: dict) -> str:
    """The section for report.html: the table and each prompt's grid (pick | nearest training image)."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(r)) + "</tr>" for r in record["prompts"])
    figures = "".join(
        f"<figure><img src='{esc(r['file'])}' alt='{esc(r['prompt'])}'><figcaption>{esc(r['prompt'])}: pick | "
        f"nearest training image, distances {_distances(r)}</figcaption></figure>" for r in record["prompts"])
    return (f"<h2>Composite prompts</h2><p>{esc(_intro(record))}</p><table><tr>{head}</tr>{body}</table>"
            f"{figures}")
