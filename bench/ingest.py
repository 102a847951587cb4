"""Ingestion speed and memory: our Dagster ingestion vs. the torchvision ImageFolder loop a user would write.

Runs the offline MNIST (70,000 images) through `imagegen datasets import`, then, each in its own
process on the same files: (a) `ingest_job` (raw_images + image_shards) through Dagster, and
(b) the baseline: torchvision ImageFolder + PIL, single process, decode + resize every file into
one tensor. A sampler thread records the peak RSS of each process tree. Prints images/s and the ratio.

    python bench/ingest.py [--limit N] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_ours(home: Path, workers: int) -> dict:
    import dagster as dg

    from imagegen_pipeline.definitions import defs

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("datasets", ["mnist"])
        cfg = {"ops": {"raw_images": {"config": {"workers": workers}}, "image_shards": {"config": {"workers": workers}}},
               "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        t = time.perf_counter()
        result = defs.resolve_job_def("ingest_job").execute_in_process(partition_key="mnist", instance=instance,
                                                                       run_config=cfg)
        seconds = time.perf_counter() - t
        rows = json.loads((home / "data/shards/mnist/description.json").read_text())["num_rows"]
        steps = {e.step_key: round(e.event_specific_data.duration_ms / 1000, 2) for e in result.all_events
                 if e.event_type_value == "STEP_SUCCESS"}
    assert result.success
    return {"seconds": seconds, "images": rows, "step_seconds": steps}


def run_baseline(home: Path) -> dict:
    import torch
    from torchvision import datasets, transforms

    t = time.perf_counter()
    ds = datasets.ImageFolder(str(home / "data/raw/mnist"), transform=transforms.Compose(
        [transforms.Grayscale(), transforms.Resize(32), transforms.ToTensor()]))
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=0)
    images = torch.cat([x for x, _ in loader])
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "images": len(images)}


PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root_pid: int) -> int:
    """Sum of RSS over `root_pid` and all its descendants, read from /proc (Linux)."""
    parent, rss = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/statm") as f:
                rss[int(d)] = int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    return sum(rss.get(p, 0) for p in tree)


def measured(cmd: list[str], env: dict) -> dict:
    """Run `cmd`, sampling the RSS of its whole process tree every 20 ms; return its JSON plus peak_rss_mb."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{cmd} failed with {proc.returncode}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": round(peak / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, help="import only N images (default: all 70,000)")
    ap.add_argument("--workers", type=int, default=0, help="decoding processes for ours; 0 = one per core")
    ap.add_argument("--run", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        home = Path(args.home)
        print(json.dumps(run_ours(home, args.workers) if args.run == "ours" else run_baseline(home)))
        return
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as tmp:
        env = {**os.environ, "IMAGEGEN_HOME": tmp}
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "imagegen_pipeline.cli", "datasets", "import", "mnist"]
        subprocess.run(cmd + (["--limit", str(args.limit)] if args.limit else []), env=env, check=True,
                       stdout=subprocess.DEVNULL)
        import_s = time.perf_counter() - t
        me = [sys.executable, __file__, "--home", tmp, "--workers", str(args.workers)]
        ours = measured(me + ["--run", "ours"], env)
        base = measured(me + ["--run", "baseline"], env)
    n = ours["images"]
    report = {
        "images": n, "cpu_cores": os.cpu_count(), "import_seconds": round(import_s, 2),
        "import_images_per_s": round(n / import_s),
        "ours_seconds": round(ours["seconds"], 2), "ours_images_per_s": round(n / ours["seconds"]),
        "ours_peak_rss_mb": ours["peak_rss_mb"],
        "baseline_seconds": round(base["seconds"], 2), "baseline_images_per_s": round(base["images"] / base["seconds"]),
        "baseline_peak_rss_mb": base["peak_rss_mb"], "ours_step_seconds": ours["step_seconds"],
    }
    report["speedup"] = round(report["ours_images_per_s"] / report["baseline_images_per_s"], 2)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"import (landing PNGs) : {report['import_images_per_s']:>7} img/s  ({import_s:.1f} s)")
    print(f"ours (raw_images + image_shards via Dagster): {report['ours_images_per_s']:>7} img/s, "
          f"peak RSS {report['ours_peak_rss_mb']} MB")
    print(f"baseline (ImageFolder + PIL, 1 process)     : {report['baseline_images_per_s']:>7} img/s, "
          f"peak RSS {report['baseline_peak_rss_mb']} MB")
    print(f"speedup: {report['speedup']}x   (ours by step, s: {ours['step_seconds']})")


if __name__ == "__main__":
    main()
