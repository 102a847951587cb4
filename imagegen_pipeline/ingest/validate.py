"""Decide, for one landing file, whether it is a usable image, and decode it the one canonical way.

Every refusal is a human-readable reason that ends up in the manifest; nothing here raises
for bad input, and nothing here modifies, moves or deletes the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


@dataclass(frozen=True)
class ValidationConfig:
    """Limits that make a file a quarantine row instead of a risk."""

    max_pixels: int = 40_000_000  # width*height above this is refused before decoding (decompression bombs)
    max_bytes: int = 100 * 2**20  # larger files are refused unread
    min_side: int = 8  # images smaller than this on either side carry no usable signal


@dataclass(frozen=True)
class PixelSpec:
    """The normalised form the validation pass keeps for the shards (decode once): square side and channels.
    channels "auto" keeps each file in its own kind, L for greyscale and RGB for colour."""

    resolution: int
    channels: str = "auto"  # "L", "RGB" or "auto"

    def mode_for(self, im: Image.Image) -> str:
        if self.channels != "auto":
            return self.channels
        return "L" if im.mode in GRAY_MODES else "RGB"


class Refused(OSError):
    """A landing entry that must not be read as an image; the message is the quarantine reason."""


def read_landing_file(root: str, rel: str, max_bytes: int) -> bytes:
    """The bytes of `root/rel`, read through one file descriptor whose target was checked: inside the landing
    folder (a symlink may point within it only), a regular file, at most `max_bytes`. Checking a path and then
    opening it again would follow whatever the link points at by then (a file outside, a FIFO, /dev/zero)."""
    real, top = os.path.realpath(os.path.join(root, rel)), os.path.realpath(root)
    if os.path.commonpath([real, top]) != top:
        raise Refused(f"symlink points outside the landing folder (-> {real})")
    # O_NOFOLLOW: the resolved name must not have become a link since; O_NONBLOCK: a FIFO cannot block the open
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not a regular file (or a symlink to a missing file or a folder)")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Refused(f"file is over the {max_bytes / 2**20:.0f} MiB limit")
    return data


def inspect_file(root: str, rel: str, cfg: ValidationConfig, pixels: PixelSpec | None = None) -> dict:
    """Stat, hash and fully decode `root/rel`; return a manifest row with `valid` and `reason`. With `pixels`,
    a valid row also carries `_pixels` (uint8 bytes) and `_pixel_mode`, made from the same decoded bytes."""
    row = {"path": rel, "size_bytes": 0, "mtime_ns": 0, "sha256": None, "width": None, "height": None,
           "mode": None, "format": None, "is_gray": None, "valid": False, "reason": ""}
    path = os.path.join(root, rel)
    try:
        st = os.lstat(path)
        row["size_bytes"], row["mtime_ns"] = st.st_size, st.st_mtime_ns
        if stat.S_ISLNK(st.st_mode):
            target = Path(path).resolve()
            if not target.is_relative_to(Path(root).resolve()):
                row["reason"] = f"symlink points outside the landing folder (-> {os.readlink(path)})"
                return row
            if not target.is_file():
                row["reason"] = "symlink to a missing file or a folder"
                return row
            st = target.stat()
            row["size_bytes"] = st.st_size
        elif not stat.S_ISREG(st.st_mode):
            row["reason"] = "not a regular file"
            return row
        ext = os.path.splitext(rel)[1].lower()
        if ext not in IMAGE_EXTENSIONS:
            row["reason"] = f"unsupported file type {ext or '(no extension)'!r}; images must be one of " + \
                            ", ".join(sorted(IMAGE_EXTENSIONS))
            return row
        if st.st_size == 0:
            row["reason"] = "empty file (0 bytes)"
            return row
        if st.st_size > cfg.max_bytes:
            row["reason"] = f"file is {st.st_size / 2**20:.1f} MiB, over the {cfg.max_bytes / 2**20:.0f} MiB limit"
            return row
        data = read_landing_file(root, rel, cfg.max_bytes)
    except Refused as exc:
        row["reason"] = str(exc)
        return row
    except OSError as exc:
        row["reason"] = f"cannot read file: {exc.strerror or exc}"
        return row
    row["sha256"] = hashlib.sha256(data).hexdigest()
    reason = _decode_check(data, row, cfg, pixels)
    row["valid"], row["reason"] = reason is None, reason or ""
    return row


def _decode_check(data: bytes, row: dict, cfg: ValidationConfig, pixels: PixelSpec | None) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            return "not a recognisable image (content does not match the file extension)"
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return f"decompression bomb refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a reason, not a crash
            return f"truncated or corrupt image header: {exc}"
        w, h = im.size
        row["format"], row["mode"] = im.format, im.mode
        if w * h > cfg.max_pixels:
            return f"declares {w}x{h} = {w * h:,} pixels, over the {cfg.max_pixels:,} limit (decompression bomb guard)"
        row["is_gray"] = im.mode in GRAY_MODES
        try:
            mode = pixels.mode_for(im) if pixels else None
            if pixels:
                _draft(im, pixels.resolution, mode)  # before load(): the shards' decode, done once
            im.load()
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # upright() turns it a quarter
                w, h = h, w
            im = upright(im)
            if min(w, h) >= cfg.min_side and pixels:
                row["_pixels"], row["_pixel_mode"] = normalize(im, pixels.resolution, mode).tobytes(), mode
        except Exception as exc:  # noqa: BLE001
            return f"truncated or corrupt image data: {exc}"
    row["width"], row["height"] = w, h
    if min(w, h) < cfg.min_side:
        return f"image is {w}x{h}, smaller than {cfg.min_side} pixels on a side"
    return None


def upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, if there is one (exif_transpose costs 10 us even when there is none)."""
    return ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) != 1 else im


def inspect_chunk(root: str, rels: list[str], cfg: ValidationConfig, pixels: PixelSpec | None = None) -> list[dict]:
    """Picklable worker entry point: inspect a batch of files."""
    return [inspect_file(root, rel, cfg, pixels) for rel in rels]


def to_8bit(im: Image.Image, channels: str) -> Image.Image:
    """Any decoded image as 8-bit `L` or `RGB`: 16-bit scaled (not clipped), alpha composited on white."""
    if im.mode in SIXTEEN_BIT_MODES:
        arr = np.asarray(im).astype(np.float32)
        scale = 257.0 if (im.mode != "I" or arr.max(initial=0) > 255) else 1.0
        im = Image.fromarray(np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, (255, 255, 255))
        im.paste(rgba, mask=rgba.getchannel("A"))
    return im.convert(channels) if im.mode != channels else im


def load_normalized(path: str | Path | bytes, *, resolution: int, channels: str) -> np.ndarray:
    """Decode (a path or the file's bytes), rotate upright, convert and centre-crop-resize: uint8 (H, W, C)."""
    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
        _draft(im, resolution, channels)
        return normalize(upright(im), resolution, channels)


def _draft(im: Image.Image, resolution: int, channels: str) -> None:
    """JPEG only: let the decoder downscale in the DCT domain (a no-op for other formats)."""
    if im.format == "JPEG":
        im.draft(channels if channels == "L" else "RGB", (resolution, resolution))


def normalize(im: Image.Image, resolution: int, channels: str) -> np.ndarray:
    """A decoded, upright image -> 8-bit `channels`, centre square, `resolution` side: uint8 (H, W, C)."""
    im = to_8bit(im, channels)
    if im.size[0] != im.size[1]:
        side = min(im.size)
        left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
        im = im.crop((left, top, left + side, top + side))  # centre square
    if im.size[0] != resolution:
        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


class ChangedSinceValidation(RuntimeError):
    """A landing file's bytes no longer hash to what raw_images validated: its pixels must not enter the shards."""


def load_chunk(root: str, items: list[tuple[str, str]], resolution: int, channels: str,
               max_bytes: int = ValidationConfig.max_bytes) -> bytes:
    """Picklable worker entry point: (path, validated sha256) pairs -> contiguous (N, H, W, C) uint8 bytes. The
    bytes decoded are the bytes hashed, read under validation's own checks (read_landing_file): a file edited or
    a symlink re-pointed after validation is refused, not sharded unchecked."""
    out = []
    for rel, sha in items:
        try:
            data = read_landing_file(root, rel, max_bytes)
        except OSError as exc:
            raise ChangedSinceValidation(f"{rel!r} became unreadable after raw_images validated it ({exc}); "
                                         "re-materialize raw_images, then image_shards") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise ChangedSinceValidation(f"{rel!r} changed after raw_images validated it (its sha256 differs); "
                                         "re-materialize raw_images, then image_shards")
        try:
            out.append(load_normalized(data, resolution=resolution, channels=channels).tobytes())
        except Exception as exc:  # noqa: BLE001 - name the file instead of a bare worker traceback
            raise ChangedSinceValidation(f"{rel!r} no longer decodes as it did in validation ({exc}); "
                                         "re-materialize raw_images, then image_shards") from None
    return b"".join(out)
