"""One look for every page the pipeline writes (evaluation report, sample gallery, prompt gallery) and the review
page it serves: one stylesheet and one frame, so a reader moving between them meets the same tables, figures and
pixel-exact images."""

from __future__ import annotations

import html

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; padding: 0 16px; max-width: 1100px; color: #1d1d1b; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 6px 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
img { image-rendering: pixelated; border: 1px solid #ccc; max-width: 100%; }
figure { display: inline-block; margin: 8px; }
figcaption { font-size: 13px; color: #444; }
.figures { display: flex; flex-wrap: wrap; gap: 14px; }
.legend { font-size: 14px; color: #444; background: #f6f6f4; padding: 8px 12px; border-radius: 4px; }
.note { color: #a15c00; }
""".strip()


def page(title: str, body: str, *, css: str = "") -> str:
    """A complete HTML document: `body` is trusted markup (escape what goes into it), `title` is escaped here."""
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>\n{STYLE}\n{css}\n</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def key_value_table(rows: dict) -> str:
    """A two-column table of facts about the page (dataset, steps, device...), escaped."""
    esc = html.escape
    return "<table>" + "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in rows.items()) + \
        "</table>"
