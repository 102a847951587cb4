"""Emoji from the npm packages `emoji-datasource-<style>`: 64x64 RGBA composited on white.

label = category, subcategory kept, caption = the emoji's name in plain words
("smiling cat face with heart-shaped eyes"), skin-tone variants included.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

from PIL import Image

from imagegen_pipeline.datasets.idx import SourceNotFound
from imagegen_pipeline.datasets.landing import DatasetDefaults, LandingWriter, slug
from imagegen_pipeline.paths import DataPaths

NPM_VERSION = "16.0.0"
STYLES = ("google", "twitter")
IMAGE_LICENSES = {
    "google": "Noto Emoji images, Apache License 2.0",
    "twitter": "Twemoji images, CC-BY 4.0 (Twitter, Inc and other contributors)",
}
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}


class _PackageFiles:
    """Read files of an npm package from an installed folder or a `.tgz` tarball."""

    def __init__(self, location: Path, wanted_prefix: str):
        self.dir: Path | None = None
        self.files: dict[str, bytes] = {}
        if location.is_dir():
            self.dir = location
        else:
            with tarfile.open(location, "r:gz") as tar:
                for m in tar:
                    name = m.name.split("/", 1)[1] if "/" in m.name else m.name  # strip "package/"
                    if m.isfile() and (name.startswith(wanted_prefix) or "/" not in name):
                        self.files[name] = tar.extractfile(m).read()

    def read(self, name: str) -> bytes | None:
        if self.dir is not None:
            p = self.dir / name
            return p.read_bytes() if p.is_file() else None
        return self.files.get(name)


def _find_package(style: str, paths: DataPaths, source: Path | None) -> Path:
    pkg = f"emoji-datasource-{style}"
    candidates = []
    if source:
        candidates += [source / pkg, source / "node_modules" / pkg, source / f"{pkg}-{NPM_VERSION}.tgz", source]
    candidates += [paths.home / "node_modules" / pkg, paths.downloads / f"{pkg}-{NPM_VERSION}.tgz"]
    for c in candidates:
        if (c.is_dir() and (c / "emoji.json").is_file()) or (c.is_file() and c.name == f"{pkg}-{NPM_VERSION}.tgz"):
            return c
    if shutil.which("npm"):
        paths.downloads.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["npm", "pack", f"{pkg}@{NPM_VERSION}", "--pack-destination", str(paths.downloads)],
                              capture_output=True, text=True, timeout=600)
        tgz = paths.downloads / f"{pkg}-{NPM_VERSION}.tgz"
        if proc.returncode == 0 and tgz.is_file():
            return tgz
        reason = proc.stderr.strip().splitlines()[-1:] or ["npm pack failed"]
    else:
        reason = ["npm is not installed"]
    raise SourceNotFound(f"{pkg}@{NPM_VERSION} not found ({reason[0]}). Install it with "
                         f"`npm pack {pkg}@{NPM_VERSION}` into {paths.downloads}, or pass --source DIR")


def _caption(name: str) -> str:
    return name.lower().replace("_", " ").strip()


def _entries(meta: list[dict], style: str):
    """(image file, caption, category, subcategory, unified) for every image the style has."""
    for e in meta:
        base = _caption(e.get("name") or e.get("short_name") or e["unified"])
        if e.get(f"has_img_{style}"):
            yield e["image"], base, e["category"], e.get("subcategory", ""), e["unified"]
        for tone, var in (e.get("skin_variations") or {}).items():
            if var.get(f"has_img_{style}"):
                tones = ", ".join(SKIN_TONES.get(t, t) for t in tone.split("-"))
                yield var["image"], f"{base}, {tones}", e["category"], e.get("subcategory", ""), var["unified"]


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


def import_emoji(paths: DataPaths, *, name: str = "emoji", styles: tuple[str, ...] = STYLES, source: Path | None = None,
                 limit: int | None = None, overwrite: bool = False, progress=None) -> Path:
    unknown = set(styles) - set(STYLES)
    if unknown:
        raise ValueError(f"unknown emoji styles {sorted(unknown)}; choose from {STYLES}")
    packages = {s: _PackageFiles(_find_package(s, paths, source), f"img/{s}/64/") for s in styles}
    writer = LandingWriter(paths, name, overwrite=overwrite)
    try:
        for style, files in packages.items():
            meta = json.loads(files.read("emoji.json"))
            for i, (image, caption, category, subcategory, unified) in enumerate(_entries(meta, style)):
                if limit is not None and i >= limit:
                    break
                data = files.read(f"img/{style}/64/{image}")
                if data is None:
                    continue
                rgba = Image.open(io.BytesIO(data)).convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.getchannel("A"))
                writer.add_image(f"{slug(category)}/{style}-{unified.lower()}.png", rgb, label=category,
                                 caption=caption, subcategory=subcategory, style=style,
                                 source_split=split_of_group(caption_group(caption)))
                if progress:
                    progress(1)
            if (lic := files.read("LICENSE")) is not None:
                writer.add_file(f"LICENSE-emoji-datasource-{style}.txt", lic)
        notes = "; ".join(f"{s}: {IMAGE_LICENSES[s]}" for s in styles)
        writer.add_file("LICENSE-images.md", (
            "# Image licences\n\nImages come from the npm packages emoji-datasource-<style>@"
            f"{NPM_VERSION} (package code: MIT, see LICENSE-emoji-datasource-*.txt).\n\n"
            + "\n".join(f"- {s}: {IMAGE_LICENSES[s]}" for s in styles) + "\n").encode())
        return writer.commit(DatasetDefaults(resolution=64, channels="RGB",
                                             source=f"npm emoji-datasource-{{{','.join(styles)}}}@{NPM_VERSION}",
                                             license=notes))
    except BaseException:
        writer.abort()
        raise
