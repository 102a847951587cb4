"""The layers, as imports (issue 15): defs/ (Dagster) -> stages/ -> tracking/ (MLflow) and the core (plain
PyTorch, files, data). The core never imports Dagster, MLflow or anything above it; the stages never import
Dagster; only tracking/ and serving/ import MLflow; no asset module imports another (they name each other by key
in defs/artifacts.py) and every asset is a thin call into its stage. Every import counts, also inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import imagegen_pipeline

PACKAGE = Path(imagegen_pipeline.__file__).parent
CORE = ["ml", "ingest", "datasets", "paths.py", "atomic.py", "locks.py", "uri.py"]
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
    """defs/ modules that define an asset or an asset check."""
    return {p.stem for p in (PACKAGE / "defs").glob("*.py")
            if any(f"@dg.{d}(" in p.read_text() for d in ("asset", "multi_asset", "asset_check"))}


def python_files(*parts: str) -> list[Path]:
    return [f for part in parts for f in ([PACKAGE / part] if part.endswith(".py") else (PACKAGE / part).rglob("*.py"))]


def offending(files: list[Path], tops: tuple[str, ...]) -> set[str]:
    return {f"{f.relative_to(PACKAGE)} imports {m}" for f in files for m in imports(f)
            if any(m == top or m.startswith(top + ".") for top in tops)}


def test_the_core_imports_nothing_above_it():
    files = python_files(*CORE)
    assert len(files) > 40
    wrong = offending(files, ABOVE_CORE + ("imagegen_pipeline.stages",))
    assert not wrong, sorted(wrong)


def test_the_stages_import_no_dagster_and_talk_to_mlflow_only_through_the_tracker():
    files = python_files("stages")
    assert len(files) >= 8
    wrong = offending(files, ("dagster", "mlflow", "imagegen_pipeline.defs", "imagegen_pipeline.definitions",
                              "imagegen_pipeline.cli", "imagegen_pipeline.ui"))
    assert not wrong, sorted(wrong)


def test_only_tracking_and_serving_import_mlflow():
    files = [f for f in PACKAGE.rglob("*.py") if f.relative_to(PACKAGE).parts[0] not in ("tracking", "serving")]
    wrong = offending(files, ("mlflow",))
    assert not wrong, sorted(wrong)


def test_every_asset_body_is_a_thin_call_into_its_stage():
    """Config in, one stage call, metadata out: at most 40 lines from `def` to the last line (issue 15.1)."""
    long = {}
    for f in (PACKAGE / "defs").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    "asset" in ast.unparse(d).split("(")[0] for d in node.decorator_list):
                if node.end_lineno - node.lineno + 1 > 40:
                    long[f"{f.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long, long


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
    files = [PACKAGE / "ui.py", PACKAGE / "net.py", PACKAGE / "dagster_home.py", PACKAGE / "team.py",
             *(PACKAGE / "review").glob("*.py")]
    wrong = {f"{f.relative_to(PACKAGE)} imports {m}" for f in files for m in imports(f)
             if any(m == top or m.startswith(top + ".") for top in above)
             or (f.parent.name == "review" and m.startswith("imagegen_pipeline.ui"))}
    assert not wrong, sorted(wrong)


def test_the_far_side_of_pipes_imports_dagster_pipes_only():
    """external/ runs in torchrun's processes or a Kubernetes pod: the Pipes protocol, the stages, not Dagster."""
    files = python_files("external")
    assert len(files) >= 2 and any("dagster_pipes" in imports(f) for f in files)
    wrong = offending(files, ("dagster", "imagegen_pipeline.defs", "imagegen_pipeline.definitions",
                              "imagegen_pipeline.cli"))
    assert not wrong, sorted(wrong)
