"""How a stage reports what it made, without Dagster: plain values plus four small wrappers that the asset layer
turns into the matching Dagster metadata (an inline picture, a link, a file path, a Markdown block)."""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence


class StageFailed(RuntimeError):
    """A stage cannot run on this input; the message says what to do (shown as the asset's failure)."""


@dataclass(frozen=True)
class Png:
    data: bytes
    caption: str = "preview"

    @property
    def markdown(self) -> str:
        """An inline picture in Markdown (Dagster's UI shows it in the materialization's metadata)."""
        return f"![{self.caption}](data:image/png;base64,{base64.b64encode(self.data).decode()})"


@dataclass(frozen=True)
class Link:
    url: str


@dataclass(frozen=True)
class FilePath:
    path: str


@dataclass(frozen=True)
class Markdown:
    text: str


def typed(value) -> tuple[str, object]:
    """A metadata value as (kind, raw value): kind is 'md', 'url' or 'path' for the wrappers and '' for a plain
    number or string. In-process assets and the Dagster Pipes side of a training process both read this."""
    if isinstance(value, Png):
        return "md", value.markdown
    if isinstance(value, Markdown):
        return "md", value.text
    if isinstance(value, Link):
        return "url", value.url
    if isinstance(value, FilePath):
        return "path", value.path
    return "", value


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
