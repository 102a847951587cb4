"""One emoji file (PNG, WebP or SVG) -> a square RGB image composited on white, or BrokenImage with the reason.

SVGs are rendered by resvg (resvg-py, a self-contained wheel) without system fonts, so the pixels do not depend
on the fonts a machine has, and an SVG that points at anything outside itself is refused: an image href would
otherwise read a file of the importing machine into the dataset.
"""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image

MAX_SVG_BYTES = 4 * 2**20
MAX_RASTER_PIXELS = 4096 * 4096
# a reference that is not "#id" or "data:": an href/src attribute, a CSS url(), an @import
EXTERNAL_REF = re.compile(rb"""(?:href|src)\s*=\s*["']\s*(?!#|data:)[^"'\s]"""
                          rb"""|url\(\s*["']?\s*(?!#|data:)[^)"'\s]|@import""", re.IGNORECASE)


class BrokenImage(ValueError):
    """A file of a package that cannot become an image; the message is its quarantine reason."""


def on_white(rgba: Image.Image, size: int) -> Image.Image:
    """Fit `rgba` in a `size` square (aspect kept, centred), composite on white: what every style lands as."""
    if rgba.size != (size, size):
        scale = size / max(rgba.size)
        fitted = rgba.resize((max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale))),
                             Image.Resampling.LANCZOS)
        rgba = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        rgba.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    rgb = Image.new("RGB", rgba.size, (255, 255, 255))
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    return rgb


def decode_raster(data: bytes) -> Image.Image:
    """PNG / WebP bytes -> RGBA, fully decoded (first frame of an animation)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.width * im.height > MAX_RASTER_PIXELS:
                raise BrokenImage(f"declares {im.width}x{im.height} pixels, over the {MAX_RASTER_PIXELS:,} limit")
            return im.convert("RGBA")
    except BrokenImage:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reason, not a crash of the import
        raise BrokenImage(f"does not decode as an image: {exc}") from None


def render_svg(data: bytes, size: int) -> Image.Image:
    """SVG bytes -> RGBA fitted in `size` x `size` (resvg keeps the aspect ratio)."""
    import resvg_py

    if len(data) > MAX_SVG_BYTES:
        raise BrokenImage(f"SVG is {len(data) / 2**20:.1f} MiB, over the {MAX_SVG_BYTES / 2**20:.0f} MiB limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BrokenImage(f"SVG is not UTF-8 text: {exc}") from None
    if (m := EXTERNAL_REF.search(data)) is not None:
        raise BrokenImage(f"SVG refers to something outside itself ({m.group(0).decode('utf-8', 'replace')!r})")
    try:
        png = resvg_py.svg_to_bytes(svg_string=text, width=size, height=size, skip_system_fonts=True)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - resvg raises ValueError, a Rust panic arrives as BaseException
        raise BrokenImage(f"SVG does not render: {exc}") from None
    return decode_raster(bytes(png))


def to_emoji_image(data: bytes, ext: str, size: int) -> Image.Image:
    """The file's bytes (`ext` ".png", ".webp" or ".svg") -> `size` x `size` RGB on white; BrokenImage if not."""
    if not data:
        raise BrokenImage("empty file (0 bytes)")
    rgba = render_svg(data, size) if ext == ".svg" else decode_raster(data)
    return on_white(rgba, size)
