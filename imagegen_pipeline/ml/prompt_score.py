"""How well a generated image matches a prompt, judged through the training images it resembles.

A generated image has no caption, but its nearest real images (in the fine-tuned extractor's space) do:
score(image, prompt) = mean over its k nearest training images of cos(prompt embedding, their caption embedding).
Also here: the caption store (data/embeddings/<dataset>/captions.parquet, one caption vector per image),
best-of-K re-ranking, R-precision (plain numpy), and PromptScorer, which ties them to the extractor and the
sentence encoder. No Dagster, no MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imagegen_pipeline.atomic import atomic_path, write_json_atomic
from imagegen_pipeline.ml.embeddings_store import embedding_matrix, rows_by_sha256

CAPTIONS_FILE = "captions.parquet"  # beside embeddings.parquet under data/embeddings/<dataset>/
# a train image's other captions (short names, tags: the emoji importer's `captions`), one row each, same columns;
# only text-model training reads them (R-precision and the caption bank use CAPTIONS_FILE's one name per image)
VARIANTS_FILE = "caption_variants.parquet"
CAPTIONS_INFO_FILE = "captions.json"  # rows, unique captions, dim and which encoder wrote them


# ---- the caption store ---------------------------------------------------------------------------------------

def encode_unique(captions: Sequence[str], encode: Callable[[list[str]], np.ndarray]
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Encode each distinct caption once: (unique captions sorted, their vectors (U, D), row -> unique index (N,))."""
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    vectors = np.asarray(encode(unique), dtype=np.float32) if unique else np.zeros((0, 0), np.float32)
    if len(vectors) != len(unique):
        raise ValueError(f"the encoder returned {len(vectors)} vectors for {len(unique)} captions")
    return unique, vectors, np.fromiter((index[c] for c in captions), dtype=np.int64, count=len(captions))


def write_captions(out_dir: str | Path, parts: Iterable[dict], *, encoder: dict, name: str = CAPTIONS_FILE) -> Path:
    """`parts`: dicts of split, sha256 list, caption list, embedding (N, D) float32. Written atomically, as
    `name` (the caption variants go to VARIANTS_FILE; the info JSON describes CAPTIONS_FILE only)."""
    tables = []
    for p in parts:
        emb = np.ascontiguousarray(p["embedding"], dtype=np.float32)
        n, d = emb.shape
        if not (len(p["sha256"]) == len(p["caption"]) == n):
            raise ValueError(f"split {p['split']}: {len(p['sha256'])} sha256, {len(p['caption'])} captions, "
                             f"{n} vectors")
        tables.append(pa.table({
            "sha256": pa.array(p["sha256"], pa.string()),
            "split": pa.array([p["split"]] * n, pa.string()),
            "caption": pa.array(p["caption"], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), d),
        }))
    if not tables:
        raise ValueError("no captioned rows to write")
    table = pa.concat_tables(tables)
    out = Path(out_dir) / name
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    if name != CAPTIONS_FILE:
        return out
    write_json_atomic(Path(out_dir) / CAPTIONS_INFO_FILE, {
        "rows": table.num_rows, "unique_captions": len(set(table.column("caption").to_pylist())),
        "dim": table.schema.field("embedding").type.list_size, "encoder": encoder})
    return out


def read_captions(out_dir: str | Path, *, split: str | None = None, name: str = CAPTIONS_FILE) -> pd.DataFrame:
    """The caption table (sha256, split, caption, embedding); `embedding` holds one float32 array per row."""
    f = Path(out_dir) / name
    if not f.is_file():
        raise FileNotFoundError(f"no {f}: materialize caption_embeddings first")
    return pq.read_table(f, filters=[("split", "=", split)] if split else None).to_pandas()


def vectors_for(order: Sequence[str], frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Caption vectors in the order of `order` (sha256 list): ((N, D) float32 with zero rows where a sha256 has
    no caption, bool (N,) which rows have one)."""
    mat = embedding_matrix(frame)
    rows = rows_by_sha256(order, frame["sha256"].tolist())
    found = rows >= 0
    out = np.zeros((len(order), mat.shape[1] if mat.size else 0), np.float32)
    out[found] = mat[rows[found]]
    return out, found


# ---- scoring -------------------------------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class CaptionBank:
    """Training images that have both an extractor embedding and a caption embedding, row-aligned."""

    image_vectors: np.ndarray  # (N, E) unit-norm extractor embeddings
    caption_vectors: np.ndarray  # (N, D) unit-norm caption embeddings of the same images
    captions: list[str]  # (N,) the captions themselves, for showing what an image was matched to
    sha256: list[str] | None = None  # (N,) the images' content hashes, for showing the images themselves

    def __post_init__(self):
        self.image_vectors = _unit(self.image_vectors)
        self.caption_vectors = _unit(self.caption_vectors)
        if not (len(self.image_vectors) == len(self.caption_vectors) == len(self.captions)) or not len(self.captions):
            raise ValueError(f"a caption bank needs matching, non-empty rows: {len(self.image_vectors)} images, "
                             f"{len(self.caption_vectors)} caption vectors, {len(self.captions)} captions")

    @classmethod
    def from_frames(cls, embeddings: pd.DataFrame, captions: pd.DataFrame) -> CaptionBank:
        """Join the image-embedding table and the caption table on sha256 (rows missing from either are left out)."""
        joined = embeddings[["sha256", "embedding"]].merge(
            captions[["sha256", "caption", "embedding"]].rename(columns={"embedding": "text"}), on="sha256")
        if joined.empty:
            raise ValueError("no image has both an extractor embedding and a caption (do the two tables come from "
                             "the same shards?)")
        return cls(embedding_matrix(joined), np.stack(joined["text"].to_numpy()).astype(np.float32),
                   joined["caption"].tolist(), joined["sha256"].tolist())

    def neighbours(self, image_embeddings: np.ndarray, *, k: int = 5) -> np.ndarray:
        """Indices (M, k) of each image's k nearest bank images by cosine, nearest first."""
        sims = _unit(image_embeddings) @ self.image_vectors.T  # (M, N)
        k = max(1, min(k, sims.shape[1]))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)

    def text_proxies(self, image_embeddings: np.ndarray, *, k: int = 5) -> np.ndarray:
        """(M, D): the mean caption vector of each image's k nearest bank images; score = proxy . prompt."""
        return self.caption_vectors[self.neighbours(image_embeddings, k=k)].mean(axis=1)

    def score(self, image_embeddings: np.ndarray, prompt_vector: np.ndarray, *, k: int = 5) -> np.ndarray:
        """(M,) mean cosine between the prompt and the captions of each image's k nearest training images."""
        return self.text_proxies(image_embeddings, k=k) @ _unit(np.asarray(prompt_vector).reshape(-1))


def best_of(scores: np.ndarray, *, k: int) -> np.ndarray:
    """Candidates come in groups of k (one group per requested image): the index of each group's best, best
    groups first."""
    scores = np.asarray(scores, dtype=np.float64)
    if k < 1 or len(scores) % k:
        raise ValueError(f"{len(scores)} scores do not split into groups of {k}")
    groups = scores.reshape(-1, k)
    best = np.arange(len(groups)) * k + groups.argmax(axis=1)
    return best[np.argsort(-scores[best], kind="stable")]


def keep_best(scorer: "PromptScorer", images: np.ndarray, text: str, *, k: int
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Score candidates (groups of k, one group per wanted image) against `text` and keep each group's best:
    (indices into `images`, best first; their scores; their nearest training captions)."""
    scores, nearest = scorer.score(images, text)
    keep = best_of(scores, k=k)
    return keep, np.asarray(scores)[keep], [nearest[i] for i in keep]


def r_precision_negatives(caption_vectors: np.ndarray, *, groups: Sequence[str] | None = None,
                          distractors: int = 99, seed: int = 0) -> list[np.ndarray]:
    """For each row, the rows whose captions serve as its negatives: one row per distinct caption (the same
    caption drawn for two styles is one negative, not two), never the row's own caption nor, with `groups`
    (e.g. `datasets.emoji.caption_group`: a caption without its skin tones), a caption of its group.
    Up to `distractors` of them, seeded."""
    cap = _unit(caption_vectors)
    n = len(cap)
    same = (cap @ cap.T) > 1 - 1e-6  # (N, N) identical captions
    caption_id = same.argmax(axis=1)  # the first row with each row's caption
    if groups is None:
        group_id = caption_id
    else:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} caption groups for {n} captions")
        _, group_id = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    firsts = np.unique(caption_id)  # one row per distinct caption
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pool = firsts[(caption_id[firsts] != caption_id[i]) & (group_id[firsts] != group_id[i])]
        if len(pool) == 0:
            raise ValueError("every caption is the same (or of one group): nothing to rank against")
        out.append(rng.choice(pool, size=min(distractors, len(pool)), replace=False))
    return out


def r_precision(image_vectors: np.ndarray, caption_vectors: np.ndarray, *, distractors: int = 99,
                seed: int = 0, groups: Sequence[str] | None = None) -> float:
    """Share of images whose own caption outscores `distractors` random other captions (R-precision, R=1).

    image_vectors (N, D): each generated image as a text-space vector (e.g. `CaptionBank.text_proxies`);
    caption_vectors (N, D): the held-out caption each image was generated from; groups (N,): optional caption
    groups. Negatives are distinct captions other than the row's own and outside its group
    (`r_precision_negatives`): a caption repeated across styles neither counts twice nor competes with itself,
    and a skin-tone variant of the true caption is no negative. A tie counts as a miss.
    """
    img, cap = _unit(image_vectors), _unit(caption_vectors)
    if len(img) < 2 or cap.shape != img.shape:
        raise ValueError(f"need at least 2 rows of matching shape, got {img.shape} and {cap.shape}")
    scores = img @ cap.T  # (N, N): image i against caption j
    negatives = r_precision_negatives(cap, groups=groups, distractors=distractors, seed=seed)
    hits = sum(bool(scores[i, i] > scores[i, pick].max()) for i, pick in enumerate(negatives))
    return hits / len(img)


class PromptScorer:
    """One dataset's judge of prompt fit: its fine-tuned extractor, its caption bank and the sentence encoder.

    scorer = PromptScorer.load(extractor_file=..., embeddings_dir=...)
    scores, nearest = scorer.score(images_uint8_nhwc, "a cat with a hat")
    """

    def __init__(self, extractor, bank: CaptionBank, *, encoder=None, neighbours: int = 5, device: str = "auto"):
        from imagegen_pipeline.ml.runtime import resolve_runtime

        self.extractor, self.bank, self.neighbours = extractor, bank, neighbours
        self.runtime = resolve_runtime(device)
        if encoder is None:
            from imagegen_pipeline.ml.text_encoder import TextEncoder

            encoder = TextEncoder()
        self.encoder = encoder

    @classmethod
    def load(cls, *, extractor_file: str | Path, embeddings_dir: str | Path, split: str = "train",
             **kwargs) -> PromptScorer:
        """From the files the pipeline writes; FileNotFoundError names the first one missing."""
        from imagegen_pipeline.ml.embeddings_store import EMBEDDINGS_FILE, read_embeddings
        from imagegen_pipeline.ml.extractor import load_extractor

        for f in (Path(extractor_file), Path(embeddings_dir) / EMBEDDINGS_FILE, Path(embeddings_dir) / CAPTIONS_FILE):
            if not f.is_file():
                raise FileNotFoundError(f"no {f}")
        extractor, _ = load_extractor(extractor_file)
        bank = CaptionBank.from_frames(read_embeddings(embeddings_dir, split=split),
                                       read_captions(embeddings_dir, split=split))
        return cls(extractor, bank, **kwargs)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> extractor embeddings (N, E)."""
        import torch

        from imagegen_pipeline.ml.extractor import embed_images

        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
        emb, _ = embed_images(self.extractor, x, runtime=self.runtime)
        return emb

    def score(self, images: np.ndarray, prompt: str) -> tuple[np.ndarray, list[str]]:
        """(scores (N,), the caption of each image's nearest training image)."""
        emb = self.embed(images)
        prompt_vector = self.encoder.encode([prompt])[0]
        nearest = self.bank.neighbours(emb, k=1)[:, 0]
        return self.bank.score(emb, prompt_vector, k=self.neighbours), [self.bank.captions[i] for i in nearest]
