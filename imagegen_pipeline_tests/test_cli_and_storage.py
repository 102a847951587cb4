"""The `imagegen` CLI imports and ingests through Dagster into the same instance; writes are atomic."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from imagegen_pipeline.atomic import atomic_path, write_json_atomic
from imagegen_pipeline.cli import main


def test_cli_imports_then_ingests_and_records_the_run_in_the_instance(paths, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert main(["datasets", "import", "mnist", "--limit", "40"]) == 0
    assert main(["datasets", "import", "mnist", "--exist-ok"]) == 0
    assert main(["ingest", "mnist", "--resolution", "16"]) == 0
    out = capsys.readouterr().out
    assert "mnist: 40 accepted, 0 duplicates, 0 quarantined" in out
    assert "40 images of shape (1, 16, 16)" in out and "check shard_rows_match_manifest: passed" in out
    assert json.loads((paths.shards("mnist") / "description.json").read_text())["shape"] == [1, 16, 16]
    yaml = (tmp_path / "dagster_home" / "dagster.yaml").read_text()
    assert "telemetry:\n  enabled: false" in yaml
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as inst:
        [run] = inst.get_runs()
        assert run.job_name == "ingest_job" and run.tags["dagster/partition"] == "mnist"
        assert inst.get_dynamic_partitions("datasets") == ["mnist"]


def test_home_flag_is_the_data_root_of_the_runs_it_launches(paths, tmp_path, monkeypatch):
    """`imagegen --home DIR ingest` ran the assets on $IMAGEGEN_HOME's data (the resource never saw the flag):
    a bench pointed at a scratch root ingested and trained on the user's real data instead."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    other = tmp_path / "other-root"
    assert main(["--home", str(other), "datasets", "import", "mnist", "--limit", "20"]) == 0
    assert main(["--home", str(other), "ingest", "mnist", "--resolution", "16"]) == 0
    assert (other / "data" / "shards" / "mnist" / "description.json").is_file()
    assert not paths.shards("mnist").exists()


def test_cli_refuses_bad_names_and_missing_folders_with_a_clear_message(paths, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert main(["datasets", "import", "mnist", "--name", "../../etc"]) == 2
    assert main(["ingest", "nothing-here"]) == 2
    err = capsys.readouterr().err
    assert "invalid dataset name '../../etc'" in err and "no landing folder" in err


def test_binding_a_server_beyond_loopback_warns_that_it_has_no_authentication(paths, capsys):
    """Issue 14.8: `serve --host` with a non-loopback address (and `ui`/`review`, through the same function)
    says on stderr that nothing authenticates and how to put a proxy in front; loopback binds stay quiet."""
    from imagegen_pipeline.net import is_loopback, warn_if_exposed

    assert main(["serve", "mnist", "--host", "0.0.0.0"]) == 2  # nothing registered: it stops after warning
    err = capsys.readouterr().err
    assert "WARNING: binding the model server to 0.0.0.0" in err and "no authentication" in err
    assert "ssh -L" in err and "reverse proxy" in err
    assert main(["serve", "mnist"]) == 2 and "WARNING" not in capsys.readouterr().err
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
        warn_if_exposed(host, "x")
    for host in ("0.0.0.0", "::", "192.168.1.20", "my-box.example"):
        assert not is_loopback(host), host
    assert capsys.readouterr().err == ""


FSIZE_LIMITED = """
import json, resource, signal, sys
import torch
from imagegen_pipeline.atomic import write_json_atomic
from imagegen_pipeline.ml.checkpoint import load_checkpoint, save_checkpoint

folder = sys.argv[1]
save_checkpoint(f"{folder}/latest.pt", {"step": 1, "w": torch.zeros(1000)})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
outcomes = {}
for name, write in (("checkpoint", lambda: save_checkpoint(f"{folder}/latest.pt", {"step": 2, "w": torch.zeros(1 << 20)})),
                    ("json", lambda: write_json_atomic(f"{folder}/big.json", {"x": "y" * 3_000_000}))):
    try:
        write()
        outcomes[name] = "written"
    except Exception as exc:
        outcomes[name] = f"{type(exc).__name__}: {exc}"
outcomes["step"] = load_checkpoint(f"{folder}/latest.pt")["step"]
print(json.dumps(outcomes))
"""


def test_a_write_stopped_by_the_file_size_limit_is_named_and_the_previous_file_is_kept(tmp_path):
    """Issue 28: the full-disk test needs a tmpfs mount and was skipped wherever mount is not allowed, so CI never
    ran it. A file size limit (RLIMIT_FSIZE, no privilege needed) stops a write the same way: DiskFull names the
    file and the limit, the old checkpoint stays loadable and no temp file is left."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FSIZE_LIMITED, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    checkpoint, big_json = outcomes["checkpoint"], outcomes["json"]
    assert checkpoint.startswith("DiskFull: ") and big_json.startswith("DiskFull: "), outcomes
    assert f"{tmp_path / 'latest.pt'} would exceed the file size limit (1.0 MiB, ulimit -f)" in checkpoint
    assert "previous version of the file is kept" in checkpoint
    assert f"{tmp_path / 'big.json'} would exceed the file size limit" in big_json
    assert outcomes["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_a_full_disk_is_named_and_the_previous_file_is_kept(tmp_path):
    """Issue 14.2: a write on a full file system failed with the writer's own words (torch: "unexpected pos",
    sqlite: "database or disk is full"). Now it is DiskFull naming the mount point, the old file stays whole and
    no temp file is left; a stage refuses to start on a disk that is already full."""
    import subprocess

    import torch

    from imagegen_pipeline.atomic import DiskFull, require_free_space
    from imagegen_pipeline.ml.checkpoint import load_checkpoint, save_checkpoint
    from imagegen_pipeline_tests.ci_skips import HARDWARE

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(HARDWARE + "cannot mount a tmpfs here (needs root, as in CI)")
    try:
        target = small / "latest.pt"
        save_checkpoint(target, {"step": 1, "w": torch.zeros(1000)})
        with pytest.raises(DiskFull, match=f"no space left on {small} .*previous version of the file is kept"):
            save_checkpoint(target, {"step": 2, "w": torch.zeros(1_000_000)})  # 4 MB on a 2 MB disk
        assert load_checkpoint(target)["step"] == 1
        with pytest.raises(DiskFull, match=f"no space left on {small}"):
            write_json_atomic(small / "big.json", {"x": "y" * 3_000_000})
        assert sorted(p.name for p in small.iterdir()) == ["latest.pt"]
        with pytest.raises(DiskFull, match=f"no space left on {small}: .* MiB free"):
            require_free_space(small / "data" / "checkpoints", min_free=4 << 20)
        require_free_space(small, min_free=1 << 20)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "manifest.json"
    write_json_atomic(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "half')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left behind
