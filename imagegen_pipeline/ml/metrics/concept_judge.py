"""The concept judge: which subject (cat, dog, robot ...) and which accessory (top hat, crown ... or "none") a
composed emoji shows, so a text model can be asked whether it draws the pairs it never trained on (a robot in a
crown), not only the pairs it saw.

The judge trains on REAL composed pictures of every pair, held-out ones included: the judge sees them, the
generator never does, and it never trains against the judge. A seeded share of each pair's real pictures is kept
back to measure the judge itself: the ceiling that generated pictures are compared with (`ConceptJudge.ceiling`,
split into seen and held-out pairs). Small random translations while fitting make it judge what is drawn and
where, not which pixels: generated pictures are never copies of the real ones.

The network is the small classifier's `SmallCNN` (three stride-2 convolutions and the flattened map: whether an
accessory sits above, over or below the face matters) with a second linear head, fit under the same `seeded`
and `cpu_threads` helpers. At 32 px RGB, 3,000 pictures and the default 600 steps it fits in about 6 s on one
CPU core. Plain PyTorch and numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from imagegen_pipeline.ml.metrics.registry import MetricContext, MetricUnavailable, register_metric
from imagegen_pipeline.ml.small_classifier import SmallCNN, _to_float, cpu_threads, seeded, train_steps


@dataclass(frozen=True)
class JudgeConfig:
    steps: int = 600  # optimizer steps, whatever the data size (two heads learn slower than one: 2x CAS's 300)
    batch_size: int = 64
    lr: float = 3e-3  # AdamW peak, cosine-decayed to 0
    weight_decay: float = 5e-4
    width: int = 16  # channels of the first convolution (then 2x, 4x)
    dropout: float = 0.3  # on the flattened features
    max_shift: int = 2  # each training picture moved by up to this many pixels each way (edges repeated)
    kept_back: float = 0.2  # share of each pair's real pictures never fit on: the judge's own accuracy (ceiling)
    cpu_threads: int = 1  # torch threads while fitting and predicting on a CPU (restored after)


@dataclass(frozen=True)
class ConceptSet:
    """Composed pictures with the subject and accessory each shows (real) or was asked for (generated): the
    bundles MetricContext.concept_real / concept_fake hold."""

    images: np.ndarray  # (N, C, H, W) uint8
    subjects: np.ndarray  # (N,) int index into subject_names
    accessories: np.ndarray  # (N,) int index into accessory_names ("none" is one of them)
    subject_names: Sequence[str]
    accessory_names: Sequence[str]


class TwoHeadCNN(SmallCNN):
    """SmallCNN's trunk; its head names the subject, a second linear head the accessory."""

    def __init__(self, channels: int, num_subjects: int, num_accessories: int, *, size: tuple[int, int],
                 width: int = 16, dropout: float = 0.3):
        super().__init__(channels, num_subjects, size=size, width=width, dropout=dropout)
        self.accessory_head = nn.Linear(self.head.in_features, num_accessories)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)  # x (N, C, H, W) in [-1, 1] -> (N, 4w * ceil(H/8) * ceil(W/8))
        return self.head(f), self.accessory_head(f)  # (N, S), (N, A) logits


def shifted(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each picture of x (N, C, H, W) moved by its own random (dy, dx) in [-max_shift, max_shift]."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    s = max_shift
    padded = nn.functional.pad(x, (s, s, s, s), mode="replicate")  # (N, C, H + 2s, W + 2s)
    dy, dx = torch.randint(0, 2 * s + 1, (2, n), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    return padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def kept_back_rows(pairs: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Bool (N,): a seeded `share` of each pair's rows (one at least, never all), so every pair, held-out ones
    included, has real pictures the judge was not fit on."""
    rng, keep = np.random.default_rng(seed), np.zeros(len(pairs), bool)
    for p in np.unique(pairs):
        rows = np.flatnonzero(pairs == p)
        k = min(len(rows) - 1, max(1, round(share * len(rows)))) if share > 0 else 0
        keep[rng.permutation(rows)[:k]] = True
    return keep


def rates(s_pred: np.ndarray, a_pred: np.ndarray, s_true: np.ndarray, a_true: np.ndarray) -> dict:
    """Subject, accessory and both-right shares (None on no pictures: JSON has no NaN)."""
    if len(s_true) == 0:
        return {"subject_accuracy": None, "accessory_accuracy": None, "both_right": None}
    s_hit, a_hit = s_pred == s_true, a_pred == a_true
    return {"subject_accuracy": round(float(s_hit.mean()), 4), "accessory_accuracy": round(float(a_hit.mean()), 4),
            "both_right": round(float((s_hit & a_hit).mean()), 4)}


@dataclass(eq=False)
class ConceptJudge:
    """A fit two-head judge with its names and what it predicted for the real pictures it kept back."""

    model: TwoHeadCNN
    subject_names: tuple[str, ...]
    accessory_names: tuple[str, ...]
    kept_back: dict[str, np.ndarray]  # "subject"/"accessory" true, "subject_pred"/"accessory_pred" (M,) each
    config: JudgeConfig
    seed: int
    fit_images: int  # real pictures it was fit on (the rest were kept back)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray, *, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """(subject (N, S), accessory (N, A)) probabilities of uint8 images (N, C, H, W), in eval mode."""
        images = np.asarray(images)
        device = next(self.model.parameters()).device
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"need uint8 (N, C, H, W) images, got {images.dtype} {images.shape}")
        self.model.eval()
        s_out, a_out = [], []
        with cpu_threads(self.config.cpu_threads, device):
            for i in range(0, len(images), batch_size):
                x = _to_float(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device))
                s, a = self.model(x)
                s_out.append(s.softmax(1).cpu())
                a_out.append(a.softmax(1).cpu())
        if not s_out:
            return np.zeros((0, len(self.subject_names)), np.float32), np.zeros((0, len(self.accessory_names)),
                                                                               np.float32)
        return torch.cat(s_out).numpy(), torch.cat(a_out).numpy()

    def predict(self, images: np.ndarray, *, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """(subject_idx (N,), accessory_idx (N,)) of uint8 images (N, C, H, W): deterministic for one judge."""
        s, a = self.probabilities(images, batch_size=batch_size)
        return s.argmax(1).astype(np.int64), a.argmax(1).astype(np.int64)

    def chance(self) -> dict:
        """Uniform chance, 1/S, 1/A, 1/(S*A): what a guess ignoring the picture scores, and what a generator that
        ignores its caption scores on a balanced set of asked pairs (on an unbalanced one it can reach the share
        of the most asked pair)."""
        s, a = len(self.subject_names), len(self.accessory_names)
        return {"subject": round(1 / s, 4), "accessory": round(1 / a, 4), "both": round(1 / (s * a), 4)}

    def pair_mask(self, subjects: np.ndarray, accessories: np.ndarray,
                  pairs: Sequence[tuple[str | int, str | int]]) -> np.ndarray:
        """Bool (N,): rows whose (subject, accessory) is one of `pairs` (names or indices)."""
        def index(names: tuple[str, ...], v: str | int) -> int:
            if isinstance(v, str):
                if v not in names:
                    raise ValueError(f"unknown name {v!r}; the judge knows {list(names)}")
                return names.index(v)
            return int(v)

        codes = {index(self.subject_names, s) * len(self.accessory_names) + index(self.accessory_names, a)
                 for s, a in pairs}
        rows = np.asarray(subjects, np.int64) * len(self.accessory_names) + np.asarray(accessories, np.int64)
        return np.isin(rows, sorted(codes))

    def ceiling(self, heldout_pairs: Sequence[tuple[str | int, str | int]] | None = None) -> dict:
        """JSON-able: the judge's rates on its kept-back real pictures, split into seen and held-out pairs when
        told which pairs the generator never trained on."""
        kb = self.kept_back
        out = {"images": len(kb["subject"]), **rates(kb["subject_pred"], kb["accessory_pred"], kb["subject"],
                                                     kb["accessory"]),
               "chance": self.chance(), "fit_images": self.fit_images, "seed": self.seed,
               "config": asdict(self.config)}
        if heldout_pairs is not None:
            held = self.pair_mask(kb["subject"], kb["accessory"], heldout_pairs)
            for name, rows in (("seen", ~held), ("heldout", held)):
                out[name] = {"images": int(rows.sum()), **rates(kb["subject_pred"][rows], kb["accessory_pred"][rows],
                                                                kb["subject"][rows], kb["accessory"][rows])}
        return out


def fit_concept_judge(images: np.ndarray, subjects: np.ndarray, accessories: np.ndarray, *,
                      subject_names: Sequence[str], accessory_names: Sequence[str],
                      config: JudgeConfig = JudgeConfig(), seed: int = 0,
                      device: str | torch.device = "cpu") -> ConceptJudge:
    """Fit the judge on real composed uint8 images (N, C, H, W) of every pair, keeping back config.kept_back of
    each pair's pictures to measure it; reproducible for one seed, the global random state left as it was."""
    images = np.asarray(images)
    subjects, accessories = np.asarray(subjects, np.int64), np.asarray(accessories, np.int64)
    S, A = len(subject_names), len(accessory_names)
    if images.ndim != 4 or images.dtype != np.uint8 or not len(images) == len(subjects) == len(accessories) or \
            len(images) == 0:
        raise ValueError(f"need uint8 (N, C, H, W) images and N subjects and accessories, got {images.dtype} "
                         f"{images.shape}, {subjects.shape}, {accessories.shape}")
    for what, v, k in (("subjects", subjects, S), ("accessories", accessories, A)):
        if v.min() < 0 or v.max() >= k:
            raise ValueError(f"{what} must lie in [0, {k}), got {v.min()}..{v.max()}")
    back = kept_back_rows(subjects * A + accessories, config.kept_back, seed)
    device = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(images[~back])).to(device)
    ys, ya = torch.from_numpy(subjects[~back]).to(device), torch.from_numpy(accessories[~back]).to(device)
    with seeded(seed, device) as gen, cpu_threads(config.cpu_threads, device):
        model = TwoHeadCNN(images.shape[1], S, A, size=images.shape[2:], width=config.width,
                           dropout=config.dropout).to(device)

        def loss_of(idx: torch.Tensor) -> torch.Tensor:
            s_logits, a_logits = model(shifted(_to_float(x[idx]), config.max_shift, gen))
            return nn.functional.cross_entropy(s_logits, ys[idx]) + nn.functional.cross_entropy(a_logits, ya[idx])

        train_steps(model, len(x), config, gen, loss_of)
    judge = ConceptJudge(model.eval(), tuple(subject_names), tuple(accessory_names), {}, config, seed,
                         int((~back).sum()))
    s_pred, a_pred = judge.predict(images[back])
    judge.kept_back.update(subject=subjects[back], accessory=accessories[back], subject_pred=s_pred,
                           accessory_pred=a_pred)
    return judge


def concept_scores(judge: ConceptJudge, images: np.ndarray, subject_idx_true: np.ndarray,
                   accessory_idx_true: np.ndarray) -> dict:
    """{"subject_accuracy", "accessory_accuracy", "both_right"} of pictures against the pair each should show."""
    s_pred, a_pred = judge.predict(images)
    return rates(s_pred, a_pred, np.asarray(subject_idx_true, np.int64), np.asarray(accessory_idx_true, np.int64))


def _in_judge_names(judge: ConceptJudge, fake: ConceptSet) -> tuple[np.ndarray, np.ndarray]:
    """The generated set's asked-for indices, renumbered into the judge's (the real set's) names."""
    out = []
    for idx, names, known in ((fake.subjects, fake.subject_names, judge.subject_names),
                              (fake.accessories, fake.accessory_names, judge.accessory_names)):
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise MetricUnavailable(f"concept_fake asks for {unknown}, which the real composed set never shows")
        out.append(np.array([known.index(n) for n in names], np.int64)[np.asarray(idx, np.int64)])
    return out[0], out[1]


@register_metric(default=False)
def concept_judge(ctx: MetricContext) -> dict:
    """Subject, accessory and both-right rates of generated composed pictures under a judge fit on real ones,
    beside the judge's own rates on kept-back real pictures (the ceiling); on held-out pairs where named."""
    real, fake = ctx.require("concept_real", "concept_fake")
    judge = ctx.extra.get("concept_judge")  # a judge already fit on this real set (one fit, many evaluations)
    if judge is None:
        base = JudgeConfig()
        cfg = JudgeConfig(steps=int(ctx.extra.get("concept_steps", base.steps)),
                          batch_size=int(ctx.extra.get("concept_batch_size", base.batch_size)))
        judge = fit_concept_judge(real.images, real.subjects, real.accessories, subject_names=real.subject_names,
                                  accessory_names=real.accessory_names, config=cfg, seed=ctx.seed,
                                  device=ctx.device)
    s_true, a_true = _in_judge_names(judge, fake)
    s_pred, a_pred = judge.predict(fake.images)
    heldout = ctx.concept_heldout_pairs
    ceiling = judge.ceiling(heldout)
    chance = judge.chance()
    overall = rates(s_pred, a_pred, s_true, a_true)
    out = {"concept_subject_accuracy": overall["subject_accuracy"],
           "concept_accessory_accuracy": overall["accessory_accuracy"], "concept_both_right": overall["both_right"],
           "concept_both_right_real": ceiling["both_right"], "concept_images": len(s_true),
           "concept_chance_subject": chance["subject"], "concept_chance_accessory": chance["accessory"],
           "concept_chance_both": chance["both"], "concept_ceiling": ceiling}
    if heldout is not None:
        held = judge.pair_mask(s_true, a_true, heldout)
        h = rates(s_pred[held], a_pred[held], s_true[held], a_true[held])
        seen = rates(s_pred[~held], a_pred[~held], s_true[~held], a_true[~held])
        out.update(heldout_both_right=h["both_right"], heldout_subject_accuracy=h["subject_accuracy"],
                   heldout_accessory_accuracy=h["accessory_accuracy"], heldout_images=int(held.sum()),
                   heldout_both_right_real=ceiling["heldout"]["both_right"], seen_both_right=seen["both_right"],
                   seen_subject_accuracy=seen["subject_accuracy"], seen_accessory_accuracy=seen["accessory_accuracy"],
                   seen_images=int((~held).sum()), seen_both_right_real=ceiling["seen"]["both_right"])
        groups = ctx.extra.get("concept_accessory_groups")  # {accessory name: where it sits}, e.g. "head"
        if groups:  # the right subject with an accessory of the asked-for kind: composed, if not the exact one
            kinds = [groups.get(n, n) for n in judge.accessory_names]  # "none" is a kind of its own
            g = np.array([sorted(set(kinds)).index(k) for k in kinds])
            for name, rows in (("heldout", held), ("seen", ~held)):
                out[f"{name}_subject_and_kind_right"] = rates(s_pred[rows], g[a_pred[rows]], s_true[rows],
                                                              g[a_true[rows]])["both_right"]
    return out
