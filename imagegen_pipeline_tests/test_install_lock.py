"""`make install`'s lock installer (deploy/install_lock.py): every pin in exactly one parallel group, a real pip
in a new venv, and the resolver's install as the fallback when a pin cannot be installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from imagegen_pipeline.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "deploy" / "install_lock.py"


def _module():
    spec = importlib.util.spec_from_file_location("install_lock", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_pin_of_the_lock_is_in_exactly_one_group():
    lock = _module()
    pins = lock.pins(REPO_ROOT / "requirements.lock")
    groups = lock.groups(pins)
    flat = lock.first(pins) + [p for g in groups for p in g]
    assert sorted(flat) == sorted(pins) and len(set(flat)) == len(flat) > 100
    assert len(groups) == 5
    nvidia = [g for g in groups if any(p.startswith("nvidia-") for p in g)]
    assert len(nvidia) == 1 and all(p.startswith("nvidia-") for p in nvidia[0])
    assert sorted(p.split("==")[0] for p in groups[1]) == ["torch", "triton"]
    # mlflow, mlflow-skinny and mlflow-tracing ship the same files: two pips must never write them at once
    [mlflow] = [g for g in groups if any(p.startswith("mlflow==") for p in g)]
    assert {p.split("==")[0] for p in pins if p.startswith("mlflow")} <= {p.split("==")[0] for p in mlflow}
    assert max(map(len, groups[2:])) - min(map(len, groups[2:])) <= 3  # the three small-package groups even
    assert [p.split("==")[0] for p in lock.first(pins)] == ["setuptools"]  # torch needs >= 77; a new venv has less


@pytest.mark.slow
def test_a_pin_pip_cannot_install_falls_back_to_the_resolver(tmp_path):
    """In a new venv: a lock of one real pin installs without resolving; a lock naming a package that exists
    nowhere makes its group fail, and the resolver's install (lock as constraints) still installs the project."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    six = next(p for p in _module().pins(REPO_ROOT / "requirements.lock") if p.startswith("six=="))
    good = tmp_path / "good.lock"
    good.write_text(f"# one pin\n{six}\n")
    run = subprocess.run([str(python), str(SCRIPT), str(good)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "falling back" not in run.stderr, run.stderr[-2000:]
    version = subprocess.run([str(python), "-c", "import six; print(six.__version__)"], capture_output=True, text=True)
    assert version.stdout.strip() == six.split("==")[1]

    bad = tmp_path / "bad.lock"
    bad.write_text(f"{six}\nimagegen-no-such-package-anywhere==0.0.1\n")
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "six"], check=True)
    run = subprocess.run([str(python), str(SCRIPT), str(bad), "--", "six"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "a group failed" in run.stderr and "falling back to pip's resolver" in run.stderr
    version = subprocess.run([str(python), "-c", "import six; print(six.__version__)"], capture_output=True, text=True)
    assert version.stdout.strip() == six.split("==")[1]
