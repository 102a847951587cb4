"""Several captions per emoji: its name, its short names and the CLDR label and tags from `emojibase-data`.

A text-conditioned generator learns more from "grinning face", "grinning", "face", "grin" than from one unique
name per image. The importer keeps `caption` = the name (splits and R-precision are defined on it) and adds
`captions`: every distinct caption, joined with CAPTION_SEP, so it travels through labels.csv and the manifest's
`attributes` as one plain string; `split_captions` reads it back.
"""

from __future__ import annotations

import json

CAPTION_SEP = " | "
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}
DROPPED_CODEPOINTS = frozenset({"fe0f", "e007f"})  # variation selector 16, tag terminator: spelled either way


def code_key(codepoints: str) -> str:
    """One spelling of a code point sequence across emoji-datasource ("00A9-FE0F"), emojibase ("00A9") and the
    lobehub file names ("00a9-fe0f", "1f3f4-e0067_e0062_..."): lower case, no FE0F, no tag terminator."""
    parts = (p.lstrip("0") or "0" for p in codepoints.lower().replace("_", "-").split("-") if p)  # "0023" = "23"
    return "-".join(p for p in parts if p not in DROPPED_CODEPOINTS)


def plain(text: str) -> str:
    """A name or short name as words: "SMILING_FACE" -> "smiling face"; "|" cannot occur (it joins captions)."""
    return " ".join(text.lower().replace("_", " ").replace("|", "/").split())


def join_captions(captions: list[str]) -> str:
    return CAPTION_SEP.join(captions)


def split_captions(value: str | None) -> list[str]:
    """The `captions` column back as a list ("" or None -> [])."""
    return [c for c in (value or "").split(CAPTION_SEP) if c]


def distinct(captions) -> list[str]:
    seen, out = set(), []
    for c in captions:
        if c and c not in seen:
            seen.add(c)
            out.append(c)
    return out


def load_cldr(data_json: bytes) -> dict[str, tuple[str, list[str]]]:
    """emojibase-data `en/data.json` -> {code_key: (CLDR label, tags)}; skin variants have their own label and
    their base emoji's tags."""
    table: dict[str, tuple[str, list[str]]] = {}
    for e in json.loads(data_json):
        if not isinstance(e, dict) or not e.get("hexcode"):
            continue
        tags = [plain(t) for t in e.get("tags") or [] if isinstance(t, str)]
        table.setdefault(code_key(e["hexcode"]), (plain(str(e.get("label", ""))), tags))
        for skin in e.get("skins") or []:
            if isinstance(skin, dict) and skin.get("hexcode"):
                label = plain(str(skin.get("label", ""))).replace(": ", ", ")  # "thumbs up, light skin tone"
                table.setdefault(code_key(skin["hexcode"]), (label, tags))
    return table


def captions_for(caption: str, short_names: list[str], tones: str, cldr: tuple[str, list[str]] | None) -> list[str]:
    """All distinct captions of one image: its name (first, = `caption`), its short names (with the skin tones
    of the image, as the name has them), the CLDR label, then the CLDR tags (which name no tone)."""
    suffix = f", {tones}" if tones else ""
    out = [caption, *(plain(s) + suffix for s in short_names)]
    if cldr:
        out += [cldr[0], *cldr[1]]
    return distinct(out)
