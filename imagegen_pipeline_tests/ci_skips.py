"""A pytest plugin that keeps a broken install step from hiding behind a green CI.

`make test` installs Chromium, Fashion-MNIST, the emoji tarballs and the weight packages; the tests that need
them skip when they are missing, which is right on a developer's laptop and wrong in CI. Under `CI=true` every
skip fails the run, unless its reason starts with HARDWARE (this machine lacks a CPU or GPU feature, which no
install step can fix). The last line of the output always gives the skip count.
"""

from __future__ import annotations

import os

import pytest

HARDWARE = "hardware: "  # the reason prefix of a skip that CI may keep


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


_SKIPS: list[tuple[str, str]] = []  # (test id, reason) of this session's skips


def pytest_configure(config: pytest.Config) -> None:
    _SKIPS.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPS.append((report.nodeid, _reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:  # a module-level skip
    if report.skipped:
        _SKIPS.append((report.nodeid, _reason(report)))


def _missing(config: pytest.Config) -> list[tuple[str, str]]:
    return [(n, r) for n, r in _SKIPS if not r.startswith(HARDWARE.strip())]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() == "true" and _missing(session.config) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    missing = _missing(config)
    if missing and os.environ.get("CI", "").lower() == "true":
        terminalreporter.section("skipped for a missing part: CI=true fails the run", sep="=", red=True)
        for nodeid, reason in missing:
            terminalreporter.write_line(f"{nodeid}: {reason}")


def pytest_unconfigure(config: pytest.Config) -> None:
    skips = _SKIPS
    missing = len(_missing(config))
    ci = os.environ.get("CI", "").lower() == "true"
    print(f"skipped: {len(skips)} ({missing} for a missing part{', which fails under CI=true' if ci and missing else ''}"
          f"; {len(skips) - missing} for hardware)", flush=True)
