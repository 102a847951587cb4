"""Small builders for Dagster metadata: inline PNGs and Markdown tables a person reads at a glance."""


import base64
from collections import Counter
from typing import Iterable, Sequence

import dagster as dg


def png_markdown(png: bytes, alt: str = "preview") -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def histogram_markdown(values: Iterable[object], *, title: str = "class", top: int = 50) -> dg.MetadataValue:
    counts = Counter("(none)" if v is None else str(v) for v in values)
    total = sum(counts.values()) or 1
    rows = [(k, n, f"{100 * n / total:.1f}%", "█" * max(1, round(30 * n / max(counts.values())))) for k, n in
            counts.most_common(top)]
    more = f"\n\n…and {len(counts) - top} more" if len(counts) > top else ""
    return dg.MetadataValue.md(markdown_table([title, "images", "share", ""], rows) + more)
