"""Image grids as PNG bytes: previews of data and, later, fixed-noise sample grids."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def image_grid(images: np.ndarray, *, nrow: int | None = None, pad: int = 2, tile: int | None = None,
               background: int = 255) -> Image.Image:
    """uint8 (N, H, W, C) with C in {1, 3} -> one RGB image, tiles left-to-right, top-to-bottom."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected (N, H, W, C) with C in (1, 3), got {images.shape}")
    n, h, w, _ = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol_rows = math.ceil(n / nrow)
    th, tw = (tile, tile) if tile else (h, w)
    canvas = Image.new("RGB", (nrow * (tw + pad) + pad, ncol_rows * (th + pad) + pad), (background,) * 3)
    for i in range(n):
        arr = images[i]
        im = Image.fromarray(arr[..., 0], "L") if arr.shape[-1] == 1 else Image.fromarray(arr, "RGB")
        if (th, tw) != (h, w):
            im = im.resize((tw, th), Image.Resampling.NEAREST if th >= h else Image.Resampling.BICUBIC)
        r, c = divmod(i, nrow)
        canvas.paste(im.convert("RGB"), (pad + c * (tw + pad), pad + r * (th + pad)))
    return canvas


def png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """PNG file bytes; `text` becomes tEXt chunks (what made the picture travels with it)."""
    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(str(key), str(value))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True, pnginfo=info)
    return buf.getvalue()
