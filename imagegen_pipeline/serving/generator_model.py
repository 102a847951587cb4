"""The registered generator as an MLflow pyfunc: a table of requests in, images out.

Input: a DataFrame with `seed` and `count` and, for a conditional model, `label` (class name or index) or
`prompt` (text models). Row r gives `count` images with seeds seed, seed+1, ...; the same row always gives the
same pixels. Output (params `format`): "png" (default) -> DataFrame of base64 PNGs with the request columns;
"array" -> uint8 array (N, H, W, C). A diffusion model also takes params `guidance` (classifier-free guidance
weight; 1 = none, default its training config's), recorded in each PNG row, and composes a prompt's parts joined
by " AND " ("a cat face AND a top hat": each concept's guided direction summed, Composable Diffusion).

    gen = mlflow.pyfunc.load_model("models:/imagegen-generator-mnist@champion")
    gen.predict(pd.DataFrame({"label": ["7"], "seed": [0], "count": [16]}), params={"format": "array"})
"""

from __future__ import annotations

import base64
import io

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


MAX_IMAGES_PER_ROW = 256
MAX_IMAGES_PER_REQUEST = 1024  # about 0.3 s of generation on 2 CPU cores at 32 px
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range
FORMATS = ("png", "array")


class GeneratorModel(PythonModel):
    def load_context(self, context) -> None:
        from imagegen_pipeline.ml.dcgan import load_generator
        from imagegen_pipeline.ml.runtime import resolve_runtime

        self.runtime = resolve_runtime("auto")
        self.generator, self.cfg = load_generator(context.artifacts["generator"])
        self.generator = self.generator.to(self.runtime.device).eval()
        self.class_names = list(self.cfg.extra.get("class_names", []))
        self.text_encoder = None

    def _cond(self, row: pd.Series, n: int):
        import torch

        if self.cfg.conditioning == "class":
            label = row.get("label")
            if label is None or (isinstance(label, float) and np.isnan(label)):
                raise ValueError(f"this generator is conditioned on a class: give `label` (one of {self.class_names})")
            from imagegen_pipeline.ml.dcgan.sample import class_index

            idx = class_index(label, self.class_names, self.cfg.num_classes)
            return torch.full((n,), idx, dtype=torch.long)
        if self.cfg.conditioning == "text":
            prompt = row.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("this generator is conditioned on text: give a non-empty `prompt`")
            if self.text_encoder is None:
                from imagegen_pipeline.ml.text_encoder import TextEncoder

                self.text_encoder = TextEncoder()
            parts = concepts(prompt) if hasattr(self.generator, "guidance") else [prompt]
            from imagegen_pipeline.ml.caption_tokens import prompt_conditions

            vectors = torch.from_numpy(prompt_conditions(self.cfg, parts, encoder=self.text_encoder))  # (K, *shape)
            each = vectors if len(parts) == 1 else vectors[None]  # one condition, or K concepts composed
            return each.expand(n, *each.shape[1:]).clone()  # (n, *shape) | (n, K, *shape)
        return None

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame | np.ndarray:
        """Typed, so MLflow 3 knows the input is a table (validated against the logged signature) and does not
        warn at every registration and load."""
        from imagegen_pipeline.ml.dcgan import generate

        frame = pd.DataFrame(model_input)
        if "seed" not in frame:
            raise ValueError("input needs a `seed` column (and optionally `count`, `label`, `prompt`)")
        fmt = (params or {}).get("format", "png")
        if fmt not in FORMATS:
            raise ValueError(f"params.format must be one of {list(FORMATS)}, not {str(fmt)[:40]!r}")
        counts = [_whole(row.get("count"), "count", default=1, low=1, high=MAX_IMAGES_PER_ROW)
                  for _, row in frame.iterrows()]
        if sum(counts) > MAX_IMAGES_PER_REQUEST:  # refused before any work: one request cannot starve the rest
            raise ValueError(f"this request asks for {sum(counts)} images; at most {MAX_IMAGES_PER_REQUEST} per "
                             "request (split it into several)")
        firsts = [_whole(row["seed"], "seed", low=0, high=MAX_SEED - count) for (_, row), count in
                  zip(frame.iterrows(), counts, strict=True)]
        conds = [self._cond(row, count) for (_, row), count in zip(frame.iterrows(), counts, strict=True)]
        guidance = self._guidance(params)
        images, rows = [], []
        for (_, row), count, first, cond in zip(frame.iterrows(), counts, firsts, conds, strict=True):
            seeds = [first + i for i in range(count)]
            batch = generate(self.generator, self.cfg, seeds=seeds, cond=cond, runtime=self.runtime)
            images.append(batch)
            rows += [{**{k: row.get(k) for k in ("label", "prompt") if k in frame}, "seed": s,
                      **({"guidance": guidance} if guidance is not None else {})} for s in seeds]
        out = np.concatenate(images) if images else np.zeros((0, self.cfg.resolution, self.cfg.resolution,
                                                              self.cfg.channels), np.uint8)
        if fmt == "array":
            return out
        result = pd.DataFrame(rows)
        result["png_base64"] = [_png_b64(im) for im in out]
        return result


    def _guidance(self, params: dict | None) -> float | None:
        """The guidance weight this request samples with (diffusion models only; None for the others)."""
        if not hasattr(self.generator, "guidance"):
            return None
        value = (params or {}).get("guidance")
        if value is not None:
            value = float(value)
            if not 0.0 <= value <= 20.0:
                raise ValueError(f"params.guidance must be in [0, 20], not {value}")
            self.generator.guidance = value
        return float(self.generator.guidance)


def concepts(prompt: str) -> list[str]:
    """A diffusion prompt's concepts: "a cat face AND a top hat" -> two, composed at sampling time (Composable
    Diffusion's AND, upper case so an ordinary "and" stays one concept); empty parts are dropped."""
    parts = [p.strip() for p in prompt.split(" AND ")]
    return [p for p in parts if p] or [prompt]


def _whole(value, column: str, *, low: int, high: int, default: int | None = None) -> int:
    """A request cell as a whole number in [low, high] (JSON numbers may arrive as floats), or a ValueError
    that names the column; a missing cell is `default` where there is one."""
    missing = value is None or (isinstance(value, float) and np.isnan(value))
    if missing and default is not None:
        return default
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            missing or not float(value).is_integer():
        raise ValueError(f"`{column}` must be a whole number, got {str(value)[:40]!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"`{column}` must be between {low} and {high}, got {int(value)}")
    return int(value)


def _png_b64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


mlflow.models.set_model(GeneratorModel())
