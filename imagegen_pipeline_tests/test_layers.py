"""The layers, as imports (issue 15): the core (plain PyTorch, files, data) never imports Dagster, MLflow or
anything above it, and no asset module imports another; what assets share lives in defs/artifacts.py and
defs/common.py. Every import counts, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import imagegen_pipeline

PACKAGE = Path(imagegen_pipeline.__file__).parent
CORE = ["ml", "ingest", "datasets", "paths.py", "atomic.py", "locks.py"]
ABOVE_CORE = ("dagster", "mlflow", "imagegen_pipeline.defs", "imagegen_pipeline.definitions", "imagegen_pipeline.cli",
              "imagegen_pipeline.ui", "imagegen_pipeline.tracking", "imagegen_pipeline.review",
              "imagegen_pipeline.serving")


def imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute names."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def asset_modules() -> set[str]:
    """defs/ modules that define an asset (`@dg.asset`/`@dg.multi_asset`)."""
    return {p.stem for p in (PACKAGE / "defs").glob("*.py")
            if "@dg.asset(" in p.read_text() or "@dg.multi_asset(" in p.read_text()}


def test_the_core_imports_nothing_above_it():
    files = [f for part in CORE for f in ([PACKAGE / part] if part.endswith(".py") else (PACKAGE / part).rglob("*.py"))]
    assert len(files) > 40
    wrong = {f"{f.relative_to(PACKAGE)} imports {m}" for f in files for m in imports(f)
             if any(m == top or m.startswith(top + ".") for top in ABOVE_CORE)}
    assert not wrong, sorted(wrong)


def test_no_asset_module_imports_another():
    assets = asset_modules()
    assert {"ingestion", "extractor", "captions", "dcgan", "evaluation", "gallery", "prompts"} <= assets
    wrong = {f"defs/{a}.py imports defs/{b}.py" for a in assets for b in assets - {a}
             if any(m == f"imagegen_pipeline.defs.{b}" or m.startswith(f"imagegen_pipeline.defs.{b}.")
                    for m in imports(PACKAGE / "defs" / f"{a}.py"))}
    assert not wrong, sorted(wrong)


def test_the_servers_import_nothing_above_them():
    """ui.py starts Dagster without importing it; the review page and the CLI's helpers sit below the CLI."""
    above = ("dagster", "imagegen_pipeline.defs", "imagegen_pipeline.definitions", "imagegen_pipeline.cli")
    files = [PACKAGE / "ui.py", PACKAGE / "net.py", PACKAGE / "dagster_home.py", *(PACKAGE / "review").glob("*.py")]
    wrong = {f"{f.relative_to(PACKAGE)} imports {m}" for f in files for m in imports(f)
             if any(m == top or m.startswith(top + ".") for top in above)
             or (f.parent.name == "review" and m.startswith("imagegen_pipeline.ui"))}
    assert not wrong, sorted(wrong)
