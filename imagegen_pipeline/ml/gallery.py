"""A browsable sample gallery of one trained generator: PNG grids plus an index.html that links them.

Every image comes from fixed seeds (and fixed labels), so two galleries of the same model are identical and
galleries of two versions can be compared side by side by eye. Plain PyTorch/numpy/PIL: no Dagster, no MLflow.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from imagegen_pipeline.atomic import write_bytes_atomic, write_json_atomic
from imagegen_pipeline.ml.dcgan.config import DCGANConfig
from imagegen_pipeline.ml.dcgan.sample import generate, interpolate
from imagegen_pipeline.ml.extractor.embed import embed_images
from imagegen_pipeline.ml.grids import image_grid, png_bytes
from imagegen_pipeline.ml.metrics.memorization import find_nearest_train
from imagegen_pipeline.ml.metrics.registry import MetricUnavailable
from imagegen_pipeline.ml.runtime import Runtime
from imagegen_pipeline.pages import page

PER_CLASS_DIR = "per_class"
FIXED_SEEDS_FILE = "fixed_seeds.png"
BY_LABEL_FILE = "by_label.png"  # one row per label, the same seeds in every row: collapse shows at a glance
INTERPOLATIONS_FILE = "interpolations.png"
NEAREST_FILE = "nearest_neighbours.png"
INDEX_FILE = "index.html"
MANIFEST_FILE = "gallery.json"
MAX_SLUG_LEN = 40
# Interpolation endpoints come from their own seed range, so the strips do not repeat the fixed-seed grid.
INTERPOLATION_SEED_BASE = 10_000


def slugify(name: str, *, fallback: str = "class") -> str:
    """A file-name-safe ASCII slug: `[a-z0-9-]`, at most MAX_SLUG_LEN characters, never empty, '.' or '..'.

    Names that lose everything (emoji, CJK) become `fallback`; the caller's index prefix keeps files unique.
    """
    ascii_name = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:MAX_SLUG_LEN].strip("-")
    return slug or fallback


def _inside(root: Path, relative: str) -> Path:
    """root / relative, refusing anything that would resolve outside root (belt and braces after slugify)."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ValueError(f"refusing to write {relative!r} outside {root}")
    return target


def _rgb(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 1 or 3) -> (N, H, W, 3)."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _labels(cfg: DCGANConfig, n: int) -> list[int] | None:
    """Labels cycling over the classes (0, 1, ..., K-1, 0, ...) for class models; None otherwise."""
    return [i % cfg.num_classes for i in range(n)] if cfg.conditioning == "class" else None


def _pairs_png(samples: np.ndarray, train: np.ndarray, captions: list[str], *, per_row: int = 4,
               scale: int = 2) -> bytes:
    """Sample beside its training neighbour, a two-line caption below each pair; samples/train uint8 (N, H, W, 3)."""
    n, h, w, _ = samples.shape
    th, tw = h * scale, w * scale
    font = ImageFont.load_default(size=11)
    cap_h, gap, pad = 30, 2, 8
    cell_w, cell_h = 2 * tw + gap, th + cap_h
    rows = -(-n // per_row)
    canvas = Image.new("RGB", (per_row * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, per_row)
        x, y = pad + c * (cell_w + pad), pad + r * (cell_h + pad)
        for k, img in enumerate((samples[i], train[i])):
            tile = Image.fromarray(img, "RGB").resize((tw, th), Image.Resampling.NEAREST)
            canvas.paste(tile, (x + k * (tw + gap), y))
        draw.multiline_text((x, y + th + 2), captions[i], fill=(40, 40, 40), font=font, spacing=2)
    return png_bytes(canvas)


def _match_size(images: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 (N, H', W', 3) -> (N, h, w, 3); training images normally already have the generator's size."""
    if images.shape[1:3] == (h, w):
        return images
    return np.stack([np.asarray(Image.fromarray(im, "RGB").resize((w, h), Image.Resampling.BICUBIC))
                     for im in images])


def _nearest_neighbours(generator: torch.nn.Module, cfg: DCGANConfig, *, runtime: Runtime, n: int,
                        train_images_uint8, train_embeddings, extractor) -> tuple[bytes, dict]:
    """Embed n fixed-seed samples with the extractor; find each one's nearest training image; draw the pairs,
    closest first (the likeliest copies lead)."""
    train_images = torch.as_tensor(train_images_uint8)
    train_embeddings = np.asarray(train_embeddings, dtype=np.float32)
    if train_images.ndim != 4 or len(train_images) != len(train_embeddings):
        raise ValueError(f"train images (N, C, H, W) and embeddings (N, D) must have the same N, got "
                         f"{tuple(train_images.shape)} and {train_embeddings.shape}")
    seeds = list(range(n))
    labels = _labels(cfg, n)
    samples = generate(generator, cfg, seeds=seeds, cond=labels, runtime=runtime)  # (n, H, W, C)
    fake_emb, _ = embed_images(extractor, torch.from_numpy(samples).permute(0, 3, 1, 2).contiguous(),
                               runtime=runtime, batch_size=64)  # (n, D)
    if fake_emb.shape[1] != train_embeddings.shape[1]:
        raise ValueError(f"extractor embeds to {fake_emb.shape[1]} dims but the training embeddings have "
                         f"{train_embeddings.shape[1]}: they come from different extractors")
    mem = find_nearest_train(fake_emb, train_embeddings)
    order = np.argsort(mem.distances, kind="stable")
    neighbours = train_images[torch.as_tensor(mem.indices[order])].permute(0, 2, 3, 1).numpy()  # (n, H', W', C')
    h, w = samples.shape[1:3]
    captions = [f"seed {seeds[i]}" + (f", class {labels[i]}" if labels else "") + f"\nd = {mem.distances[i]:.3g}"
                for i in order]
    png = _pairs_png(_rgb(samples[order]), _match_size(_rgb(np.ascontiguousarray(neighbours)), h, w), captions)
    stats = {"samples": n, "mean_distance": float(mem.distances.mean()),
             "min_distance": float(mem.distances.min()), "train_nn_median": mem.train_threshold,
             "share_closer_than_train": mem.share_closer,
             "closest": [{"seed": seeds[i], "label": labels[i] if labels else None, "train_index": int(mem.indices[i]),
                          "distance": float(mem.distances[i])} for i in order[:5]]}
    return png, stats


def _index_html(*, model_name: str, model_version, cfg: DCGANConfig, sections: list[dict], notes: list[str]) -> str:
    esc = html.escape
    version = f" v{esc(str(model_version))}" if model_version is not None else ""
    parts = [
        f"<h1>{esc(model_name)}{version}</h1>",
        f"<p>{int(cfg.resolution)}&times;{int(cfg.resolution)} px, {int(cfg.channels)} channel(s), "
        f"conditioning: {esc(cfg.conditioning)}"
        + (f", {int(cfg.num_classes)} classes" if cfg.conditioning == "class" else "") + "</p>",
        '<div class="legend"><b>Legend.</b> Every image comes from a fixed seed (and, for class models, a fixed '
        "label), so this page is identical for the same model and comparable across versions. "
        "<i>Fixed seeds</i>: seeds 0&hellip;N-1, labels cycling over the classes. "
        "<i>Per class</i>: the same seeds for every class (a column keeps its noise). "
        "<i>Interpolations</i>: each row walks the latent space between two seeds within one class. "
        "<i>Nearest neighbours</i>: each sample (left) beside its closest training image (right) in the "
        "feature extractor's embedding space, closest first; d is the Euclidean distance.</div>",
    ]
    for note in notes:
        parts.append(f'<p class="note">{esc(note)}</p>')
    for s in sections:
        parts.append(f'<h2 id="{esc(s["id"])}">{esc(s["title"])}</h2>')
        if s.get("text"):
            parts.append(f"<p>{esc(s['text'])}</p>")
        if s.get("figures"):
            parts.append('<div class="figures">')
            for fig in s["figures"]:
                width = f' width="{int(fig["width"])}"' if fig.get("width") else ""
                parts.append(f'<figure><a href="{quote(fig["file"])}"><img src="{quote(fig["file"])}"{width} '
                             f'alt="{esc(fig["caption"])}"></a><figcaption>{esc(fig["caption"])}</figcaption>'
                             "</figure>")
            parts.append("</div>")
    return page(f"{model_name}{version} sample gallery", "\n".join(parts))


def build_gallery(generator: torch.nn.Module, cfg: DCGANConfig, *, out_dir: Path, runtime: Runtime,
                  class_names: list[str], train_images_uint8: torch.Tensor | np.ndarray | None = None,
                  train_embeddings: np.ndarray | None = None, extractor: torch.nn.Module | None = None,
                  seeds_per_class: int = 8, fixed_seed_count: int = 64, interpolation_rows: int = 4,
                  interpolation_steps: int = 8, nn_samples: int = 16, model_name: str = "generator",
                  model_version: int | str | None = None, interpolation_mode: str = "slerp") -> dict:
    """Write per_class/*.png, fixed_seeds.png, interpolations.png, nearest_neighbours.png and index.html into
    out_dir (each atomically); return what was written: relative file paths, counts and notes."""
    if cfg.conditioning == "text":
        raise ValueError("text-conditioned generators need caption embeddings; the gallery supports 'none' and "
                         "'class' conditioning")
    if cfg.conditioning == "class" and len(class_names) != cfg.num_classes:
        raise ValueError(f"the generator has {cfg.num_classes} classes but {len(class_names)} class names were given")
    if min(seeds_per_class, fixed_seed_count, interpolation_rows) < 1 or interpolation_steps < 2 or nn_samples < 0:
        raise ValueError("seeds_per_class, fixed_seed_count and interpolation_rows must be >= 1, "
                         "interpolation_steps >= 2 and nn_samples >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = generator.to(runtime.device).eval()
    written: list[str] = []
    notes: list[str] = []

    sizes: dict[str, tuple[int, int]] = {}

    def put(relative: str, data: bytes, size: tuple[int, int] | None = None) -> None:
        write_bytes_atomic(_inside(out_dir, relative), data)
        written.append(relative)
        if size:
            sizes[relative] = size

    def put_grid(relative: str, images: np.ndarray, nrow: int | None) -> None:
        grid = image_grid(images, nrow=nrow)
        put(relative, png_bytes(grid), grid.size)

    # Per class: the same seeds for every class, one row per class grid.
    per_class, rows_by_label = [], []
    seeds = list(range(seeds_per_class))
    nrow = min(seeds_per_class, 8)
    classes = list(enumerate(class_names)) if cfg.conditioning == "class" else [(None, "all")]
    for idx, name in classes:
        rel = f"{PER_CLASS_DIR}/{idx}_{slugify(name)}.png" if idx is not None else f"{PER_CLASS_DIR}/all.png"
        images = generate(generator, cfg, seeds=seeds, cond=idx, runtime=runtime)  # (S, H, W, C)
        put_grid(rel, images, nrow)
        rows_by_label.append(images)
        per_class.append({"class_index": idx, "class_name": str(name), "file": rel})
    put_grid(BY_LABEL_FILE, np.concatenate(rows_by_label), seeds_per_class)
    for stale in (out_dir / PER_CLASS_DIR).glob("*.png"):  # a rebuild into the same folder with other classes
        if f"{PER_CLASS_DIR}/{stale.name}" not in written:
            stale.unlink()

    # Fixed seeds 0..N-1, labels cycling: the grid to compare across runs. With <= 16 classes the row length is a
    # multiple of the class count, so every column holds one class.
    fixed_labels = _labels(cfg, fixed_seed_count)
    fixed = generate(generator, cfg, seeds=list(range(fixed_seed_count)), cond=fixed_labels, runtime=runtime)
    k = cfg.num_classes if cfg.conditioning == "class" else 0
    fixed_nrow = k * math.ceil(math.sqrt(fixed_seed_count) / k) if 2 <= k <= 16 else None
    put_grid(FIXED_SEEDS_FILE, fixed, fixed_nrow)

    # Interpolations: row r walks from seed base+2r to base+2r+1, in class r mod K.
    strips, rows = [], []
    for r in range(interpolation_rows):
        a, b = INTERPOLATION_SEED_BASE + 2 * r, INTERPOLATION_SEED_BASE + 2 * r + 1
        label = r % cfg.num_classes if cfg.conditioning == "class" else None
        strips.append(interpolate(generator, cfg, seed_a=a, seed_b=b, steps=interpolation_steps, cond=label,
                                  mode=interpolation_mode, runtime=runtime))  # (steps, H, W, C)
        rows.append({"seed_a": a, "seed_b": b, "class_index": label})
    put_grid(INTERPOLATIONS_FILE, np.concatenate(strips), interpolation_steps)

    # Nearest training neighbours in the extractor's embedding space.
    nn_stats = None
    missing = [what for what, v in (("a feature extractor", extractor), ("training embeddings", train_embeddings),
                                    ("training images", train_images_uint8)) if v is None]
    if nn_samples == 0:
        notes.append("nearest neighbours skipped: nn_samples=0")
    elif missing:
        notes.append(f"nearest neighbours skipped: no {' and no '.join(missing)}")
    else:
        try:
            png, nn_stats = _nearest_neighbours(generator, cfg, runtime=runtime, n=nn_samples,
                                                train_images_uint8=train_images_uint8,
                                                train_embeddings=train_embeddings, extractor=extractor)
            put(NEAREST_FILE, png)
        except MetricUnavailable as exc:  # too few training images
            notes.append(f"nearest neighbours skipped: {exc}")
    if nn_stats is None:
        (out_dir / NEAREST_FILE).unlink(missing_ok=True)

    label_names = [str(n) for n in class_names] if cfg.conditioning == "class" else []
    sections = [
        {"id": "fixed-seeds", "title": "Fixed seeds",
         "text": f"Seeds 0-{fixed_seed_count - 1}" + (", labels cycling over the classes." if label_names else "."),
         "figures": [{"file": FIXED_SEEDS_FILE, "caption": f"{fixed_seed_count} fixed seeds"}]},
        {"id": "per-class", "title": "Per class" if label_names else "Samples",
         "text": f"Seeds 0-{seeds_per_class - 1} for each class" + (", one row per class in the first grid: "
                                                                    "a row of one repeated picture is a collapse."
                                                                    if label_names else "."),
         "figures": [{"file": BY_LABEL_FILE, "caption": "one row per class"}] + [
             {"file": p["file"], "caption": (f"{p['class_index']}: {p['class_name']}"
                                             if p["class_index"] is not None else "all samples")}
             for p in per_class]},
        {"id": "interpolations", "title": "Interpolations",
         "text": f"{interpolation_rows} rows of {interpolation_steps} steps ({interpolation_mode})"
                 + (": " + "; ".join(f"row {i + 1} = {label_names[r['class_index']]}" for i, r in enumerate(rows))
                    if label_names else "."),
         "figures": [{"file": INTERPOLATIONS_FILE, "caption": "latent interpolations"}]},
        {"id": "nearest-neighbours", "title": "Nearest training neighbours",
         "text": (f"Mean distance {nn_stats['mean_distance']:.3g}; the median train-to-train nearest-neighbour "
                  f"distance is {nn_stats['train_nn_median']:.3g} "
                  f"({100 * nn_stats['share_closer_than_train']:.0f}% of samples are closer than that)."
                  if nn_stats else next((n for n in notes if n.startswith("nearest")), "")),
         "figures": [{"file": NEAREST_FILE, "caption": "sample (left), nearest training image (right)"}]
         if nn_stats else []},
    ]
    for section in sections:  # small images are shown at twice their size (pixelated), never wider than the page
        for fig in section["figures"]:
            fig["width"] = 2 * sizes[fig["file"]][0] if fig["file"] in sizes else None
    put(INDEX_FILE, _index_html(model_name=model_name, model_version=model_version, cfg=cfg, sections=sections,
                                notes=notes).encode("utf-8"))
    result = {
        "out_dir": str(out_dir), "index": INDEX_FILE, "files": written, "per_class": per_class,
        "per_class_count": len(per_class), "by_label": BY_LABEL_FILE,
        "fixed_seeds": {"file": FIXED_SEEDS_FILE, "count": fixed_seed_count,
                                                           "labels": fixed_labels},
        "interpolations": {"file": INTERPOLATIONS_FILE, "rows": rows, "steps": interpolation_steps,
                           "mode": interpolation_mode},
        "nearest_neighbours": ({"file": NEAREST_FILE, **nn_stats} if nn_stats else None),
        "model_name": model_name, "model_version": model_version, "notes": notes,
    }
    write_json_atomic(out_dir / MANIFEST_FILE, result)
    return result
