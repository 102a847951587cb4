"""Issue 28.12: the team profile's password and databases never reach git, and its secret files are private from
the moment they exist (fast: no PostgreSQL; test_team.py runs the profile for real)."""

from __future__ import annotations

import os
import stat
import subprocess

from imagegen_pipeline import team
from imagegen_pipeline.paths import REPO_ROOT, DataPaths


def test_the_default_team_folder_is_ignored_by_git():
    """`git add -A` in a checkout that ran `imagegen team up` must not stage the password or the databases."""
    root = team.default_root(DataPaths.from_home(REPO_ROOT)).relative_to(REPO_ROOT)
    files = [root / "pgpass", root / "pgdata" / "PG_VERSION", root / "mlflow-artifacts" / "1" / "model.pt",
             root / "team.env"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *map(str, files)], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert sorted(done.stdout.split()) == sorted(map(str, files)), done.stdout + done.stderr


def test_secret_files_are_created_0600_even_under_a_permissive_umask(tmp_path):
    """The password file is never world-readable, not even between its creation and a later chmod."""
    old = os.umask(0)
    try:
        stale = tmp_path / "pgpass"
        stale.write_text("old\n")
        stale.chmod(0o644)  # a copy left readable by hand: rewriting it makes it private again
        for path in (tmp_path / "initdb.pw", stale):
            team.write_secret(path, "s3cret\n")
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
            assert path.read_text() == "s3cret\n"
    finally:
        os.umask(old)
