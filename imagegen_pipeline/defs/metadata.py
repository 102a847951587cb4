"""Stage outputs as Dagster metadata: inline PNGs, links, paths and Markdown a person reads at a glance."""


import contextlib

import dagster as dg

from imagegen_pipeline.stages.outputs import Png, StageFailed, typed


def png_markdown(png: bytes, alt: str = "preview") -> dg.MetadataValue:
    return dg.MetadataValue.md(Png(png, alt).markdown)


KINDS = {"md": dg.MetadataValue.md, "url": dg.MetadataValue.url, "path": dg.MetadataValue.path}


def _value(v):
    kind, raw = typed(v)
    return KINDS[kind](raw) if kind else raw


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
