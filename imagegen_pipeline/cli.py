"""`imagegen`: import datasets into the landing zone, ingest them through Dagster, start the UI."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from imagegen_pipeline.paths import DataPaths, InvalidDatasetName, validate_dataset_name
from imagegen_pipeline.ml.protocols import METRIC_SETS, PROTOCOLS
from imagegen_pipeline.presets import PRESETS, preset_run_config


def _progress(desc: str):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="img", disable=not sys.stderr.isatty())
    return bar, bar.update


def cmd_import(args: argparse.Namespace, paths: DataPaths) -> int:
    from imagegen_pipeline.datasets import import_dataset, import_folder

    if args.compose and args.kind != "emoji":
        raise SystemExit("--compose is for `imagegen datasets import emoji`")
    default = "emoji-compose" if args.compose else args.kind
    name = args.name or (Path(args.path).resolve().name.lower() if args.kind == "folder" and args.path else default)
    if args.exist_ok and paths.raw(name).is_dir():
        print(f"{name} already imported at {paths.raw(name)}; keeping it")
        return 0
    bar, tick = _progress(f"importing {args.kind}")
    try:
        if args.kind == "folder":
            if not args.path:
                raise SystemExit("usage: imagegen datasets import folder PATH --name NAME")
            out = import_folder(paths, Path(args.path), name=name, resolution=args.resolution or 64,
                                overwrite=args.overwrite, progress=tick)
        elif args.compose:
            from imagegen_pipeline.datasets.emoji_compose import import_composed

            out = import_composed(paths, name=validate_dataset_name(name),
                                  source=Path(args.source) if args.source else None, copies=args.compose_copies,
                                  limit=args.limit, overwrite=args.overwrite, progress=tick,
                                  **({"styles": args.styles} if args.styles else {}))
        else:
            out = import_dataset(args.kind, paths, name=name, source=Path(args.source) if args.source else None,
                                 limit=args.limit, train_limit=args.train_limit, overwrite=args.overwrite,
                                 progress=tick, styles=args.styles)
    finally:
        bar.close()
    n = sum(1 for _ in out.rglob("*") if _.is_file())
    print(f"imported {args.kind} -> {out} ({n} files)")
    return 0


def run_job(job: str, dataset: str, paths: DataPaths, run_config: dict | None = None, *, tags: dict | None = None):
    """Launch a job for a dataset in this process (defs/launch.py) and print its checks and outcome."""
    from imagegen_pipeline.defs.launch import run_job as launch

    result = launch(job, dataset, paths, run_config, tags=tags, log=print)
    for check in result.get_asset_check_evaluations():
        print(check_line(check))
    print(f"dagster run {result.run_id} ({job}) {'succeeded' if result.success else 'FAILED'} "
          f"(DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    return result


def check_line(check) -> str:
    """"check NAME: passed", or FAILED with why: its description, else its metadata (what the UI shows)."""
    if check.passed:
        return f"check {check.check_name}: passed"
    why = check.description or ", ".join(f"{k}={v.value}" for k, v in check.metadata.items())
    return f"check {check.check_name}: FAILED" + (f": {why}" if why else "")


def _materialized(result, asset: str) -> dict:
    mats = result.asset_materializations_for_node(asset) if result.success else []
    return {k: v.value for k, v in mats[-1].metadata.items()} if mats else {}


def cmd_ingest(args: argparse.Namespace, paths: DataPaths) -> int:
    from imagegen_pipeline.ingest.manifest import read_manifest

    dataset = validate_dataset_name(args.dataset)
    if not paths.raw(dataset).is_dir():
        print(f"error: no landing folder {paths.raw(dataset)}; run `imagegen datasets import ...` or copy images "
              "there first", file=sys.stderr)
        return 2
    shard_cfg = {k: v for k, v in (("resolution", args.resolution), ("channels", args.channels)) if v is not None}
    result = run_job("ingest_job", dataset, paths, {"ops": {"image_shards": {"config": shard_cfg}}} if shard_cfg else None)
    manifest = read_manifest(paths.manifest(dataset))
    if manifest is not None:
        counts = manifest["status"].value_counts().to_dict()
        print(f"{dataset}: {counts.get('ok', 0)} accepted, {counts.get('duplicate', 0)} duplicates, "
              f"{counts.get('quarantined', 0)} quarantined")
        for reason, n in manifest.loc[manifest["status"] == "quarantined", "reason"].value_counts().head(10).items():
            print(f"  quarantined x{n}: {reason}")
    desc_file = paths.description(dataset)
    if result.success and desc_file.is_file():
        desc = json.loads(desc_file.read_text())
        files = sum(len(s["files"]) for s in desc["splits"].values())
        print(f"shards: {files} files, {desc['num_rows']} images of shape {tuple(desc['shape'])} "
              f"(train {desc['splits']['train']['rows']}, val {desc['splits']['val']['rows']}) in {paths.shards(dataset)}")
    print(f"manifest: {paths.manifest(dataset)}\nsee it in the Dagster UI: `make ui`, then http://127.0.0.1:3000 "
          "(Assets > raw_images / image_shards)")
    return 0 if result.success else 1


def _op_config(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """CLI flags that were given, as asset config (flag --max-train-images -> max_train_images)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _load_config_file(path: str | None) -> dict:
    if not path:
        return {}
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


# flags of `imagegen features` and `imagegen train`: fields of the asset Configs (test_config_defaults checks), so
# an unset flag keeps the Config's default, which is the core dataclass's
FEATURE_FLAGS = ("device", "input_size", "head_epochs", "finetune_epochs", "max_train_images", "max_val_images",
                 "batch_size")
TRAIN_FLAGS = ("device", "steps", "batch_size", "ngf", "ndf", "checkpoint_every", "sample_every", "conditioning",
               "init_from", "family")


def _run_config(args: argparse.Namespace, flags_by_op: dict[str, tuple[str, ...]]) -> dict:
    """The --preset's ops, then the --config file's `ops`, then the CLI flags that were given, op by op."""
    ops = preset_run_config(args.preset)["ops"] if getattr(args, "preset", None) else {}
    for op, section in _load_config_file(args.config).get("ops", {}).items():
        ops.setdefault(op, {}).setdefault("config", {}).update((section or {}).get("config", {}))
    for op, names in flags_by_op.items():
        ops.setdefault(op, {}).setdefault("config", {}).update(_op_config(args, names))
    return {"ops": ops}


def cmd_features(args: argparse.Namespace, paths: DataPaths) -> int:
    dataset = validate_dataset_name(args.dataset)
    run_config = _run_config(args, {"feature_extractor": FEATURE_FLAGS, "image_embeddings": ("device",)})
    extractor_cfg = run_config["ops"]["feature_extractor"]["config"]
    for cap in ("max_train_images", "max_val_images"):
        if extractor_cfg.get(cap) == 0:  # --max-train-images 0: every image
            extractor_cfg[cap] = None
    result = run_job("features_job", dataset, paths, run_config)
    meta = _materialized(result, "feature_extractor")
    if meta:
        print(f"extractor: val accuracy {meta['val_accuracy']}, from scratch "
              f"{meta['baseline_val_accuracy (from scratch, same steps)']}; {meta['registered_model']}; "
              f"MLflow run {meta['mlflow_run']}")
    emb = _materialized(result, "image_embeddings")
    if emb:
        print(f"embeddings: {emb['dagster/row_count']} x {emb['dim']} at {emb['images_per_second']} img/s -> {emb['path']}")
    return 0 if result.success else 1


def cmd_train(args: argparse.Namespace, paths: DataPaths) -> int:
    dataset = validate_dataset_name(args.dataset)
    result = run_job("train_job", dataset, paths, _run_config(args, {"dcgan_checkpoint": TRAIN_FLAGS}))
    meta = _materialized(result, "dcgan_checkpoint")
    if meta:
        print(f"dcgan: {meta['steps']} steps (resumed from {meta['resumed_from_step']}), "
              f"{meta['images_per_second']} img/s on {meta['device']}; {meta['registered_model']}; "
              f"checkpoint {meta['checkpoint']}")
    return 0 if result.success else 1


def cmd_pipeline(args: argparse.Namespace, paths: DataPaths) -> int:
    """The whole chain for one dataset (pipeline_job), then where to look."""
    dataset = validate_dataset_name(args.dataset)
    if not paths.raw(dataset).is_dir():
        print(f"error: no landing folder {paths.raw(dataset)}; run `imagegen datasets import ...` first", file=sys.stderr)
        return 2
    run_config = _run_config(args, {})
    text = run_config["ops"].get("dcgan_checkpoint", {}).get("config", {}).get("conditioning") == "text"
    if text and not paths.description(dataset).is_file():
        print(f"error: a text-conditioned chain (text_job) starts from shards; run `imagegen ingest {dataset}` "
              "first", file=sys.stderr)
        return 2
    result = run_job("text_job" if text else "pipeline_job", dataset, paths,
                     run_config if run_config["ops"] else None)
    for asset, keys in (("feature_extractor", ("val_accuracy", "registered_model")),
                        ("dcgan_checkpoint", ("steps", "images_per_second", "registered_model")),
                        ("evaluation_report", ("fid", "kid", "precision", "recall", "conditional_accuracy",
                                               "diversity_ratio", "real_floor_fid", "quality_gate", "report_html")),
                        ("sample_gallery", ("index",))):
        meta = _materialized(result, asset)
        if meta:
            print(f"{asset}: " + ", ".join(f"{k}={meta[k]}" for k in keys if k in meta))
    promo = paths.promotion(dataset)
    if promo.is_file():
        print(f"promotion: {json.loads(promo.read_text())['reason']}")
    from imagegen_pipeline.defs.instance import get_instance

    print("\n" + "\n".join(pipeline_summary(result, get_instance(paths), dataset)))
    return 0 if result.success else 1


def stage_seconds(instance, run_id: str) -> list[tuple[str, float | None, str]]:
    """(step, seconds, status) of each step of a finished run, in the order they started, from the instance's
    event log: what `make demo` spent where."""
    stats = sorted(instance.get_run_step_stats(run_id), key=lambda s: s.start_time or 0)
    return [(s.step_key, s.end_time - s.start_time if s.start_time and s.end_time else None,
             s.status.value if s.status else "?") for s in stats]


def pipeline_summary(result, instance, dataset: str) -> list[str]:
    """The last lines of `imagegen pipeline` (and so of `make demo`): time per stage, FID against its real floor,
    where to click. `instance`: the Dagster instance the run was recorded in."""
    steps = stage_seconds(instance, result.run_id)
    keys = [step for step, _, _ in steps]
    stages = [s for s in steps if not any(s[0].startswith(k + "_") for k in keys)]  # checks: `<asset>_<check>`
    times = ", ".join(f"{step} {'?' if secs is None else f'{secs:.0f} s'}" +
                      ("" if status == "SUCCESS" else f" ({status})") for step, secs, status in stages)
    total = sum(secs or 0 for _, secs, _ in steps)  # checks included
    lines = [f"summary of {dataset} (dagster run {result.run_id}, {'succeeded' if result.success else 'FAILED'})",
             f"  time per stage ({total / 60:.1f} min in all): {times}"]
    report = _materialized(result, "evaluation_report")
    if report.get("fid") is not None and report.get("real_floor_fid"):
        fid, floor = float(report["fid"]), float(report["real_floor_fid"])
        lines.append(f"  FID {fid:.1f} against its real floor {floor:.1f} ({fid / floor:.1f}x the floor); "
                     f"quality gate: {report.get('quality_gate', '?')}")
    else:
        lines.append("  no FID: evaluation_report did not finish in this run")
    gallery = _materialized(result, "sample_gallery").get("index")
    lines += [f"  report: {report['report_html']}" if report.get("report_html") else None,
              f"  gallery: {gallery}" if gallery else None,
              "  click: `make ui`, then Dagster http://127.0.0.1:3000 (Assets, partition "
              f"{dataset}) and MLflow http://127.0.0.1:5000 (Models > imagegen-generator-{dataset})"]
    return [line for line in lines if line]


def cmd_evaluate(args: argparse.Namespace, paths: DataPaths) -> int:
    """Judge the latest generator under a named protocol (evaluate_job), then print the figures with it."""
    dataset = validate_dataset_name(args.dataset)
    run_config = _run_config(args, {"evaluation_report": ("device", "protocol", "num_samples", "num_real",
                                                             "metric_set")})
    result = run_job("evaluate_job", dataset, paths, run_config)
    meta = _materialized(result, "evaluation_report")
    if meta:
        print(f"{meta['generator']} under protocol {meta['protocol']}")
        print(", ".join(f"{k}={meta[k]}" for k in ("fid", "kid", "precision", "recall", "conditional_accuracy",
                                                   "diversity_ratio", "real_floor_fid", "quality_gate") if k in meta))
        print(f"report: {meta['report_html']}")
    promo = paths.promotion(dataset)
    if result.success and promo.is_file():
        print(f"promotion: {json.loads(promo.read_text())['reason']}")
    return 0 if result.success else 1


def cmd_presets(args: argparse.Namespace, paths: DataPaths) -> int:
    if not args.name:
        for name, ops in PRESETS.items():
            print(f"{name}: " + (", ".join(f"{op}({len(cfg)} fields)" for op, cfg in ops.items()) or
                                 "the assets' own defaults"))
        return 0
    import yaml

    print(yaml.safe_dump(preset_run_config(args.name), sort_keys=False), end="")
    return 0


def cmd_ui(args: argparse.Namespace, paths: DataPaths) -> int:
    from imagegen_pipeline.ui import serve

    return serve(paths, host=args.host, port=args.port, mlflow_port=args.mlflow_port)


def cmd_team(args: argparse.Namespace, paths: DataPaths) -> int:
    from imagegen_pipeline import team

    root = Path(args.root) if args.root else None
    if args.action == "down":
        team.down(paths, root=root)
        return 0
    try:
        team.up(paths, root=root, host=args.host, pg_port=args.pg_port, mlflow_port=args.mlflow_port,
                dagster_port=args.dagster_port, gpus=args.gpus)
    except team.TeamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_generate(args: argparse.Namespace, paths: DataPaths) -> int:
    """Best-of-K images for a prompt (or a class label) from the registered generator, re-ranked by how well
    their nearest training images' captions match the prompt."""
    import numpy as np
    import pandas as pd

    from imagegen_pipeline.ml.grids import image_grid, png_bytes
    from imagegen_pipeline.ml.prompt_score import PromptScorer, keep_best
    from imagegen_pipeline.stages.artifacts import EXTRACTOR_FILE
    from imagegen_pipeline.tracking.registry import ModelNotFound, ModelUnreadable, load_registered, registered_name
    from imagegen_pipeline.tracking.store import tracking_uri, use_store

    dataset = validate_dataset_name(args.dataset)
    if args.n < 1 or args.candidates < 1:
        raise ValueError("--n and --candidates must be at least 1")
    use_store(tracking_uri(paths))
    try:
        loaded = load_registered(registered_name("generator", dataset), args.model_uri)
    except ModelNotFound as exc:
        print(f"error: cannot load a generator: {exc}\n(train one with `imagegen train {dataset}`)", file=sys.stderr)
        return 2
    except ModelUnreadable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model, uri = loaded.model, loaded.description
    meta = model.metadata.metadata or {}
    conditioning = meta.get("conditioning", "?")
    params = {"format": "array"}
    if args.guidance is not None:
        if meta.get("family") != "diffusion":
            raise ValueError(f"--guidance is the diffusion sampler's classifier-free guidance weight; {uri} is a "
                             f"{meta.get('family', 'dcgan')} model")
        params["guidance"] = args.guidance
    print(f"generator {uri} (conditioning: {conditioning}"
          + (f", guidance {args.guidance:g}" if args.guidance is not None else "") + ")")
    if conditioning == "text" and not args.prompt:
        raise ValueError(f"{uri} is conditioned on text: give a prompt, e.g. imagegen generate \"a cat with a hat\" "
                         f"--dataset {dataset}")
    if conditioning == "class" and not args.label:
        raise ValueError(f"{uri} is conditioned on classes: give --label (a class name); a prompt only re-ranks")
    text = args.prompt or args.label
    scorer, k = None, args.candidates
    if text:
        try:
            scorer = PromptScorer.load(extractor_file=paths.models(dataset) / EXTRACTOR_FILE,
                                       embeddings_dir=paths.embeddings(dataset))
        except (FileNotFoundError, ValueError) as exc:
            if args.prompt:  # a --label alone asked for no re-ranking: nothing to explain
                print(f"note: not scored ({exc}); materialize feature_extractor, image_embeddings and "
                      f"caption_embeddings for {dataset} to re-rank by prompt", file=sys.stderr)
            k = 1
    total = args.n * k
    request = pd.DataFrame([{"seed": args.seed + s, "count": min(256, total - s),
                             **({"prompt": args.prompt} if args.prompt else {}),
                             **({"label": args.label} if args.label else {})} for s in range(0, total, 256)])
    images = model.predict(request, params=params)  # uint8 (n * k, H, W, C), seed s -> row s - seed
    if scorer is not None:
        keep, scores, nearest = keep_best(scorer, images, text, k=k)
        print(f"best of {k} per image, scored against {text!r} (mean cosine of the 5 nearest training images' "
              "captions):")
        for rank, i in enumerate(keep):
            print(f"{rank:3d}  seed {args.seed + int(i)}  score {scores[rank]:.4f}  nearest: {nearest[rank]}")
    else:
        keep = np.arange(len(images))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chosen = images[keep]
    # what made each picture, in its PNG text chunks (`identify -verbose`, PIL's Image.text)
    made = {"model": uri, **({"prompt": args.prompt} if args.prompt else {}),
            **({"label": args.label} if args.label else {}),
            **({"guidance": f"{args.guidance:g}"} if args.guidance is not None else {})}
    if args.separate:
        files = [out.with_name(f"{out.stem}-{r:02d}{out.suffix or '.png'}") for r in range(len(chosen))]
        for f, im, i in zip(files, chosen, keep):
            f.write_bytes(png_bytes(image_grid(im[None], pad=0), text={**made, "seed": str(args.seed + int(i))}))
        print(f"wrote {len(files)} images: {files[0]} ... {files[-1]}")
    else:
        out.write_bytes(png_bytes(image_grid(chosen, tile=max(64, chosen.shape[1])),
                                  text={**made, "seeds": " ".join(str(args.seed + int(i)) for i in keep)}))
        print(f"wrote {out} ({len(chosen)} images)")
    return 0


def cmd_serve(args: argparse.Namespace, paths: DataPaths) -> int:
    """Become `mlflow models serve` for models:/imagegen-generator-<dataset>@<alias>, over the project's store.

    exec, not a child: Ctrl-C and SIGTERM reach MLflow directly, and nothing is left behind when it stops."""
    from imagegen_pipeline.tracking.registry import ModelNotFound, registered_name, version_for_alias
    from imagegen_pipeline.tracking.store import tracking_uri as store_uri
    from imagegen_pipeline.net import url_for, warn_if_exposed

    warn_if_exposed(args.host, "the model server")
    dataset = validate_dataset_name(args.dataset)
    name, tracking_uri = registered_name("generator", dataset), store_uri(paths)
    try:
        version = version_for_alias(tracking_uri, name, args.alias)
    except ModelNotFound as exc:
        print(f"error: {exc}\n"
              f"(`imagegen train {dataset}` registers @candidate; evaluation promotes @champion; "
              "try --alias candidate)", file=sys.stderr)
        return 2
    bin_dir = str(Path(sys.executable).parent)  # MLflow starts `uvicorn` through $PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri,
           "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
    argv = [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", f"models:/{name}@{args.alias}",
            "--env-manager", "local", "-h", args.host, "-p", str(args.port)]
    base = url_for(args.host, args.port)
    print(f"serving {name} v{version} (@{args.alias}) on {base}/invocations "
          f"(store {tracking_uri})\ntry: curl -s {base}/invocations -H 'Content-Type: "
          "application/json' -d '{\"dataframe_split\": {\"columns\": [\"label\", \"seed\", \"count\"], "
          "\"data\": [[\"3\", 7, 2]]}, \"params\": {\"format\": \"png\"}}'", flush=True)
    os.execve(argv[0], argv, env)
    return 1  # not reached


def cmd_review(args: argparse.Namespace, paths: DataPaths) -> int:
    from imagegen_pipeline.review.server import serve_review

    return serve_review(paths, validate_dataset_name(args.dataset), host=args.host, port=args.port, n=args.n,
                        questions=args.questions, model_uri=args.model_uri, allowed_hosts=tuple(args.allow_host))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imagegen", description=__doc__)
    p.add_argument("--home", help="data root (default: $IMAGEGEN_HOME, else the repo root)")
    sub = p.add_subparsers(dest="command", required=True)
    ds = sub.add_parser("datasets", help="datasets in the landing zone").add_subparsers(dest="action", required=True)
    imp = ds.add_parser("import", help="import mnist, fashion-mnist, emoji, or `folder PATH`")
    imp.add_argument("kind", choices=["mnist", "fashion-mnist", "emoji", "folder"])
    imp.add_argument("path", nargs="?", help="with `folder`: the ImageFolder to copy (sub-folder = class)")
    imp.add_argument("--name", help="dataset name (default: the kind, or the folder's name)")
    imp.add_argument("--source", help="folder (or npm tarball folder) holding the source files, for offline use")
    imp.add_argument("--limit", type=int, help="import only the first N images (small slices for tests)")
    imp.add_argument("--train-limit", type=int, help="mnist/fashion-mnist: only the first N training images, the "
                                                     "whole official test split (small labelled sets)")
    imp.add_argument("--styles", help="emoji: comma-separated styles, from google, twitter, fluent-flat, "
                                      "fluent-3d (default google,twitter)")
    imp.add_argument("--compose", action="store_true", help="emoji: also compose faces with hats, glasses and "
                     "ties (\"a cat with a top hat\"), held-out pairs in val only (default name emoji-compose)")
    imp.add_argument("--compose-copies", type=int, default=4, help="with --compose: jittered pictures per pair (4)")
    imp.add_argument("--resolution", type=int, help="with `folder`: default shard resolution (64)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    imp.add_argument("--exist-ok", action="store_true", help="do nothing if the dataset is already imported")
    imp.set_defaults(func=cmd_import)
    ds.add_parser("list", help="datasets in the landing zone").set_defaults(
        func=lambda a, paths: print("\n".join(sorted(d.name for d in paths.raw_root.iterdir()
                                                     if d.is_dir() and not d.name.startswith(".")))
                                    if paths.raw_root.is_dir() else "") or 0)
    ing = sub.add_parser("ingest", help="materialize raw_images and image_shards for a dataset through Dagster")
    ing.add_argument("dataset")
    ing.add_argument("--resolution", type=int, help="shard resolution (default: the dataset's)")
    ing.add_argument("--channels", choices=["L", "RGB"], help="shard channels (default: the dataset's)")
    ing.set_defaults(func=cmd_ingest)
    pipe = sub.add_parser("pipeline", help="the whole chain for a dataset: ingest, extractor, DCGAN, evaluation, gallery")
    pipe.add_argument("dataset")
    pipe.add_argument("--config", help="run config file (YAML/JSON with an `ops:` section), over the preset")
    pipe.add_argument("--preset", choices=sorted(PRESETS), help="named sizes for every stage (default: cpu-demo, "
                                                                "the assets' defaults); see `imagegen presets`")
    pipe.set_defaults(func=cmd_pipeline)
    feat = sub.add_parser("features", help="fine-tune the extractor and embed every image (features_job)")
    feat.add_argument("dataset")
    feat.add_argument("--config", help="run config file (YAML/JSON with an `ops:` section), flags override it")
    feat.add_argument("--device", choices=["auto", "cpu", "cuda"])
    feat.add_argument("--preset", choices=sorted(PRESETS), help="named sizes (see `imagegen presets`)")
    for name in FEATURE_FLAGS[1:]:  # the int fields
        feat.add_argument(f"--{name.replace('_', '-')}", type=int, help="0 = all images" if name.startswith("max_")
                          else None)
    feat.set_defaults(func=cmd_features)
    tr = sub.add_parser("train", help="train or resume the dataset's DCGAN and register it (train_job)")
    tr.add_argument("dataset")
    tr.add_argument("--config", help="run config file (YAML/JSON with an `ops:` section), flags override it")
    tr.add_argument("--device", choices=["auto", "cpu", "cuda"])
    tr.add_argument("--preset", choices=sorted(PRESETS), help="named sizes (see `imagegen presets`)")
    tr.add_argument("--conditioning", choices=["auto", "none", "class", "text"])
    tr.add_argument("--init-from", help="start from this dataset's trained DCGAN")
    tr.add_argument("--family", choices=["dcgan", "vae", "diffusion"], help="model family (default dcgan); all "
                                                                            "compete for champion under one gate "
                                                                            "(diffusion: GPU-sized unless a preset such as "
                                                                            "cpu-emoji-text sizes it)")
    for name in TRAIN_FLAGS[1:-3]:  # the int fields
        tr.add_argument(f"--{name.replace('_', '-')}", type=int)
    tr.set_defaults(func=cmd_train)
    ev = sub.add_parser("evaluate", help="evaluate the latest generator under a named protocol, then promote it "
                                         "if it is better (evaluate_job)")
    ev.add_argument("dataset")
    ev.add_argument("--protocol", choices=sorted(PROTOCOLS), help="quick: 1,000 samples vs 1,000 val images "
                    "(default); paper: 10,000 vs 10,000 (MNIST's official test images), as published FIDs")
    ev.add_argument("--num-samples", type=int, help="override the protocol's sample count (recorded as 'custom')")
    ev.add_argument("--num-real", type=int, help="override the protocol's real-image count")
    ev.add_argument("--metric-set", choices=sorted(METRIC_SETS), help="quick: what the gate reads and the cheap "
                    "headline figures (the quick protocol's); full: also CAS and the LPIPS scores (the paper's)")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--config", help="run config file (YAML/JSON with an `ops:` section), flags override it")
    ev.add_argument("--preset", choices=sorted(PRESETS), help="named sizes (see `imagegen presets`)")
    ev.set_defaults(func=cmd_evaluate)
    gen = sub.add_parser("generate", help="images for a prompt (or --label) from the registered generator, "
                                          "best of --candidates each by prompt score")
    gen.add_argument("prompt", nargs="?", help='what to draw, e.g. "a cat with a hat" (text-conditioned models)')
    gen.add_argument("--dataset", required=True, help="whose generator: imagegen-generator-<dataset>")
    gen.add_argument("--label", help="class name for class-conditioned models (and the scoring text if no prompt)")
    gen.add_argument("--n", type=int, default=16, help="images to return (default 16)")
    gen.add_argument("--candidates", type=int, default=4, help="candidates generated per returned image (default 4)")
    gen.add_argument("--seed", type=int, default=0, help="first seed; candidates use seed, seed+1, ...")
    gen.add_argument("--guidance", type=float, help="diffusion models: classifier-free guidance weight (1 = none; "
                                                    "default the model's own), recorded in the PNG")
    gen.add_argument("--model-uri", help="default models:/imagegen-generator-<dataset>@champion, else @candidate")
    gen.add_argument("--out", default="generated.png", help="grid PNG (or name stem with --separate)")
    gen.add_argument("--separate", action="store_true", help="one PNG per image: OUT-00.png, OUT-01.png, ...")
    gen.set_defaults(func=cmd_generate)
    pre = sub.add_parser("presets", help="list the named presets, or print one as a run config (YAML)")
    pre.add_argument("name", nargs="?", choices=sorted(PRESETS))
    pre.set_defaults(func=cmd_presets)
    ui = sub.add_parser("ui", help="start the Dagster and MLflow UIs on 127.0.0.1 (Ctrl-C stops both)")
    ui.add_argument("--host", default="127.0.0.1", help="address both UIs bind to (default: loopback only)")
    ui.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    ui.add_argument("--mlflow-port", type=int, default=5000, help="MLflow UI port")
    ui.set_defaults(func=cmd_ui)
    tm = sub.add_parser("team", help="the team profile on this machine: PostgreSQL, mlflow server, dagster-webserver "
                                     "and dagster-daemon on 127.0.0.1 (docs/scaling-out.md)")
    tm.add_argument("action", choices=("up", "down"))
    tm.add_argument("--root", help="where the profile keeps its databases, logs and team.env (default <home>/.team)")
    tm.add_argument("--host", default="127.0.0.1", help="address the Dagster and MLflow servers bind to")
    tm.add_argument("--dagster-port", type=int, default=3001)
    tm.add_argument("--mlflow-port", type=int, default=5002)
    tm.add_argument("--pg-port", type=int, default=0, help="PostgreSQL port on 127.0.0.1 (default: a free one, kept)")
    tm.add_argument("--gpus", type=int, default=1, help="training runs the gpu pool admits at once (one per GPU)")
    tm.set_defaults(func=cmd_team)
    srv = sub.add_parser("serve", help="serve the registered generator over HTTP (`mlflow models serve`, "
                                       "POST /invocations)")
    srv.add_argument("dataset")
    srv.add_argument("--alias", default="champion", help="registry alias to serve (default champion; "
                                                         "`candidate` before evaluation has promoted one)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    srv.add_argument("--port", type=int, default=5001, help="port (default 5001; the MLflow UI has 5000)")
    srv.set_defaults(func=cmd_serve)
    rev = sub.add_parser("review", help="a web page where people tell real from generated images and whether "
                                        "pictures show their prompts; answers "
                                        "go to data/reviews/<dataset>/reviews.sqlite")
    rev.add_argument("dataset")
    rev.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    rev.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    rev.add_argument("--n", type=int, default=40, help="pairs to show (default 40)")
    rev.add_argument("--questions", type=int, default=16,
                     help="prompt questions to ask after the pairs: one generated picture each, a text model's "
                          "held-out composite prompts first (default 16)")
    rev.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                     help="a host name the page may be reached by besides loopback and the bound address "
                          "(e.g. the name a reverse proxy forwards); other Host headers get 403. Repeatable")
    rev.add_argument("--model-uri", help="default models:/imagegen-generator-<dataset>@champion, else @candidate, "
                                         "else data/models/<dataset>/generator.safetensors")
    rev.set_defaults(func=cmd_review)
    from imagegen_pipeline.project_cli import add_parser as add_project

    add_project(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from imagegen_pipeline.tracking.store import quiet_artifact_progress

    args = build_parser().parse_args(argv)
    quiet_artifact_progress()  # before any command loads a model (the servers we start inherit it)
    paths = DataPaths.from_home(args.home)
    if args.home:  # the assets' storage resource and the servers we start read the data root from here
        os.environ["IMAGEGEN_HOME"] = str(paths.home)
    try:
        return args.func(args, paths)
    except (InvalidDatasetName, FileExistsError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, LookupError) as exc:  # a registered model that cannot be read: its URI, no traceback
        from imagegen_pipeline.tracking.registry import ModelNotFound, ModelUnreadable  # mlflow: error path only

        if not isinstance(exc, (ModelNotFound, ModelUnreadable)):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
