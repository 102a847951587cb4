"""Install requirements.lock into this interpreter's environment exactly, in a few pip processes at once.

`pip install -c requirements.lock -e .[dev]` resolves 170 packages and installs them one at a time: on the 2-core
box about two minutes, with the CPUs idle almost half of it (docs/measurements.md). The lock pins every package,
so nothing needs resolving: each pin is installed with --no-deps, in five groups side by side (the CUDA libraries,
torch + triton, the rest in three), about 70 s there. `pip check` then proves the result consistent.

Any failure (a platform the lock's wheels do not cover, a pin missing from the lock) falls back to the resolver's
install, so this can only make an install faster, never break one:

    python deploy/install_lock.py requirements.lock -- -e '.[dev]'
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PIP = [sys.executable, "-m", "pip", "install", "-q"]
BIG = ("torch", "triton")  # the two largest wheels after the nvidia-* set: one process of their own
REST_GROUPS = 3


def pins(lock: Path) -> list[str]:
    """The lock's `name==version` lines (comments and blanks dropped)."""
    lines = [line.split("#", 1)[0].strip() for line in lock.read_text().splitlines()]
    return [line for line in lines if line]


def groups(requirements: list[str]) -> list[list[str]]:
    """nvidia-* | torch, triton | the rest round-robin in REST_GROUPS: about equal wall time each."""
    name = [r.split("==", 1)[0].strip().lower().replace("_", "-") for r in requirements]
    nvidia = [r for r, n in zip(requirements, name) if n.startswith("nvidia-")]
    big = [r for r, n in zip(requirements, name) if n in BIG]
    rest = [r for r, n in zip(requirements, name) if not n.startswith("nvidia-") and n not in BIG]
    return [g for g in [nvidia, big, *(rest[i::REST_GROUPS] for i in range(REST_GROUPS))] if g]


def _install(group: list[str], folder: Path, index: int) -> tuple[int, str]:
    req = folder / f"group-{index}.txt"
    req.write_text("\n".join(group) + "\n")
    proc = subprocess.run([*PIP, "--no-deps", "-r", str(req)], capture_output=True, text=True)
    return proc.returncode, proc.stderr


def sync(lock: Path, project: list[str]) -> bool:
    """Every pin with --no-deps in parallel groups, then the project itself, then `pip check`; True if all held."""
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor() as pool:
        todo = groups(pins(lock))
        results = list(pool.map(_install, todo, [Path(tmp)] * len(todo), range(len(todo))))
    for code, err in results:
        if code != 0:
            tail = [line for line in err.splitlines() if not line.startswith("WARNING: Location")][-5:]
            print("install_lock: a group failed:", *tail, sep="\n  ", file=sys.stderr)
            return False
    if project and subprocess.run([*PIP, "--no-deps", *project]).returncode != 0:
        return False
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    if check.returncode != 0:
        print("install_lock: pip check:", check.stdout.strip(), file=sys.stderr)
        return False
    return True


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    lock, project = Path(argv[0]), [a for a in argv[1:] if a != "--"]
    if sync(lock, project):
        return 0
    print("install_lock: falling back to pip's resolver with the lock as constraints", file=sys.stderr)
    return subprocess.run([*PIP, "-c", str(lock), *project]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
