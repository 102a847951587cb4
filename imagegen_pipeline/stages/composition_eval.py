"""A text model's composition figures, on data with composed pictures (`imagegen datasets import emoji --compose`):
does it draw a subject wearing an accessory, for pairs it trained on and for pairs it never saw together?

The concept judge (ml/metrics/concept_judge.py) is fit on the real composed pictures of every pair, held-out
pairs included (the generator never trains on those nor against the judge), and names the subject and accessory
of each generated picture. The registered `concept_judge` metric turns that into subject / accessory / both-right
rates for seen and held-out pairs, beside the judge's own rates on kept-back real pictures (the ceiling) and
chance; the gate reads `heldout_both_right` against `heldout_both_right_real`. "a cat with a hat", the prompt
users ask, is scored too: right when the judge sees a cat and any head accessory. Every prompt gets a grid of its
candidates over their nearest training images (pixel distance): a copy of a training picture shows there.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from imagegen_pipeline.atomic import write_bytes_atomic
from imagegen_pipeline.datasets.composition_pairs import (ACCESSORIES, NONE, SUBJECTS, captions_for_pair,
                                                          held_out_prompts, is_held_out)
from imagegen_pipeline.ml.caption_tokens import prompt_conditions
from imagegen_pipeline.ml.dcgan import generate
from imagegen_pipeline.ml.grids import image_grid, png_bytes
from imagegen_pipeline.ml.metrics.concept_judge import ConceptSet, JudgeConfig, concept_judge, fit_concept_judge
from imagegen_pipeline.ml.metrics.registry import MetricContext
from imagegen_pipeline.stages.outputs import markdown_table
from imagegen_pipeline.stages.prompt_gallery import grid_file

COMPOSITION_DIR = "composition"  # under reports/<dataset>/eval-v<N>/: one grid per prompt
USER_PROMPT = "a cat with a hat"  # seen: what a user asks; right = a cat under any head accessory
HEAD = tuple(a for a, acc in ACCESSORIES.items() if acc.kind == "head")


@dataclass
class ComposedReal:
    """The real composed pictures of a dataset's shards (train and val: held-out pairs live in val)."""

    images: np.ndarray  # uint8 (N, C, H, W)
    subjects: list[str]
    accessories: list[str]


def composed_labels(manifest: Path) -> dict[str, tuple[str, str]]:
    """sha256 -> (subject, accessory) of each composed picture, from the manifest's `attributes` (labels.csv
    columns of the composer); {} for data without composed pictures."""
    if not manifest.is_file():
        return {}
    frame = pd.read_parquet(manifest, columns=["sha256", "attributes"]).dropna()
    out = {}
    for sha, attributes in zip(frame["sha256"], frame["attributes"]):
        try:
            a = json.loads(attributes)
        except ValueError:
            continue
        if isinstance(a, dict) and a.get("subject") in SUBJECTS and a.get("accessory") in (*ACCESSORIES, NONE):
            out[sha] = (a["subject"], a["accessory"])
    return out


def composed_real(labels: dict[str, tuple[str, str]], splits) -> ComposedReal | None:
    """The composed rows of `splits` (RealSplit with images and sha256), or None where there are none."""
    images, subjects, accessories = [], [], []
    for split in splits:
        rows = [i for i, sha in enumerate(split.sha256) if sha in labels]
        if rows:
            images.append(np.asarray(split.images[rows]))
            for i in rows:
                s, a = labels[split.sha256[i]]
                subjects.append(s)
                accessories.append(a)
    if not images:
        return None
    return ComposedReal(np.concatenate(images), subjects, accessories)


def seen_probe_pairs() -> list[tuple[str, str]]:
    """One seen pair per subject, the accessories taken in turn: the seen side of the figures."""
    names, out = list(ACCESSORIES), []
    for i, subject in enumerate(SUBJECTS):
        for j in range(len(names)):
            accessory = names[(i * 5 + j) % len(names)]
            if not is_held_out(subject, accessory):
                out.append((subject, accessory))
                break
    return out


def _nearest(picks: np.ndarray, train_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pick (n, H, W, C) uint8's nearest training image (N, C, H, W) by pixel RMSE (0-255 scale): (rows (n,),
    distances (n,))."""
    a = picks.reshape(len(picks), -1).astype(np.float32)
    rows, dist = np.zeros(len(picks), np.int64), np.zeros(len(picks), np.float32)
    best = np.full(len(picks), np.inf, np.float32)
    for start in range(0, len(train_images), 4096):
        b = np.asarray(train_images[start:start + 4096]).transpose(0, 2, 3, 1).reshape(-1, a.shape[1])
        b = b.astype(np.float32)
        d = (a ** 2).sum(1)[:, None] - 2 * a @ b.T + (b ** 2).sum(1)[None]  # (n, chunk) squared distances
        j = d.argmin(1)
        better = d[np.arange(len(a)), j] < best
        best[better], rows[better] = d[np.arange(len(a)), j][better], start + j[better]
    dist[:] = np.sqrt(np.maximum(best, 0) / a.shape[1])
    return rows, dist


def evaluate_composition(generator, cfg, real: ComposedReal, *, encoder, train_images: np.ndarray,
                         images_per_prompt: int, seed: int, runtime, out_dir: Path,
                         judge_config: JudgeConfig = JudgeConfig()) -> dict:
    """The record for report.json: the metric's figures (`summary`), one row per prompt with its candidates'
    seeds and judge scores, and where each prompt's grid is. Seeds seed..seed+n-1 for every prompt.
    `train_images` (N, C, H, W): where each candidate's nearest training picture is looked for (the stage passes
    the composed training pictures: against the whole split, pixel distance picks near-white emoji for any blur)."""
    subject_names = sorted(set(real.subjects))
    accessory_names = sorted(set(real.accessories))
    real_set = ConceptSet(real.images, np.array([subject_names.index(s) for s in real.subjects]),
                          np.array([accessory_names.index(a) for a in real.accessories]), subject_names,
                          accessory_names)
    judge = fit_concept_judge(real_set.images, real_set.subjects, real_set.accessories, subject_names=subject_names,
                              accessory_names=accessory_names, config=judge_config, seed=seed, device=runtime.device)
    held = [(p, s, a) for p, s, a in held_out_prompts() if s in subject_names and a in accessory_names]
    seen = [(captions_for_pair(s, a)[0], s, a) for s, a in seen_probe_pairs()
            if s in subject_names and a in accessory_names]
    prompts = [(USER_PROMPT, "cat", HEAD, "user")] + [(p, s, (a,), "held-out") for p, s, a in held] + \
        [(p, s, (a,), "seen") for p, s, a in seen]
    n = images_per_prompt
    conds = prompt_conditions(cfg, [p for p, *_ in prompts], encoder=encoder)
    drawn = np.stack([generate(generator, cfg, seeds=range(seed, seed + n), cond=c, runtime=runtime)
                      for c in conds])  # (P, n, H, W, C)
    flat = drawn.reshape(-1, *drawn.shape[2:]).transpose(0, 3, 1, 2)  # (P n, C, H, W)
    s_prob, a_prob = judge.probabilities(flat)
    s_pred, a_pred = s_prob.argmax(1), a_prob.argmax(1)
    scored = [i for i, (_, _, acc, _) in enumerate(prompts) if len(acc) == 1]  # the pairs the metric counts
    rows_of = np.concatenate([np.arange(i * n, (i + 1) * n) for i in scored])
    fake = ConceptSet(flat[rows_of], np.repeat([subject_names.index(prompts[i][1]) for i in scored], n),
                      np.repeat([accessory_names.index(prompts[i][2][0]) for i in scored], n),
                      subject_names, accessory_names)
    figures = concept_judge(MetricContext(concept_real=real_set, concept_fake=fake,
                                          concept_heldout_pairs=[(s, a) for _, s, a in held], seed=seed,
                                          extra={"concept_judge": judge, "concept_accessory_groups":
                                                 {word: a.kind for word, a in ACCESSORIES.items()}}))
    nn_rows, nn_dist = _nearest(drawn.reshape(-1, *drawn.shape[2:]), train_images)
    guidance = float(getattr(generator, "guidance", getattr(cfg, "guidance", 1.0)))
    rows = []
    for i, (prompt, subject, accessories, kind) in enumerate(prompts):
        r = slice(i * n, (i + 1) * n)
        right = [subject_names[s] == subject and accessory_names[a] in accessories
                 for s, a in zip(s_pred[r], a_pred[r])]
        file = f"{COMPOSITION_DIR}/{grid_file(i, prompt)}"
        tiles = np.concatenate([drawn[i], np.asarray(train_images[nn_rows[r]]).transpose(0, 2, 3, 1)])
        if kind != "seen":  # the seen probes are counted, not pictured
            write_bytes_atomic(out_dir / file, png_bytes(image_grid(tiles, nrow=n, tile=max(64, cfg.resolution))))
        rows.append({"prompt": prompt, "kind": kind, "subject": subject, "accessory": list(accessories),
                     "file": file if kind != "seen" else None, "guidance": guidance, "both_right": float(np.mean(right)),
                     "candidates": [{"seed": seed + k, "subject": subject_names[s], "accessory": accessory_names[a],
                                     "p_subject": float(s_prob[i * n + k, s]), "p_accessory": float(a_prob[i * n + k, a]),
                                     "right": bool(ok), "nn_rmse": float(nn_dist[i * n + k])}
                                    for k, (s, a, ok) in enumerate(zip(s_pred[r], a_pred[r], right))]})
    user = rows[0]
    summary = {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    summary.update(cat_with_hat_right=sum(c["right"] for c in user["candidates"]), cat_with_hat_of=n)
    return {"summary": summary, "ceiling": figures.get("concept_ceiling"), "prompts": rows,
            "settings": {"images_per_prompt": n, "first_seed": seed, "held_out_pairs": len(held),
                         "seen_probe_pairs": len(seen), "judge_fit_images": judge.fit_images,
                         "real_composed_pictures": len(real.images), "guidance": guidance}}


COLUMNS = ("", "subject", "accessory", "both right")


def _table(record: dict) -> list[list[str]]:
    s = record["summary"]
    chance = [f"{s.get(k, float('nan')):.3f}" for k in ("concept_chance_subject", "concept_chance_accessory",
                                                          "concept_chance_both")]
    ceiling = record.get("ceiling") or {}

    def real(group: str) -> list[str]:
        g = ceiling.get(group) or {}
        return [f"{g.get(k, float('nan')):.3f}" if g.get(k) is not None else "n/a"
                for k in ("subject_accuracy", "accessory_accuracy", "both_right")]

    def fake(prefix: str) -> list[str]:
        return [f"{s[f'{prefix}_{k}']:.3f}" if f"{prefix}_{k}" in s else "n/a"
                for k in ("subject_accuracy", "accessory_accuracy", "both_right")]

    return [["held-out pairs, generated", *fake("heldout")], ["held-out pairs, real (ceiling)", *real("heldout")],
            ["seen pairs, generated", *fake("seen")], ["seen pairs, real (ceiling)", *real("seen")],
            ["chance", *chance]]


def _intro(record: dict) -> str:
    st, s = record["settings"], record["summary"]
    return (f"{st['held_out_pairs']} held-out subject x accessory pairs (never in the training shards) and "
            f"{st['seen_probe_pairs']} seen ones, {st['images_per_prompt']} seeds each from {st['first_seed']}, "
            f"guidance {st['guidance']:g}; judged by a two-head classifier fit on {st['judge_fit_images']} of the "
            f"{st['real_composed_pictures']} real composed pictures (the rest: its ceiling). "
            f"\"{USER_PROMPT}\": {s['cat_with_hat_right']} of {s['cat_with_hat_of']} judged a cat under a hat. "
            + (f"The right subject with an accessory of the asked-for kind in its place (any hat on the head, any "
               f"glasses over the eyes, any tie, scarf or ribbon below), if not the exact one: held-out pairs "
               f"{s['heldout_subject_and_kind_right']:.3f}, seen {s['seen_subject_and_kind_right']:.3f}. "
               if s.get("heldout_subject_and_kind_right") is not None else "") +
            "Each grid: the candidates, and under each its nearest training image (pixel RMSE in the table).")


def composition_markdown(record: dict) -> str:
    return ("**Composition (concept judge)**\n\n" + _intro(record) + "\n\n" + markdown_table(COLUMNS, _table(record)))


def composition_html(record: dict) -> str:
    """The section for report.html: the figures, then each pictured prompt's grid with its candidates' scores."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in _table(record))
    figures = []
    for r in record["prompts"]:
        if not r["file"]:
            continue
        cells = "; ".join(f"seed {c['seed']}: {c['subject']} + {c['accessory']} ({c['p_subject']:.2f}/"
                          f"{c['p_accessory']:.2f}){' ✓' if c['right'] else ''}, NN {c['nn_rmse']:.1f}"
                          for c in r["candidates"])
        figures.append(f"<figure><img src='{esc(r['file'])}' alt='{esc(r['prompt'])}'><figcaption><b>"
                       f"{esc(r['prompt'])}</b> ({esc(r['kind'])}, guidance {r['guidance']:g}): both right "
                       f"{r['both_right']:.2f}. Top: candidates; bottom: nearest training image. "
                       f"{esc(cells)}</figcaption></figure>")
    return (f"<h2>Composition</h2><p>{esc(_intro(record))}</p><table><tr>{head}</tr>{body}</table>"
            + "".join(figures))

