"""Held-out composite prompts: two concepts that the emoji data shows only apart (a face, an accessory), fixed
here so every text model is measured on the same questions. Each prompt lists its concepts as the words a
nearest training caption must contain to count as showing that concept."""

from __future__ import annotations

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
