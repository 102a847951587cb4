"""Stage outputs as Dagster metadata: inline PNGs, links, paths and Markdown a person reads at a glance."""


import base64
import contextlib

import dagster as dg

from imagegen_pipeline.stages.outputs import FilePath, Link, Markdown, Png, StageFailed


def png_markdown(png: bytes, alt: str = "preview") -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def _value(v):
    if isinstance(v, Png):
        return png_markdown(v.data, v.caption)
    if isinstance(v, Link):
        return dg.MetadataValue.url(v.url)
    if isinstance(v, FilePath):
        return dg.MetadataValue.path(v.path)
    if isinstance(v, Markdown):
        return dg.MetadataValue.md(v.text)
    return v


def materialized(metadata: dict, *, data_version: str | None = None) -> dg.MaterializeResult:
    """A stage's report as the materialization's metadata (and, where the content has a key, its data version)."""
    return dg.MaterializeResult(metadata={k: _value(v) for k, v in metadata.items()},
                                data_version=dg.DataVersion(data_version) if data_version else None)


@contextlib.contextmanager
def stage_failures():
    """A stage's StageFailed becomes a dg.Failure: the UI shows its message, not a stack trace."""
    try:
        yield
    except StageFailed as exc:
        raise dg.Failure(str(exc)) from exc
