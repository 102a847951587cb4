"""Judge one generator: sample it, describe samples and real images with the FID Inception and the fine-tuned
extractor, run the metric registry, and render the report (JSON for machines, Markdown and HTML for people).

Plain PyTorch/numpy: the Dagster asset only wires paths, MLflow and the promotion around `evaluate_generator`.
"""

from __future__ import annotations

import html
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from imagegen_pipeline.ml.dcgan import DCGANConfig, generate
from imagegen_pipeline.ml.embeddings_store import rows_by_sha256
from imagegen_pipeline.ml.extractor import embed_images
from imagegen_pipeline.ml.metrics import MetricContext, compute_metrics, list_metrics
from imagegen_pipeline.ml.metrics.feature_cache import FeatureCache, cached_reference_stats, hash_images
from imagegen_pipeline.ml.prompt_score import CaptionBank, r_precision, r_precision_negatives
from imagegen_pipeline.ml.protocols import PROTOCOLS, metric_set, protocol_metric_set
from imagegen_pipeline.ml.runtime import Runtime
from imagegen_pipeline.pages import key_value_table, page


@dataclass
class EvalConfig:
    num_samples: int = 1000  # generated images (balanced over classes for conditional models); 10k for papers
    num_real: int = 1000  # cap on real images per split fed to the detector (seeded subset)
    protocol: str = "quick"  # the name recorded with every figure; "custom" when N differs from the named one
    metrics: tuple[str, ...] = ()  # exactly these metrics; empty = metric_set's, plus extra_metrics
    metric_set: str = ""  # "quick" or "full" (protocols.py); empty = the protocol's (quick's, paper's full)
    extra_metrics: tuple[str, ...] = ()  # opt-in ones on top of the set (e.g. augmentation_gain)
    per_class_min: int = 50  # per-class FID only where both sides have this many images
    kid_subset_size: int = 1000  # KID subset size (smaller sets use all images)
    seed: int = 0  # noise seeds are seed + i; real subsets drawn with this seed
    composite_images: int = 2  # text models: picks per held-out composite prompt (16 prompts; 0 = leave them out)
    composite_candidates: int = 4  # text models: each pick is the best of this many by the judge's prompt score
    # text models on data with composed pictures: seeds per composition prompt ("a cat with a hat", each held-out
    # pair, a seen pair per subject), judged by the concept judge (0 = leave the composition figures out)
    composition_images: int = 8


@dataclass
class RealSplit:
    """A real split as the evaluation needs it: uint8 images, labels and row hashes (the cache key)."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,), -1 = unlabelled
    sha256: list[str]

    def subset(self, n: int, seed: int) -> "RealSplit":
        if len(self.images) <= n:
            return self
        idx = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return RealSplit(self.images[idx], self.labels[idx], [self.sha256[i] for i in idx.tolist()])

    def subset_like(self, labels: torch.Tensor, seed: int) -> "RealSplit":
        """As many rows as `labels` has, with its class counts where this split has enough of each class (the
        train half of the real floor, matched to the reference); a plain random subset without labels."""
        want = torch.bincount(labels[labels >= 0]) if bool((labels >= 0).any()) else None
        if want is None or not bool((self.labels >= 0).any()):
            return self.subset(len(labels), seed)
        gen = torch.Generator().manual_seed(seed)
        picks = []
        for c, k in enumerate(want.tolist()):
            rows = torch.nonzero(self.labels == c).flatten()
            picks.append(rows[torch.randperm(len(rows), generator=gen)[:k]])
        idx = torch.cat(picks).sort().values
        return RealSplit(self.images[idx], self.labels[idx], [self.sha256[i] for i in idx.tolist()])


@dataclass
class EvalResult:
    results: dict  # merged metric outputs
    skipped: dict  # metric -> why it could not run
    seconds: dict  # stage/metric -> seconds
    samples: np.ndarray = field(repr=False)  # uint8 (N, H, W, C) generated images
    sample_labels: np.ndarray | None = field(repr=False, default=None)
    nearest_train: np.ndarray | None = field(repr=False, default=None)  # (N,) index into train rows
    protocol: dict = field(default_factory=dict)  # N, reference set and detector: a figure is never read without it


def caption_rows(n: int, m: int, *, seed: int) -> np.ndarray:
    """Which of m held-out captions each of n text-model samples is drawn for: a seeded subset when there are
    enough captions, else all of them in turn."""
    if m < 1:
        raise ValueError("text-conditioned evaluation needs at least one held-out caption")
    if m >= n:
        return np.sort(np.random.default_rng(seed).choice(m, n, replace=False))
    return np.arange(n) % m


def labels_like(reference: np.ndarray | torch.Tensor | None, n: int, num_classes: int) -> np.ndarray:
    """n class labels in the reference's class proportions (largest remainder), cycling over the classes so
    any prefix is mixed. A generator asked for balanced classes and scored against an imbalanced reference is
    charged for the imbalance, not for its pictures; without labelled references, balanced."""
    ref = np.asarray(reference if reference is not None else [], dtype=np.int64)
    counts = np.bincount(ref[(ref >= 0) & (ref < num_classes)], minlength=num_classes).astype(np.float64)
    if counts.sum() == 0:
        return np.arange(n) % num_classes
    share = counts / counts.sum() * n
    alloc = np.floor(share).astype(np.int64)
    alloc[np.argsort(-(share - alloc), kind="stable")[:n - int(alloc.sum())]] += 1
    rounds = np.concatenate([np.arange(a) for a in alloc])  # (n,) the k-th image of its class
    classes = np.repeat(np.arange(num_classes), alloc)
    return classes[np.lexsort((classes, rounds))]


def sample_for_eval(generator: torch.nn.Module, cfg: DCGANConfig, n: int, *, seed: int, runtime: Runtime,
                    text_conds: np.ndarray | None = None, gen_conds: np.ndarray | None = None,
                    reference_labels: np.ndarray | torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """n images with seeds seed..seed+n-1; class models get labels in the reference's class proportions
    (`labels_like`), text models the held-out caption vectors `text_conds` (M, text_dim), rows picked by
    `caption_rows`; a token-conditioned model reads `gen_conds` (M, L, D), the same captions' token states."""
    seeds = list(range(seed, seed + n))
    labels = labels_like(reference_labels, n, cfg.num_classes) if cfg.conditioning == "class" else None
    cond = labels
    if cfg.conditioning == "text":
        if text_conds is None:
            raise ValueError("a text-conditioned generator is evaluated on held-out captions: pass text_conds "
                             "(the val split's caption vectors from captions.parquet)")
        conds = np.asarray(text_conds if gen_conds is None else gen_conds, dtype=np.float32)
        if conds.shape[1:] != cfg.text_shape or len(conds) != len(text_conds):
            raise ValueError(f"the model reads captions of shape {cfg.text_shape}; got {conds.shape} for "
                             f"{len(text_conds)} captions (a token model needs gen_conds)")
        cond = conds[caption_rows(n, len(conds), seed=seed)]  # (n, *text_shape)
    images = generate(generator, cfg, seeds=seeds, cond=cond, runtime=runtime)
    return images, labels


def text_r_precision(bank: CaptionBank, fake_embeddings: np.ndarray, own_captions: np.ndarray, *,
                     real_embeddings: np.ndarray | None = None, neighbours: int = 5, seed: int = 0,
                     groups: list[str] | None = None) -> dict:
    """R-precision (R=1): each generated image, described by the captions of its nearest training images, must
    rank the caption it was drawn for above up to 99 other distinct held-out captions, none of its caption group
    (chance: 1 / (negatives + 1)). With `real_embeddings` (the held-out images those captions belong to) the same
    judge scores the real images: the ceiling this proxy can reach."""
    out = {"r_precision": r_precision(bank.text_proxies(fake_embeddings, k=neighbours), own_captions, seed=seed,
                                      groups=groups)}
    negatives = r_precision_negatives(own_captions, groups=groups, seed=seed)
    out["r_precision_chance"] = float(np.mean([1.0 / (len(n) + 1) for n in negatives]))
    if real_embeddings is not None:
        out["r_precision_real"] = r_precision(bank.text_proxies(real_embeddings, k=neighbours), own_captions,
                                              seed=seed, groups=groups)
    return out


def class_sampler(generator: torch.nn.Module, cfg: DCGANConfig, runtime: Runtime,
                  eval_cfg: EvalConfig) -> Callable[[np.ndarray, int], np.ndarray] | None:
    """For class-conditional generators, MetricContext.sample: (labels (N,), seed) -> uint8 (N, C, H, W). Noise
    seeds start past the evaluation's own (eval seed .. + num_samples) and 10M apart per metric seed."""
    if cfg.conditioning != "class":
        return None

    def sample(labels: np.ndarray, seed: int) -> np.ndarray:
        start = eval_cfg.seed + eval_cfg.num_samples + int(seed) * 10_000_000
        images = generate(generator, cfg, seeds=range(start, start + len(labels)),
                          cond=np.asarray(labels, dtype=np.int64), runtime=runtime)
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))

    return sample


def evaluate_generator(generator: torch.nn.Module, cfg: DCGANConfig, *, train: RealSplit, val: RealSplit,
                       detector, cache: FeatureCache, extractor=None, train_embeddings: np.ndarray | None = None,
                       class_names: list[str] | None = None, eval_cfg: EvalConfig, runtime: Runtime,
                       text_conds: np.ndarray | None = None, gen_conds: np.ndarray | None = None,
                       caption_ids: list[str] | None = None,
                       caption_groups: list[str] | None = None, caption_bank: CaptionBank | None = None,
                       caption_subsets: dict[str, np.ndarray] | None = None,
                       judge: str | None = None, log: Callable[[str], None] = lambda _: None) -> EvalResult:
    """FID/KID against the val split, the train-vs-val floor, precision/recall, extractor-based scores.

    Text models are sampled on held-out captions: `text_conds` (M, text_dim) (token models: `gen_conds` (M, L, D),
    the same captions' token states; R-precision reads `text_conds`) with `caption_ids` (M,), the sha256
    of the val image each caption belongs to (its class becomes the sample's asked-for class), and optionally
    `caption_subsets` {name: bool (M,)} also scores R-precision on those captions alone (r_precision_<name>),
    `caption_groups` (M,): which captions are one item (an emoji's skin tones), never each other's R-precision
    negatives. With the extractor and `caption_bank` (training images' embeddings and captions) they also get
    `r_precision`.
    """
    seconds: dict[str, float] = {}
    val_sub = val.subset(eval_cfg.num_real, eval_cfg.seed)
    train_sub = train.subset_like(val_sub.labels, eval_cfg.seed)  # the floor: same size, same class mix
    t = time.perf_counter()
    samples, labels = sample_for_eval(generator, cfg, eval_cfg.num_samples, seed=eval_cfg.seed, runtime=runtime,
                                      text_conds=text_conds, gen_conds=gen_conds,
                                      reference_labels=val_sub.labels)
    rows = source = None
    if cfg.conditioning == "text":
        rows = caption_rows(eval_cfg.num_samples, len(text_conds), seed=eval_cfg.seed)  # as sample_for_eval drew
        if caption_ids is not None:
            if len(caption_ids) != len(text_conds):
                raise ValueError(f"{len(caption_ids)} caption_ids for {len(text_conds)} caption vectors")
            source = rows_by_sha256([caption_ids[r] for r in rows], val.sha256)  # (n,) val row or -1
            if (source >= 0).all() and bool((val.labels[torch.from_numpy(source)] >= 0).all()):
                labels = val.labels[torch.from_numpy(source)].numpy()
    fake = torch.from_numpy(samples).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    seconds["sample"] = time.perf_counter() - t
    t = time.perf_counter()
    ref_key, floor_key = hash_images(val_sub.images), hash_images(train_sub.images)  # what the detector is fed
    ref = cached_reference_stats(cache, detector, val_sub.images, content_key=ref_key)
    floor = cached_reference_stats(cache, detector, train_sub.images, content_key=floor_key)
    seconds["real_features"] = time.perf_counter() - t
    log(f"detector features of {len(val_sub.images)} val and {len(train_sub.images)} train images ready "
        f"({seconds['real_features']:.1f}s, cached by content)")
    t = time.perf_counter()
    fake_features = detector.features(fake)
    seconds["fake_features"] = time.perf_counter() - t
    log(f"detector features of {len(fake)} samples in {seconds['fake_features']:.1f}s")
    fake_probs = fake_emb = real_emb = None
    if extractor is not None:
        fake_emb, fake_probs = embed_images(extractor, fake, runtime=runtime)
        real_emb, _ = embed_images(extractor, val_sub.images, runtime=runtime)
    ctx = MetricContext(
        real_features=ref.features, real_stats=(ref.mu, ref.sigma), real_labels=val_sub.labels.numpy(),
        heldout_features=floor.features, fake_features=fake_features, fake_labels=labels, fake_probs=fake_probs,
        fake_embeddings=fake_emb, train_embeddings=train_embeddings, real_embeddings=real_emb, class_names=class_names,
        fake_images=fake.numpy(), real_images=val_sub.images.numpy(), train_images=train_sub.images.numpy(),
        train_labels=train_sub.labels.numpy(), sample=class_sampler(generator, cfg, runtime, eval_cfg),
        generator=generator,
        per_class_min=eval_cfg.per_class_min, kid_subset_size=eval_cfg.kid_subset_size, seed=eval_cfg.seed,
        device=str(runtime.device))
    if labels is None:
        ctx.fake_labels = None
    names = run_metric_names(eval_cfg)
    out = compute_metrics(names, ctx)
    out["skipped"].update({m: left_out_reason(eval_cfg) for m in list_metrics() if m not in names})
    if rows is not None:
        t = time.perf_counter()
        _add_text_metrics(out, text_conds=np.asarray(text_conds, np.float32)[rows], fake_emb=fake_emb,
                          bank=caption_bank, extractor=extractor, val=val, source=source, runtime=runtime,
                          seed=eval_cfg.seed,
                          groups=None if caption_groups is None else [caption_groups[r] for r in rows])
        for name, mask in (caption_subsets or {}).items():  # e.g. the plain emoji beside composed pictures
            keep = np.asarray(mask, bool)[rows]
            part = {"results": {}, "skipped": {}}
            if keep.sum() >= 2 and fake_emb is not None:
                _add_text_metrics(part, text_conds=np.asarray(text_conds, np.float32)[rows][keep],
                                  fake_emb=fake_emb[keep], bank=caption_bank, extractor=extractor, val=val,
                                  source=None if source is None else source[keep], runtime=runtime,
                                  seed=eval_cfg.seed, groups=None if caption_groups is None else
                                  [caption_groups[r] for r in rows[keep]])
            out["results"].update({k.replace("r_precision", f"r_precision_{name}"): v
                                   for k, v in part["results"].items()})
        out["seconds"]["r_precision"] = round(time.perf_counter() - t, 4)
    nearest = None
    if fake_emb is not None and train_embeddings is not None:
        from imagegen_pipeline.ml.metrics.memorization import find_nearest_train

        nearest = find_nearest_train(fake_emb, train_embeddings, device=str(runtime.device)).indices
    protocol = protocol_record(eval_cfg, num_samples=len(fake), reference=val_sub, reference_key=ref_key,
                               floor=train_sub, floor_key=floor_key, detector_id=detector.detector_id,
                               judge=judge if extractor is not None else None)
    return EvalResult(out["results"], out["skipped"], {**seconds, **out["seconds"]}, samples, labels, nearest,
                      protocol=protocol)


def run_metric_names(eval_cfg: EvalConfig) -> list[str]:
    """What an evaluation computes: its named metrics, else its metric set (the protocol's unless named) and
    the opt-in extras."""
    if eval_cfg.metrics:
        return list(eval_cfg.metrics)
    base = list(metric_set(eval_cfg.metric_set or protocol_metric_set(eval_cfg.protocol), list_metrics()))
    return base + [m for m in eval_cfg.extra_metrics if m not in base]


def left_out_reason(eval_cfg: EvalConfig) -> str:
    """What the report says of a default metric this evaluation did not compute."""
    if eval_cfg.metrics:
        return "not among the metrics this evaluation was asked for"
    name = eval_cfg.metric_set or protocol_metric_set(eval_cfg.protocol)
    whose = "" if eval_cfg.metric_set else f", the {eval_cfg.protocol} protocol's"
    return f"not in the {name} metric set{whose} (metric_set: full, or --metric-set full, runs it)"


def protocol_record(eval_cfg: EvalConfig, *, num_samples: int, reference: RealSplit, reference_key: str,
                    floor: RealSplit, floor_key: str, detector_id: str, judge: str | None = None) -> dict:
    """What a figure was measured under. `key` is equal for two evaluations exactly when their figures compare:
    same protocol name and N, same reference pixels, same detector, same judge (the extractor that scores
    asked-for-class accuracy and diversity; "unnamed" when the caller did not say which)."""
    named = PROTOCOLS.get(eval_cfg.protocol)
    name = eval_cfg.protocol if named and named["num_samples"] == num_samples else "custom"
    shape = "x".join(str(d) for d in reference.images.shape[1:])
    return {
        "name": name, "num_samples": num_samples,
        "reference": f"val split, {len(reference.images)} images ({shape})", "reference_key": reference_key,
        "floor": f"train split, {len(floor.images)} images, against the reference", "floor_key": floor_key,
        "detector": detector_id, "precision_recall_k": MetricContext.pr_k,
        "kid_subset_size": eval_cfg.kid_subset_size,
        "seed": eval_cfg.seed, "judge": judge or "unnamed",
        "key": f"{name}|n={num_samples}|ref={reference_key[:16]}|{detector_id}|judge={judge or 'unnamed'}",
    }


def _add_text_metrics(out: dict, *, text_conds: np.ndarray, fake_emb: np.ndarray | None, bank: CaptionBank | None,
                      extractor, val: RealSplit, source: np.ndarray | None, runtime: Runtime, seed: int,
                      groups: list[str] | None = None) -> None:
    """R-precision of a text model's samples into out['results'] (or the reason it could not run into 'skipped')."""
    if fake_emb is None or bank is None:
        out["skipped"]["r_precision"] = "needs the fine-tuned extractor and the caption bank (image_embeddings + " \
                                        "caption_embeddings)"
        return
    real_emb = None
    if source is not None and (source >= 0).all():
        real_emb, _ = embed_images(extractor, val.images[torch.from_numpy(source)], runtime=runtime)
    try:
        out["results"].update(text_r_precision(bank, fake_emb, text_conds, real_embeddings=real_emb, seed=seed,
                                                 groups=groups))
    except ValueError as exc:
        out["skipped"]["r_precision"] = str(exc)


HEADLINE = ("fid", "fid_std", "kid", "precision", "recall", "conditional_accuracy", "is_domain", "diversity",
            "diversity_ratio", "ms_ssim_ratio", "cas_accuracy", "cas_ratio", "real_floor_fid", "real_floor_kid",
            "memorization_nn_distance_mean", "lpips_diversity_ratio", "lpips_memorization_ratio", "projection_gap",
            "r_precision", "r_precision_real", "r_precision_plain", "r_precision_plain_real",
            "composite_prompt_score", "composite_subject_share", "composite_accessory_share",
            "composite_concept_share", "composite_nn_distance", "val_captions_seen_in_train", "human_fooling_rate",
            "human_prompt_match_rate", "heldout_both_right", "heldout_both_right_real",
            "heldout_subject_and_kind_right", "seen_both_right", "seen_both_right_real", "cat_with_hat_right")


def headline(results: dict) -> dict[str, float]:
    """The scalar metrics people compare runs by (missing ones left out)."""
    return {k: float(results[k]) for k in HEADLINE if isinstance(results.get(k), (int, float))}


def report_markdown(title: str, results: dict, skipped: dict, *, promotion: str | None = None,
                    gate_failures: list[str] | None = None, protocol: dict | None = None) -> str:
    lines = [f"### {title}", ""]
    if protocol:
        lines += [f"Protocol **{protocol['name']}**: {protocol['num_samples']} samples against the "
                  f"{protocol['reference']}; floor: {protocol['floor']}; detector `{protocol['detector']}`; "
                  f"precision/recall k = {protocol['precision_recall_k']}.", ""]
    if gate_failures is not None:
        lines += [("**Quality gate: passed**" if not gate_failures else
                   "**Quality gate: rejected** (never champion): " + "; ".join(gate_failures)), ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in headline(results).items()]
    if promotion:
        lines += ["", f"**Promotion:** {promotion}"]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())]
    per_class = results.get("conditional_accuracy_per_class")
    if isinstance(per_class, dict) and per_class:
        lines += ["", "| class | asked-for accuracy |", "|---|---|"]
        lines += [f"| {html.escape(str(c))} | {a:.3f} |" for c, a in list(per_class.items())[:40]]
    return "\n".join(lines)


def report_html(title: str, results: dict, skipped: dict, *, images: dict[str, str], history_png: str | None,
                meta: dict, tables: dict[str, tuple] | None = None, sections: str = "") -> str:
    """One page: headline table, all results, plots and sample images (as relative links or data URIs), the
    comparison `tables` ({caption: (columns, rows of cells)}: model families, ablations) and `sections`, HTML
    its maker escaped (a text model's composite prompts)."""
    esc = html.escape
    extra = "".join(
        f"<h2>{esc(caption)}</h2><table><tr>{''.join(f'<th>{esc(str(c))}</th>' for c in cols)}</tr>"
        + "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>" for row in rows) + "</table>"
        for caption, (cols, rows) in (tables or {}).items())
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v:.4g}</td></tr>" for k, v in headline(results).items())
    other = "".join(f"<tr><td>{esc(str(k))}</td><td><code>{esc(str(v))[:400]}</code></td></tr>"
                    for k, v in results.items() if k not in HEADLINE)
    skips = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in skipped.items())
    pics = "".join(f"<figure><img src='{esc(src)}' alt='{esc(name)}'><figcaption>{esc(name)}</figcaption></figure>"
                   for name, src in images.items())
    hist = f"<h2>History</h2><img src='{esc(history_png)}' alt='metric history'>" if history_png else ""
    return page(title, f"<h1>{esc(title)}</h1>{key_value_table(meta)}<h2>Headline</h2><table>{rows}</table>"
                f"<h2>Samples</h2>{pics}{sections}{extra}{hist}<h2>All results</h2><table>{other}</table>"
                f"<h2>Skipped</h2><ul>{skips or '<li>none</li>'}</ul>")


def eval_config_dict(cfg: EvalConfig) -> dict:
    return asdict(cfg)
