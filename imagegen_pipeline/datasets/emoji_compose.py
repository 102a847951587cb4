"""Composed training pictures ("a cat with a top hat"): a face emoji and an accessory emoji of one style, placed.

Single emoji teach a text-conditioned generator names, not composition. Putting every subject of
composition_pairs.py with every accessory (hat on the head, glasses over the eyes, ribbon under the chin), with a
little jitter, gives captions that combine two words; the fixed held-out pairs go to val only, so a val prompt
("a dog with a crown") asks for a combination the generator never saw. Everything else about the import is
`import_emoji`'s: the same packages, licence checks, plain emoji rows and atomic landing.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from imagegen_pipeline.datasets.composition_pairs import (ACCESSORIES, HELD_OUT_PAIRS, NONE, SUBJECTS,
                                                          captions_for_pair, is_held_out)
from imagegen_pipeline.datasets.emoji import (DEFAULT_STYLES, SIZE, STYLES, EmojiSource, caption_group,
                                              dataset_defaults, license_notes, open_emoji, split_of_group,
                                              write_plain)
from imagegen_pipeline.datasets.emoji_captions import code_key, join_captions
from imagegen_pipeline.datasets.emoji_render import BrokenImage, decode_raster, on_white, render_svg
from imagegen_pipeline.datasets.landing import LandingWriter, slug
from imagegen_pipeline.paths import DataPaths

log = logging.getLogger(__name__)

SUPER = 4  # composed at 4x and downsampled: quarter-pixel placement and smooth edges at 64 px
ALPHA_MIN = 32  # alpha above which a pixel belongs to an emoji's box
JITTER = 0.04  # of the picture side, the largest shift of the group in x and in y
COMPOSED_NOTE = (
    "", "## Composed pictures", "",
    "`composed/*.png` each combine two emoji of one style (a face and an accessory; their code points are the "
    "`composed_from` column): cropped to their shapes, resized, placed together and composited on white by this "
    "importer. Each keeps the licence of its style's images (`license` column) and, for CC-BY styles, the "
    "attribution above; the changes are this resizing and combining.",
)


@dataclass(frozen=True)
class Layout:
    """Where an accessory kind goes; every pair of numbers is a (low, high) range drawn per picture."""

    face: tuple[float, float]  # the face's longer side, share of the picture (smaller where the accessory needs room)
    width: tuple[float, float] = (0.0, 0.0)  # accessory width, share of the face width
    height: tuple[float, float] = (0.0, 0.0)  # the most the accessory's height may be, share of the face height
    anchor: tuple[float, float] = (0.0, 0.0)  # share of the face height: head = overlap of the accessory's bottom
    # with the face top; eyes = the accessory's centre below the face top; neck = its top's overlap with the face bottom


LAYOUTS = {
    "head": Layout(face=(0.68, 0.78), width=(0.65, 0.85), height=(0.45, 0.58), anchor=(0.10, 0.20)),
    "eyes": Layout(face=(0.82, 0.92), width=(0.75, 0.95), height=(0.45, 0.55), anchor=(0.38, 0.45)),
    "neck": Layout(face=(0.68, 0.78), width=(0.50, 0.70), height=(0.38, 0.48), anchor=(0.05, 0.12)),
    NONE: Layout(face=(0.80, 0.95)),
}


def _uniform(rng, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))  # random.Random and numpy's Generator both have uniform(low, high)


def _cropped(rgba: Image.Image) -> Image.Image:
    """The emoji cut to the box of its visible pixels: the face box the placement is measured on."""
    rgba = rgba.convert("RGBA")
    box = rgba.getchannel("A").point(lambda v: 255 if v > ALPHA_MIN else 0).getbbox()
    if box is None:
        raise BrokenImage("has no visible pixels")
    return rgba.crop(box)


def _boxes(face: Image.Image, acc: Image.Image | None, kind: str, rng) -> tuple[list[float], list[float] | None]:
    """Face and accessory boxes (x0, y0, x1, y1) in 1/SUPER-pixel units, the face's top-left at the origin."""
    lay, big = LAYOUTS[kind], SIZE * SUPER
    fs = _uniform(rng, lay.face) * big / max(face.size)
    fw, fh = face.width * fs, face.height * fs
    if acc is None:
        return [0.0, 0.0, fw, fh], None
    aw = _uniform(rng, lay.width) * fw
    ah = aw * acc.height / acc.width
    if ah > (cap := _uniform(rng, lay.height) * fh):  # a tall hat or tie: capped by height
        aw, ah = aw * cap / ah, cap
    at = _uniform(rng, lay.anchor) * fh
    top = {"head": at - ah, "eyes": at - ah / 2, "neck": fh - at}[kind]
    return [0.0, 0.0, fw, fh], [(fw - aw) / 2, top, (fw + aw) / 2, top + ah]


def compose(subject_rgba: Image.Image, accessory_rgba: Image.Image | None, kind: str, rng, size: int = SIZE
            ) -> tuple[Image.Image, dict]:
    """One picture: the subject's face with the accessory put where its `kind` ("head", "eyes", "neck"; "none"
    for the face alone) goes, jittered by `rng` -> (RGB `size` x `size` on white, placement in pixels)."""
    if kind not in LAYOUTS:
        raise ValueError(f"unknown accessory kind {kind!r}; choose from {', '.join(LAYOUTS)}")
    face = _cropped(subject_rgba)
    acc = _cropped(accessory_rgba) if kind != NONE else None
    fbox, abox = _boxes(face, acc, kind, rng)
    boxes = [fbox] + ([abox] if abox else [])
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    gw, gh = max(b[2] for b in boxes) - x0, max(b[3] for b in boxes) - y0
    big = size * SUPER
    shrink = min(1.0, 0.98 * big / max(gw, gh))  # a tall hat on a big face: the whole group fits the picture
    gw, gh = gw * shrink, gh * shrink
    ox = min(max((big - gw) / 2 + _uniform(rng, (-JITTER, JITTER)) * big, 0.0), big - gw)
    oy = min(max((big - gh) / 2 + _uniform(rng, (-JITTER, JITTER)) * big, 0.0), big - gh)
    place = lambda b: [ox + (b[0] - x0) * shrink, oy + (b[1] - y0) * shrink,  # noqa: E731
                       ox + (b[2] - x0) * shrink, oy + (b[3] - y0) * shrink]
    canvas = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    placed = [place(b) for b in boxes]
    for im, b in zip([face] + ([acc] if acc else []), placed):
        layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        w, h = max(1, round(b[2] - b[0])), max(1, round(b[3] - b[1]))
        layer.paste(im.resize((w, h), Image.Resampling.LANCZOS), (round(b[0]), round(b[1])))
        canvas = Image.alpha_composite(canvas, layer)
    small = canvas.resize((size, size), Image.Resampling.LANCZOS)
    px = lambda b: [round(v * size / big, 2) for v in b]  # noqa: E731
    placement = {"kind": kind, "subject_box": px(placed[0]), "accessory_box": px(placed[1]) if acc else None,
                 "scale": round(max(placed[0][2] - placed[0][0], placed[0][3] - placed[0][1]) / big, 3)}
    return on_white(small, size), placement


def _images(emoji: EmojiSource, style_name: str, wanted: dict[str, str]) -> dict[str, tuple]:
    """{word: (emoji.json entry, RGBA)} for the `wanted` {word: code points} this style has; a warning for the
    others, whose pictures are skipped."""
    files, style = emoji.packages[style_name][0], STYLES[style_name]
    index = {code_key(e.unified): (e, fname) for e, fname in emoji.files_of(style_name)}
    out = {}
    for word, unified in wanted.items():
        entry, fname = index.get(code_key(unified), (None, None))
        data = files.read(fname) if fname else None
        try:
            if data is None:
                raise BrokenImage("is not in the package")
            rgba = render_svg(data, SIZE * SUPER) if style.ext == ".svg" else decode_raster(data)
            out[word] = (entry, _cropped(rgba))
        except BrokenImage as exc:
            log.warning("%s: %r (%s) %s; its composed pictures are skipped", files.spec, word, unified, exc)
    return out


def write_composed(writer: LandingWriter, emoji: EmojiSource, style_name: str, *, copies: int, seed: int,
                   progress=None) -> int:
    """`copies` pictures of every subject with every accessory and alone, in one style; how many landed."""
    files, style = emoji.packages[style_name][0], STYLES[style_name]
    faces = _images(emoji, style_name, {w: s.unified for w, s in SUBJECTS.items()})
    items = _images(emoji, style_name, {w: a.unified for w, a in ACCESSORIES.items()})
    n = 0
    for subject, (entry, face) in faces.items():
        for acc_word in (*(a for a in ACCESSORIES if a in items), NONE):
            acc_entry, acc = items.get(acc_word, (None, None))
            kind = ACCESSORIES[acc_word].kind if acc is not None else NONE
            captions = captions_for_pair(subject, acc_word)
            # the face alone shares the plain emoji's split (its captions hold the emoji's name)
            split = (split_of_group(caption_group(entry.caption)) if acc is None
                     else "val" if is_held_out(subject, acc_word) else "train")
            row = dict(label=entry.category, caption=captions[0], captions=join_captions(captions), subject=subject,
                       accessory=acc_word, accessory_kind=kind, style=style_name, source_split=split,
                       source_package=files.spec, license=style.license,
                       composed_from="+".join(e.unified for e in (entry, acc_entry) if e is not None))
            for k in range(copies):
                rng = random.Random(f"{seed}/{style_name}/{subject}/{acc_word}/{k}")
                image, placement = compose(face, acc, kind, rng, SIZE)
                writer.add_image(f"composed/{style_name}-{slug(subject)}-{slug(acc_word)}-{k}.png", image,
                                 placement=json.dumps(placement), **row)
                n += 1
                if progress:
                    progress(1)
    return n


def import_composed(paths: DataPaths, *, name: str = "emoji-compose", styles=DEFAULT_STYLES,
                    source: Path | None = None, copies: int = 4, seed: int = 0, limit: int | None = None,
                    overwrite: bool = False, progress=None) -> Path:
    """The plain emoji of `styles` (as `import_emoji`; `limit` keeps the first N of each style) plus the composed
    pictures, in one landing dataset data/raw/<name>/."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, not {copies}")
    emoji = open_emoji(paths, styles, source)
    writer = LandingWriter(paths, name, overwrite=overwrite)
    try:
        write_plain(writer, emoji, limit=limit, progress=progress)
        composed = {s: write_composed(writer, emoji, s, copies=copies, seed=seed, progress=progress)
                    for s in emoji.styles}
        writer.add_file("LICENSE-images.md", license_notes(emoji, COMPOSED_NOTE).encode())
        return writer.commit(dataset_defaults(emoji, extra={"composed": {
            "pictures": composed, "copies": copies, "seed": seed, "subjects": len(SUBJECTS),
            "accessories": len(ACCESSORIES), "held_out_pairs": len(HELD_OUT_PAIRS)}}))
    except BaseException:
        writer.abort()
        raise
