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
    from imagegen_pipeline.ui import is_loopback, warn_if_exposed

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


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "manifest.json"
    write_json_atomic(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "half')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left behind
