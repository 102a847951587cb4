"""Under CI=true a test skipped for a missing part fails the run (issue 14.11); hardware skips do not."""

from __future__ import annotations

import os
import subprocess
import sys

from imagegen_pipeline.paths import REPO_ROOT

TESTS = '''
import pytest
from imagegen_pipeline_tests.ci_skips import HARDWARE

def test_runs():
    assert True

@pytest.mark.skipif(True, reason="chromium not installed")
def test_needs_a_browser():
    pass

def test_needs_avx512():
    pytest.skip(HARDWARE + "no AVX512-BF16")
'''


def pytest_run(folder, ci: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "imagegen_pipeline_tests.ci_skips",
                           "-p", "no:cacheprovider", *args, str(folder)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_missing_part_fails_ci_but_not_a_laptop_and_the_last_line_counts_skips(tmp_path):
    (tmp_path / "test_parts.py").write_text(TESTS)
    laptop = pytest_run(tmp_path, None)
    assert laptop.returncode == 0, laptop.stdout
    assert laptop.stdout.strip().splitlines()[-1] == "skipped: 2 (1 for a missing part; 1 for hardware)"
    ci = pytest_run(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout
    assert "test_needs_a_browser: chromium not installed" in ci.stdout and "test_needs_avx512" not in ci.stdout
    assert ci.stdout.strip().splitlines()[-1] == ("skipped: 2 (1 for a missing part, which fails under CI=true; "
                                                  "1 for hardware)")
    (tmp_path / "test_parts.py").write_text(TESTS.replace('reason="chromium not installed"', 'reason=HARDWARE + "no GPU"'))
    assert pytest_run(tmp_path, "true").returncode == 0


def test_a_missing_part_fails_ci_under_make_tests_parallel_workers_too(tmp_path):
    """`make test` runs the suite on pytest-xdist workers: the skips they report still fail CI=true."""
    (tmp_path / "test_parts.py").write_text(TESTS)
    ci = pytest_run(tmp_path, "true", "-n", "2")
    assert ci.returncode == 1, ci.stdout
    assert "test_needs_a_browser: chromium not installed" in ci.stdout and "test_needs_avx512" not in ci.stdout
    assert ci.stdout.strip().splitlines()[-1] == ("skipped: 2 (1 for a missing part, which fails under CI=true; "
                                                  "1 for hardware)")
    (tmp_path / "test_parts.py").write_text(TESTS.replace('reason="chromium not installed"', 'reason=HARDWARE + "no GPU"'))
    assert pytest_run(tmp_path, "true", "-n", "2").returncode == 0
