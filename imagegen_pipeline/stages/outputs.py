"""How a stage reports what it made, without Dagster: plain values plus four small wrappers that the asset layer
turns into the matching Dagster metadata (an inline picture, a link, a file path, a Markdown block)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence


class StageFailed(RuntimeError):
    """A stage cannot run on this input; the message says what to do (shown as the asset's failure)."""


@dataclass(frozen=True)
class Png:
    data: bytes
    caption: str = "preview"


@dataclass(frozen=True)
class Link:
    url: str


@dataclass(frozen=True)
class FilePath:
    path: str


@dataclass(frozen=True)
class Markdown:
    text: str


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def histogram(values: Iterable[object], *, title: str = "class", top: int = 50) -> Markdown:
    """Counts per value as a Markdown table with bars, most common first."""
    counts = Counter("(none)" if v is None else str(v) for v in values)
    total = sum(counts.values()) or 1
    rows = [(k, n, f"{100 * n / total:.1f}%", "█" * max(1, round(30 * n / max(counts.values())))) for k, n in
            counts.most_common(top)]
    more = f"\n\n…and {len(counts) - top} more" if len(counts) > top else ""
    return Markdown(markdown_table([title, "images", "share", ""], rows) + more)
