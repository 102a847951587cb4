"""Held-out composite prompts: two concepts that the emoji data shows only apart (a face, an accessory), fixed
here so every text model is measured on the same questions. Each prompt lists its concepts as the words a
nearest training caption must contain to count as showing that concept."""

from __future__ import annotations

import re
from collections.abc import Sequence

# (prompt, (concept words of the subject), (concept words of the accessory))
COMPOSITE_PROMPTS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("a cat with a hat", ("cat",), ("hat",)),
    ("a dog with a crown", ("dog",), ("crown",)),
    ("a frog with sunglasses", ("frog",), ("sunglasses",)),
    ("a robot with a party hat", ("robot",), ("party", "hat")),
    ("a monkey with glasses", ("monkey",), ("glasses",)),
    ("a pig with a top hat", ("pig",), ("top hat", "hat")),
    ("a bear with a crown", ("bear",), ("crown",)),
    ("a tiger with sunglasses", ("tiger",), ("sunglasses",)),
    ("a ghost with a cowboy hat", ("ghost",), ("cowboy",)),
    ("a mouse with a graduation cap", ("mouse",), ("graduation", "cap")),
    ("an alien with a crown", ("alien",), ("crown",)),
    ("a panda with a bow", ("panda",), ("bow", "ribbon")),
    ("a fox with a scarf", ("fox",), ("scarf",)),
    ("a rabbit with a top hat", ("rabbit",), ("top hat", "hat")),
    ("a cow with a crown", ("cow",), ("crown",)),
    ("a lion with sunglasses", ("lion",), ("sunglasses",)),
)


def prompts() -> list[str]:
    return [p for p, _, _ in COMPOSITE_PROMPTS]


def mentions(caption: str, words: Sequence[str]) -> bool:
    """Whether a caption names a concept: any of its words as whole words, a plural allowed ("hat" in "top hat"
    and "hats", not in "that" or "chat")."""
    text = caption.lower()
    return any(re.search(rf"\b{re.escape(w.lower())}(e?s)?\b", text) for w in words)


def concept_shares(neighbour_captions: Sequence[Sequence[str]], subject: Sequence[str],
                   accessory: Sequence[str]) -> dict[str, float]:
    """Picks, each described by its nearest training images' captions: the share whose captions name the subject,
    the accessory, and both (one picture near a cat and near a hat: the composite the data shows only apart)."""
    if not neighbour_captions:
        raise ValueError("no picks to count concepts in")
    has_subject = [any(mentions(c, subject) for c in caps) for caps in neighbour_captions]
    has_accessory = [any(mentions(c, accessory) for c in caps) for caps in neighbour_captions]
    n = len(neighbour_captions)
    return {"subject_share": sum(has_subject) / n, "accessory_share": sum(has_accessory) / n,
            "both_share": sum(s and a for s, a in zip(has_subject, has_accessory)) / n}
