"""Install requirements.lock into this interpreter's environment exactly, in a few pip processes at once.

`pip install -c requirements.lock -e .[dev]` resolves 170 packages and installs them one at a time: on the 2-core
box about two minutes, with the CPUs idle almost half of it (docs/measurements.md). The lock pins every package,
so nothing needs resolving: each pin is installed with --no-deps, pip's own toolchain first, then five groups side
by side (the CUDA libraries, torch + triton, the rest in three), about 80 s there. `pip check` then proves the
result consistent.

Any failure (a platform the lock's wheels do not cover, a pin missing from the lock) falls back to the resolver's
install, so this can only make an install faster, never break one:

    python deploy/install_lock.py requirements.lock -- -e '.[dev]'
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PIP = [sys.executable, "-m", "pip", "install", "-q"]
BIG = ("torch", "triton")  # the two largest wheels after the nvidia-* set: one process of their own
REST_GROUPS = 3
# What a new venv already has (setuptools 65.5 there; torch needs >= 77): upgraded first, alone, so that no pip
# uninstalls the installer's own toolchain while the others run
FIRST = ("pip", "setuptools", "wheel")


def pins(lock: Path) -> list[str]:
    """The lock's `name==version` lines (comments and blanks dropped)."""
    lines = [line.split("#", 1)[0].strip() for line in lock.read_text().splitlines()]
    return [line for line in lines if line]


def _name(requirement: str) -> str:
    return requirement.split("==", 1)[0].strip().lower().replace("_", "-")


def first(requirements: list[str]) -> list[str]:
    """The pins of the installer's own toolchain (FIRST), installed before the parallel groups."""
    return [r for r in requirements if _name(r) in FIRST]


def family(name: str) -> str:
    """Packages of one family share files: mlflow, mlflow-skinny and mlflow-tracing ship the same 1,300 modules,
    and two pips writing one file at once broke a byte-compile. A family stays in one group, in the lock's order."""
    return name.split("-", 1)[0]


def groups(requirements: list[str]) -> list[list[str]]:
    """nvidia-* | torch, triton | the rest in REST_GROUPS, whole families dealt to the emptiest group (about equal
    wall time each; FIRST apart)."""
    todo = [(r, _name(r)) for r in requirements if _name(r) not in FIRST]
    nvidia = [r for r, n in todo if n.startswith("nvidia-")]
    big = [r for r, n in todo if n in BIG]
    families: dict[str, list[str]] = {}
    for r, n in todo:
        if not n.startswith("nvidia-") and n not in BIG:
            families.setdefault(family(n), []).append(r)
    rest: list[list[str]] = [[] for _ in range(REST_GROUPS)]
    for members in families.values():
        min(rest, key=len).extend(members)
    return [g for g in [nvidia, big, *rest] if g]


def _install(group: list[str]) -> tuple[int, str]:
    proc = subprocess.run([*PIP, "--no-deps", *group], capture_output=True, text=True)
    return proc.returncode, proc.stderr


def sync(lock: Path, project: list[str]) -> bool:
    """FIRST, then every other pin with --no-deps in parallel groups, then the project itself, then `pip check`;
    True if all held."""
    requirements = pins(lock)
    results = [_install(first(requirements))] if first(requirements) else []
    if all(code == 0 for code, _ in results):
        with ThreadPoolExecutor() as pool:
            results += pool.map(_install, groups(requirements))
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
