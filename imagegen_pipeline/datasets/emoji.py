"""Emoji from npm packages, every style 64x64 RGBA composited on white, several captions per image.

Styles (`--styles`, default google,twitter), each from one pinned npm package whose licence is checked:

| style | npm package | files | image licence |
|---|---|---|---|
| google | emoji-datasource-google@16.0.0 | PNG 64 px | Noto Emoji, Apache-2.0 |
| twitter | emoji-datasource-twitter@16.0.0 | PNG 64 px | Twemoji, CC-BY-4.0 (attribution in LICENSE-images.md) |
| fluent-flat | @lobehub/fluent-emoji-flat@1.1.0 | SVG (rendered by resvg) | Microsoft Fluent Emoji, MIT |
| fluent-3d | @lobehub/fluent-emoji-3d@1.1.0 | WebP 256 px (15.8 MB tarball) | Microsoft Fluent Emoji, MIT |

Left out: Blobmoji (Apache-2.0) was in `@svgmoji/blob@2.0.0`, which the registry we reach no longer has (it lists
3.1.0 and 3.2.0 only, and those ship no SVGs); OpenMoji (CC BY-SA: share-alike would bind the generator's output);
Apple and Facebook artwork (their licences forbid this use).

Every package must carry a licence file or package.json `license` naming the licence above (MIT for the packages
themselves), else the import is refused. Names and categories come from emoji-datasource's `emoji.json`, matched
to the lobehub files ("1f44d-1f3fb.svg") by code points. Per image: label = category; `subcategory`, `style`,
`source_package` (package@version) and `license` (SPDX id of the image) kept; `caption` = the emoji's name in plain
words ("smiling cat face with heart-shaped eyes", skin tones appended) and `captions` = every distinct caption
(name, short names, CLDR label and tags from emojibase-data), " | "-joined (emoji_captions.py). A file that does
not decode or render lands as it came, marked `import_error`, and ingestion quarantines it with that reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from imagegen_pipeline.datasets.emoji_captions import SKIN_TONES, captions_for, code_key, join_captions, load_cldr
from imagegen_pipeline.datasets.emoji_render import BrokenImage, to_emoji_image
from imagegen_pipeline.datasets.idx import SourceNotFound
from imagegen_pipeline.datasets.landing import DatasetDefaults, LandingWriter, slug
from imagegen_pipeline.datasets.npm_packages import NpmPackage, PackageFiles, open_package
from imagegen_pipeline.paths import DataPaths

log = logging.getLogger(__name__)

NPM_VERSION = "16.0.0"
SIZE = 64


@dataclass(frozen=True)
class Style:
    package: NpmPackage
    folder: str  # where the images are in the package
    ext: str  # ".png", ".svg", ".webp"
    license: str  # SPDX id of the images
    notice: str  # for LICENSE-images.md
    datasource: bool = False  # emoji-datasource layout: emoji.json's `image` names the file, has_img_<style> flags


def _datasource(style: str) -> NpmPackage:
    return NpmPackage(f"emoji-datasource-{style}", NPM_VERSION, "MIT")


STYLES: dict[str, Style] = {
    "google": Style(_datasource("google"), "img/google/64/", ".png", "Apache-2.0",
                    "Noto Emoji images by Google, Apache License 2.0", datasource=True),
    "twitter": Style(_datasource("twitter"), "img/twitter/64/", ".png", "CC-BY-4.0",
                     "Twemoji graphics by Twitter, Inc and other contributors, CC-BY 4.0 "
                     "(https://creativecommons.org/licenses/by/4.0/); rasterised at 64 px by emoji-datasource, "
                     "composited on white here", datasource=True),
    "fluent-flat": Style(NpmPackage("@lobehub/fluent-emoji-flat", "1.1.0", "MIT"), "assets/", ".svg", "MIT",
                         "Fluent Emoji (flat), Copyright (c) Microsoft Corporation, MIT License; rendered from SVG "
                         "at 64 px, on white"),
    "fluent-3d": Style(NpmPackage("@lobehub/fluent-emoji-3d", "1.1.0", "MIT"), "assets/", ".webp", "MIT",
                       "Fluent Emoji (3D), Copyright (c) Microsoft Corporation, MIT License; resized from 256 px "
                       "WebP to 64 px, on white"),
}
DEFAULT_STYLES = ("google", "twitter")
LEFT_OUT = {
    "blob": "Blobmoji SVGs were in @svgmoji/blob@2.0.0, which the npm registry no longer lists (3.x ship none)",
    "openmoji": "OpenMoji is CC BY-SA (share-alike), left out on purpose",
    "apple": "Apple's emoji licence forbids this use", "facebook": "Facebook's emoji licence forbids this use",
}
EMOJIBASE = NpmPackage("emojibase-data", "17.0.0", "MIT")  # CLDR labels and tags: en/data.json
METADATA = _datasource("google")  # emoji.json (names, categories) when no datasource style is imported
IMAGE_LICENSES = {s: st.notice for s, st in STYLES.items()}


def _caption(name: str) -> str:
    return name.lower().replace("_", " ").strip()


@dataclass(frozen=True)
class Entry:
    image: str  # emoji-datasource's file name ("1f44d-1f3fb.png")
    unified: str  # code points, emoji-datasource spelling ("1F44D-1F3FB")
    caption: str
    tones: str  # "light skin tone" or ""
    short_names: tuple[str, ...]
    category: str
    subcategory: str
    flags: dict  # has_img_<style>


def _entries(meta: list[dict]):
    """Every emoji and skin-tone variant in emoji.json order."""
    for e in meta:
        base = _caption(e.get("name") or e.get("short_name") or e["unified"])
        shorts = tuple(e.get("short_names") or [])
        cat, sub = e["category"], e.get("subcategory", "")
        yield Entry(e["image"], e["unified"], base, "", shorts, cat, sub, e)
        for tone, var in (e.get("skin_variations") or {}).items():
            tones = ", ".join(SKIN_TONES.get(t, t) for t in tone.split("-"))
            yield Entry(var["image"], var["unified"], f"{base}, {tones}", tones, shorts, cat, sub, var)


VAL_FRACTION = 0.1


def caption_group(caption: str) -> str:
    """The caption without its skin tones: every style and tone of an emoji (and different code points with one
    name, like the two "man in tuxedo") share it, so they share a split."""
    for tone in sorted(SKIN_TONES.values(), key=len, reverse=True):  # "medium-light ..." before "light ..."
        caption = caption.replace(f", {tone}", "").replace(tone, "")
    return caption.strip(" ,").lower()


def split_of_group(group: str) -> str:
    """train/val by a hash of the caption group, so R-precision is measured on captions the model never saw
    (a split by image hash put google's and twitter's "thumbs up sign" on both sides)."""
    return "val" if int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 2**32 < VAL_FRACTION else "train"


def parse_styles(styles) -> tuple[str, ...]:
    """"google,fluent-flat" or a sequence -> validated, de-duplicated style names."""
    names = [s.strip().lower() for s in (styles.split(",") if isinstance(styles, str) else styles) if s.strip()]
    for s in names:
        if s in LEFT_OUT:
            raise ValueError(f"emoji style {s!r} is not available: {LEFT_OUT[s]}")
        if s not in STYLES:
            raise ValueError(f"unknown emoji style {s!r}; choose from {', '.join(STYLES)}")
    if not names:
        raise ValueError(f"no emoji style given; choose from {', '.join(STYLES)}")
    return tuple(dict.fromkeys(names))


def _style_files(style: Style, entries: list[Entry], files: PackageFiles, name: str):
    """(entry, file name in the package) for each image the style has, in emoji.json order."""
    if style.datasource:
        for e in entries:
            if e.flags.get(f"has_img_{name}"):
                yield e, style.folder + e.image
        return
    by_key: dict[str, list[str]] = {}  # fluent-3d has both "00a9-fe0f.webp" and "a9-fe0f.webp": one image
    for n in files.names(style.folder):
        if n.endswith(style.ext):
            by_key.setdefault(code_key(Path(n).stem), []).append(n)
    known = {code_key(e.unified) for e in entries}
    if (unknown := sorted(k for k in by_key if k not in known)):
        log.warning("%s: %d files match no emoji-datasource entry and are skipped (e.g. %s)", files.spec,
                    len(unknown), by_key[unknown[0]][0])
    for e in entries:
        if (names := by_key.pop(code_key(e.unified), None)):
            exact = style.folder + e.unified.lower() + style.ext
            yield e, exact if exact in names else names[0]


def _cldr(paths: DataPaths, source: Path | None) -> dict:
    try:
        files, _ = open_package(EMOJIBASE, paths, source, ("en/data.json",))
    except SourceNotFound as exc:
        log.warning("captions without CLDR tags (name and short names only): %s", exc)
        return {}
    data = files.read("en/data.json")
    if data is None:
        log.warning("captions without CLDR tags: %s has no en/data.json", files.spec)
        return {}
    return load_cldr(data)


@dataclass
class EmojiSource:
    """The opened style packages with emoji.json's entries and the CLDR table: what every emoji import reads."""

    styles: tuple[str, ...]
    packages: dict[str, tuple[PackageFiles, str]]  # style -> (its files, the licence it carries)
    entries: list[Entry]
    cldr: dict

    def files_of(self, style_name: str):
        """(entry, file name in the package) for each image of `style_name`, in emoji.json order."""
        return _style_files(STYLES[style_name], self.entries, self.packages[style_name][0], style_name)


def open_emoji(paths: DataPaths, styles=DEFAULT_STYLES, source: Path | None = None) -> EmojiSource:
    """Locate, licence-check and read the packages of `styles` (and emoji.json, CLDR tags) before anything lands."""
    styles = parse_styles(styles)
    # as before, a datasource folder with emoji.json passes without package.json; a lobehub one needs its name
    has_meta = lambda d: (d / "emoji.json").is_file()  # noqa: E731
    packages = {s: open_package(STYLES[s].package, paths, source, (STYLES[s].folder,),
                                accept_dir=has_meta if STYLES[s].datasource else None) for s in styles}
    meta_files = next((packages[s][0] for s in styles if STYLES[s].datasource), None)
    if meta_files is None:
        meta_files, _ = open_package(METADATA, paths, source, ("emoji.json",))
    try:
        entries = list(_entries(json.loads(meta_files.read("emoji.json") or b"null")))
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{meta_files.spec} ({meta_files.location}) has no readable emoji.json: {exc!r}") from None
    return EmojiSource(styles, packages, entries, _cldr(paths, source))


def write_plain(writer: LandingWriter, emoji: EmojiSource, *, limit: int | None = None, progress=None) -> None:
    """Every emoji of every style as `import_emoji` lands it, and each package's licence file beside them."""
    for style_name, (files, _pkg_license) in emoji.packages.items():
        style = STYLES[style_name]
        for i, (e, fname) in enumerate(emoji.files_of(style_name)):
            if limit is not None and i >= limit:
                break
            data = files.read(fname)
            if data is None:
                continue
            rel = f"{slug(e.category)}/{style_name}-{e.unified.lower()}"
            row = dict(label=e.category, caption=e.caption, subcategory=e.subcategory, style=style_name,
                       source_split=split_of_group(caption_group(e.caption)),
                       captions=join_captions(captions_for(e.caption, list(e.short_names), e.tones,
                                                           emoji.cldr.get(code_key(e.unified)))),
                       source_package=files.spec, license=style.license)
            try:
                writer.add_image(f"{rel}.png", to_emoji_image(data, style.ext, SIZE), **row)
            except BrokenImage as exc:
                writer.add_refused(f"{rel}{style.ext}", data, f"{files.spec} {fname}: {exc}", **row)
            if progress:
                progress(1)
        if (lic := files.license_file()) is not None:
            writer.add_file(f"LICENSE-{slug(files.package.name)}.txt", lic[1])


def dataset_defaults(emoji: EmojiSource, *, extra: dict | None = None) -> DatasetDefaults:
    return DatasetDefaults(
        resolution=SIZE, channels="RGB", license="; ".join(f"{s}: {STYLES[s].notice}" for s in emoji.styles),
        source="npm " + ", ".join(emoji.packages[s][0].spec for s in emoji.styles),
        extra={"styles": list(emoji.styles), "captions": "name, short names" + (
            ", CLDR label and tags (" + EMOJIBASE.spec + ")" if emoji.cldr else ""), **(extra or {})})


def import_emoji(paths: DataPaths, *, name: str = "emoji", styles=DEFAULT_STYLES, source: Path | None = None,
                 limit: int | None = None, overwrite: bool = False, progress=None) -> Path:
    """Import `styles` into data/raw/<name>/; `limit` keeps the first N emoji.json entries of each style."""
    emoji = open_emoji(paths, styles, source)
    writer = LandingWriter(paths, name, overwrite=overwrite)
    try:
        write_plain(writer, emoji, limit=limit, progress=progress)
        writer.add_file("LICENSE-images.md", license_notes(emoji).encode())
        return writer.commit(dataset_defaults(emoji))
    except BaseException:
        writer.abort()
        raise


def license_notes(emoji: EmojiSource, extra: tuple[str, ...] = ()) -> str:
    """LICENSE-images.md: each style's notice and package licence, attribution for CC-BY, then `extra` lines."""
    styles, packages = emoji.styles, emoji.packages
    lines = ["# Image licences", "", "Each image's package and licence are the `source_package` and `license` "
             "columns of labels.csv; the packages' own licence files are copied beside it (LICENSE-*.txt).", ""]
    lines += [f"- {s}: {STYLES[s].notice} (npm {packages[s][0].spec}, package licence {packages[s][1]})"
              for s in styles]
    if (cc := [s for s in styles if STYLES[s].license.startswith("CC-BY")]):
        lines += ["", "## Attribution", ""]
        lines += [f"- {STYLES[s].notice}." for s in cc]
    lines += list(extra)
    return "\n".join(lines) + "\n"

