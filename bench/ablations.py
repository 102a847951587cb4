"""What the CNN features and transfer learning buy (issue 16.5), measured through the pipeline's own jobs: each
variant is a `train_job` with its config, judged by `evaluate_job` under the same protocol, and the table compares
the reports. Run on a data root where `make demo` (or `imagegen pipeline mnist`) has run:

    python bench/ablations.py --home /path/to/root feature-head            # MNIST: feature_head on vs the demo's
    python bench/ablations.py --home /path/to/root feature-head --dataset emoji --steps 1000  # imports emoji first
    python bench/ablations.py --home /path/to/root transfer --steps 2000    # 1% of Fashion-MNIST: scratch vs
                                                                           # init_from mnist, with/without FreezeD

Each variant registers a version (the champion moves only if it wins). Prints a Markdown table and writes it as
JSON to data/reports/<dataset>/ablation-<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

COLUMNS = ("fid", "fid_std", "kid", "precision", "recall", "conditional_accuracy", "cas_accuracy", "ms_ssim_ratio")


def run_variant(paths, dataset: str, label: str, dcgan: dict) -> dict:
    """Train one variant, evaluate it, and return its row (scores from report.json, wall times)."""
    from imagegen_pipeline.defs.launch import run_job

    trained = run_job("train_job", dataset, paths, {"ops": {"dcgan_checkpoint": {"config": dcgan}}})
    if not trained.success:
        raise SystemExit(f"{label}: training failed")
    [mat] = trained.asset_materializations_for_node("dcgan_checkpoint")
    train_s = mat.metadata["train_seconds"].value
    version = mat.metadata["registered_model"].value.split(" v")[1].split(" ")[0]
    evaluated = run_job("evaluate_job", dataset, paths)
    if not evaluated.success:
        raise SystemExit(f"{label}: evaluation failed")
    report = json.loads((paths.reports(dataset) / f"eval-v{version}" / "report.json").read_text())
    return {"variant": label, "version": version, "train_seconds": round(train_s, 1),
            **{k: report["headline"].get(k) for k in COLUMNS}, "protocol": report["protocol"]["key"]}


def reported_row(paths, dataset: str, label: str, version: str) -> dict:
    """A row from a version evaluated earlier (its training seconds from its generator summary are not kept per
    version, so they come from the MLflow run)."""
    from imagegen_pipeline.tracking.tracker import Tracker

    report = json.loads((paths.reports(dataset) / f"eval-v{version}" / "report.json").read_text())
    tracker = Tracker.for_paths(paths)
    mv = tracker.version(report["registered_model"], version)
    seconds = tracker.run_metric(mv.run_id, "train_seconds")
    return {"variant": f"{label} (v{version})", "version": version,
            "train_seconds": round(seconds, 1) if seconds else None,
            **{k: report["headline"].get(k) for k in COLUMNS}, "protocol": report["protocol"]["key"]}


def prepare(paths, dataset: str, source: str, **import_args) -> None:
    """Import, ingest and fine-tune the extractor for a dataset the root does not have yet (a no-op otherwise)."""
    from imagegen_pipeline.datasets import import_dataset
    from imagegen_pipeline.defs.launch import run_job
    from imagegen_pipeline.stages.artifacts import EXTRACTOR_FILE

    if (paths.models(dataset) / EXTRACTOR_FILE).is_file():
        return
    if not paths.raw(dataset).is_dir():
        import_dataset(source, paths, name=dataset, **import_args)
    for job in ("ingest_job", "features_job"):
        if not run_job(job, dataset, paths).success:
            raise SystemExit(f"{job} failed for {dataset}")


def table(rows: list[dict]) -> str:
    cols = ("variant", "version", *COLUMNS, "train_seconds")
    fmt = (lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                     ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, help="data root with MNIST ingested and trained (make demo)")
    p.add_argument("experiment", choices=["feature-head", "transfer"])
    p.add_argument("--steps", type=int, default=None, help="training steps of every variant (default: the asset's)")
    p.add_argument("--train-limit", type=int, default=600, help="transfer: Fashion-MNIST training images (1%%)")
    p.add_argument("--dataset", default="mnist", help="feature-head: the dataset (imported, ingested and its "
                                                      "extractor fine-tuned first when the root has none)")
    p.add_argument("--baseline-version", help="feature-head: take the 'off' row from this already evaluated version "
                                              "(e.g. the demo's, trained with the same defaults) instead of training")
    args = p.parse_args(argv)
    os.environ["IMAGEGEN_HOME"] = str(Path(args.home).resolve())
    os.environ.setdefault("DAGSTER_HOME", str(Path(args.home).resolve() / ".dagster"))
    from imagegen_pipeline.paths import DataPaths

    paths = DataPaths.from_home(args.home)
    steps = {"steps": args.steps} if args.steps else {}
    if args.experiment == "feature-head":
        dataset, rows = args.dataset, []
        prepare(paths, dataset, dataset)
        rows.append(run_variant(paths, dataset, "feature_head on", {**steps, "feature_head": True}))
        if args.baseline_version:
            rows.append(reported_row(paths, dataset, "feature_head off", args.baseline_version))
        else:
            rows.append(run_variant(paths, dataset, "feature_head off", {**steps}))
    else:
        dataset = "fashion-small"
        prepare(paths, dataset, "fashion-mnist", train_limit=args.train_limit)
        rows = [run_variant(paths, dataset, "from scratch", {**steps}),
                run_variant(paths, dataset, "init_from mnist", {**steps, "init_from": "mnist"}),
                run_variant(paths, dataset, "init_from mnist + FreezeD (2 D blocks)",
                            {**steps, "init_from": "mnist", "freeze_d_blocks": 2})]
    text = table(rows)
    print(text)
    out = paths.reports(dataset) / f"ablation-{args.experiment}.json"
    out.write_text(json.dumps({"experiment": args.experiment, "rows": rows, "markdown": text}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
