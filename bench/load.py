"""`imagegen serve` and `imagegen review` under load: concurrent clients on loopback for a fixed time.

Prepares a data root once (300 MNIST digits, ingested; a demo-width generator trained for a few steps and
registered), then starts each server as a user does (`imagegen serve`, `imagegen review`, real processes) and
runs `--clients` threads against it for `--seconds`. Records requests/s, p50/p99 latency, errors (any status
the workload does not expect, or a failed connection; target 0) and the server's memory (RSS of its process
tree) at the start and the end. Also: oversized generation requests must get a 4xx at once, and a connection
flood on the review page must get 503s while it lasts and 200s after.

    python bench/load.py [--seconds 60] [--clients 8] [--home DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imagegen_pipeline.net import free_port  # noqa: E402
from imagegen_pipeline.ui import stop, wait_http  # noqa: E402


def imagegen(home: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "imagegen_pipeline.cli", "--home", str(home), *args], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "DAGSTER_HOME": str(home / ".dagster")})


def prepare(home: Path) -> None:
    """A registered generator of the demo's width over 300 ingested digits (trained briefly: load does not
    depend on how good the pictures are)."""
    if (home / "data" / "models" / "mnist" / "generator.safetensors").is_file():
        return
    imagegen(home, "datasets", "import", "mnist", "--limit", "300", "--exist-ok")
    imagegen(home, "ingest", "mnist")
    imagegen(home, "train", "mnist", "--steps", "20", "--checkpoint-every", "20", "--sample-every", "20")


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants (Linux /proc), MiB."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, grew = {pid}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0
    for p in tree:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return round(total / 2**20, 1)


def start(home: Path, args: list[str], ready: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "IMAGEGEN_HOME": str(home), "DAGSTER_HOME": str(home / ".dagster")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "imagegen_pipeline.cli", "--home", str(home), *args], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(ready, timeout=180, proc=proc)
    return proc


def hammer(port: int, workload, clients: int, seconds: float) -> dict:
    """`clients` threads, each with its own keep-alive connection, call workload(conn, rng) until time is up;
    workload returns True when the reply was what it expects."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        rng = random.Random(k)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                ok = workload(conn, rng)
                why = None if ok is True else str(ok)
            except (OSError, http.client.HTTPException) as exc:
                why = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                latencies.append(time.perf_counter() - t0)
                if why:
                    failures.append(why)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in latencies)
    return {"requests": len(ms), "requests_per_s": round(len(ms) / wall, 1),
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None,
            "errors": len(failures), "first_errors": sorted(set(failures))[:5]}


def call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read(), resp


def generation(conn, rng) -> bool | str:
    body = json.dumps({"dataframe_split": {"columns": ["label", "seed", "count"],
                                           "data": [[str(rng.randrange(10)), rng.randrange(10**6), 4]]},
                       "params": {"format": "png"}}).encode()
    status, data, _ = call(conn, "POST", "/invocations", body, {"Content-Type": "application/json"})
    return True if status == 200 and len(json.loads(data)["predictions"]) == 4 else f"status {status}"


def oversized(port: int, n: int = 5) -> dict:
    """200 rows x 256 images (51,200): refused before any generation."""
    body = json.dumps({"dataframe_split": {"columns": ["label", "seed", "count"],
                                           "data": [["3", i, 256] for i in range(200)]}}).encode()
    statuses, ms = [], []
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        t0 = time.perf_counter()
        statuses.append(call(conn, "POST", "/invocations", body, {"Content-Type": "application/json"})[0])
        ms.append((time.perf_counter() - t0) * 1000)
        conn.close()
    return {"statuses": sorted(set(statuses)), "max_ms": round(max(ms), 1)}


def review_visit(conn, rng) -> bool | str:
    """One new reviewer: the item list (and a cookie), one image, one answer, then the same answer again."""
    status, data, resp = call(conn, "GET", "/api/items")
    if status != 200:
        return f"items {status}"
    cookie = resp.getheader("Set-Cookie", "").split(";")[0]
    item = rng.choice(json.loads(data)["items"])
    status, png, _ = call(conn, "GET", item["left"])
    if status != 200 or not png.startswith(b"\x89PNG"):
        return f"image {status}"
    answer = json.dumps({"item": item["id"], "real": rng.choice(["left", "right"]),
                         **({"prompt_match": True} if item["prompt"] is not None else {})}).encode()
    headers = {"Content-Type": "application/json", "Cookie": cookie}
    first = call(conn, "POST", "/api/answer", answer, headers)[0]
    again = call(conn, "POST", "/api/answer", answer, headers)[0]
    return True if (first, again) == (201, 409) else f"answer {first}, repeat {again}"


def flood(port: int, sockets: int = 64) -> dict:
    """Hold `sockets` idle connections open: the page answers 503 at once, then 200 when they go."""
    idle = []
    for _ in range(sockets):
        try:
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    time.sleep(0.5)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t0 = time.perf_counter()
    during = call(conn, "GET", "/api/summary")[0]
    ms = (time.perf_counter() - t0) * 1000
    conn.close()
    for s in idle:
        s.close()
    deadline, after = time.monotonic() + 20, None
    while time.monotonic() < deadline and after != 200:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        after = call(conn, "GET", "/api/summary")[0]
        conn.close()
        time.sleep(0.1)
    return {"idle_sockets": len(idle), "status_during": during, "ms_during": round(ms, 1), "status_after": after}


def measure(home: Path, command: list[str], ready: str, workload, args, *, extra) -> dict:
    """Start `imagegen <command>` on a free port, hammer it, then run `extra(port)`; memory before and after."""
    port = free_port()
    proc = start(home, [*command, "--port", str(port)], f"http://127.0.0.1:{port}{ready}",
                 home / f"{command[0]}.log")
    try:
        before = rss_mb(proc.pid)
        result = hammer(port, workload, args.clients, args.seconds)
        return result | {"rss_mb_start": before, "rss_mb_end": rss_mb(proc.pid), extra.__name__: extra(port)}
    finally:
        stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--home", type=Path, help="data root to prepare/reuse (default: a fresh temporary one)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "load.json")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="imagegen-load-"))
    t = time.perf_counter()
    prepare(home)
    print(f"prepared {home} in {time.perf_counter() - t:.0f} s", flush=True)
    results = {"clients": args.clients, "seconds": args.seconds, "cpus": os.cpu_count()}

    results["serve"] = measure(home, ["serve", "mnist", "--alias", "candidate"], "/ping", generation, args,
                               extra=oversized)
    results["review"] = measure(home, ["review", "mnist", "--n", "40"], "/api/summary", review_visit, args,
                                extra=flood)
    serve, review = results["serve"], results["review"]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("\n| server | clients x s | requests/s | p50 ms | p99 ms | errors | RSS MB start -> end |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for name, unit in (("serve", "POST /invocations, 4 PNGs"),
                       ("review", "a visit = 4 requests: items, image, answer, repeat")):
        r = results[name]
        print(f"| {name} ({unit}) | {args.clients} x {args.seconds:.0f} | {r['requests_per_s']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['errors']} | {r['rss_mb_start']} -> {r['rss_mb_end']} |")
    print(f"\noversized (200 rows x 256 images): {serve['oversized']}\nreview flood: {review['flood']}")
    for name in ("serve", "review"):
        if results[name]["first_errors"]:
            print(f"{name} errors: {results[name]['first_errors']}")
    return 0 if serve["errors"] == review["errors"] == 0 and all(400 <= s < 500 for s in
                                                                   serve["oversized"]["statuses"]) else 1


if __name__ == "__main__":
    sys.exit(main())
