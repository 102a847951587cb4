"""Issue 29: the commands in README.md and docs/*.md cannot drift from the code. Every `imagegen ...` line of a fenced
code block must parse with the CLI's real argparse parser (sub-commands, flags, choices), and every `make X` must be
a Makefile target. Nothing is run: the parser is built, not called."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from imagegen_pipeline.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```")
IMAGEGEN = re.compile(r"^(?:\S*/)?imagegen$")  # `imagegen`, `.venv/bin/imagegen`


def fenced_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of every fenced code block; `\\` continuations joined onto their first line."""
    out, inside, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def commands(text: str) -> list[tuple[int, list[str]]]:
    """(line number, argv) of each shell command in the fenced blocks, split at `&&`, `||`, `;` and `|`; comments
    dropped. Lines that are not shell (Python, program output) yield nothing unless they start like a command."""
    found = []
    for number, line in fenced_lines(text):
        for part in re.split(r"&&|\|\||;|\|", line):
            first = part.split(maxsplit=1)[0] if part.strip() else ""
            if not (IMAGEGEN.match(first) or first == "make"):
                continue
            found.append((number, shlex.split(part, comments=True)))
    return found


INLINE_MAKE = re.compile(r"`(make [A-Za-z0-9_.-]+)`")  # `make team-up` in prose counts too


def _all_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        found += [(f"{page.relative_to(ROOT)}:{number}", argv) for number, argv in commands(text)]
        found += [(f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1).split())
                  for m in INLINE_MAKE.finditer(text)]
    return found


def strict_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The CLI's parser with abbreviations off, here and in every sub-command: a README flag cut short (`--candidate`
    for `--candidates`) would parse today and break when another flag shares the prefix."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                strict_parser(sub)
    return parser


def cli_error(argv: list[str]) -> str | None:
    """None when `imagegen argv` parses; else argparse's message (it exits 2 on a bad sub-command or flag)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            strict_parser(build_parser()).parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    return None


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


ALL = _all_commands()


def test_the_readme_shows_the_two_commands_and_the_cli_in_code_blocks():
    """The extraction itself: it must find the README's `make demo` / `make test` and its CLI lines, or the checks
    below would pass on nothing."""
    readme = [argv for where, argv in ALL if where.startswith("README.md:")]
    assert ["make", "demo"] in readme and ["make", "test"] in readme
    cli = {argv[1] for argv in readme if IMAGEGEN.match(argv[0])}
    assert {"pipeline", "train", "generate", "serve", "review", "presets"} <= cli, cli


@pytest.mark.parametrize("where,argv", [c for c in ALL if IMAGEGEN.match(c[1][0])], ids=lambda v: (
    v if isinstance(v, str) else " ".join(v[1:3])))
def test_each_imagegen_command_in_the_docs_parses_with_the_real_cli(where, argv):
    """A renamed flag or sub-command, or a preset or choice that no longer exists, fails here with the line."""
    assert cli_error(argv[1:]) is None, f"{where}: {' '.join(argv)}: {cli_error(argv[1:])}"


@pytest.mark.parametrize("where,argv", [c for c in ALL if c[1][0] == "make"], ids=lambda v: (
    v if isinstance(v, str) else " ".join(v)))
def test_each_make_target_in_the_docs_exists(where, argv):
    targets = [a for a in argv[1:] if "=" not in a and not a.startswith("-")]
    assert targets and set(targets) <= make_targets(), f"{where}: {' '.join(argv)}: no such target in Makefile"


def test_a_misspelt_flag_or_sub_command_is_caught():
    """The check can fail: what a typo in the README would look like to it."""
    assert cli_error(["generate", "--dataset", "mnist", "--lable", "7"]) == \
        "imagegen: error: unrecognized arguments: --lable"
    assert cli_error(["generate", "--dataset", "mnist", "--label", "7", "--candidate", "4"]) == \
        "imagegen: error: unrecognized arguments: --candidate"  # cut short: accepted by argparse's default
    assert "invalid choice: 'pipline'" in cli_error(["pipline", "mnist"])
    assert "invalid choice: 'gpu-mnst'" in cli_error(["pipeline", "mnist", "--preset", "gpu-mnst"])
    assert commands("```bash\n.venv/bin/imagegen ingest emoji --resolution 32 && \\\n  make dmeo  # x\n```\n") == [
        (2, [".venv/bin/imagegen", "ingest", "emoji", "--resolution", "32"]), (2, ["make", "dmeo"])]
    assert "dmeo" not in make_targets()
