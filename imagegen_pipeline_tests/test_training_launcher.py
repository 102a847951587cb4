"""Issue 17.2: dcgan_checkpoint trains out of the run worker, in torchrun's processes started through Dagster Pipes
(2 gloo ranks on CPU), and reports back exactly what in-process training reports; a kill of those processes is
handled like a kill in-process (the next materialization resumes)."""

from __future__ import annotations

import os
import signal
import subprocess

import dagster as dg
import mlflow
import psutil
import pytest
import torch
import torch.multiprocessing as mp

from imagegen_pipeline.defs.dcgan import dcgan_checkpoint
from imagegen_pipeline.defs.resources import TRAINING_MODULE, ImagegenStorage, MlflowTracker, TrainingLauncher
from imagegen_pipeline.ml.checkpoint import load_checkpoint
from imagegen_pipeline.ml.dcgan import ddp
from imagegen_pipeline.net import free_port
from imagegen_pipeline_tests.test_dcgan_asset import (TINY_GAN, mnist_shards,  # noqa: F401 (fixture)
                                                        train_until_first_checkpoint)

TORCHRUN = TrainingLauncher(mode="torchrun", nproc_per_node=2)


@pytest.mark.slow
def test_torchrun_through_pipes_reports_the_same_materialization_and_mlflow_run(mnist_shards, instance, mlflow_uri):  # noqa: F811
    paths = mnist_shards
    result = dg.materialize([dcgan_checkpoint], partition_key="mnist", instance=instance, raise_on_error=False,
                            resources={"storage": ImagegenStorage(home=str(paths.home)),
                                       "mlflow_tracker": MlflowTracker(), "training": TORCHRUN},
                            run_config={"ops": {"dcgan_checkpoint": {"config": TINY_GAN}}})
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    [mat] = result.asset_materializations_for_node("dcgan_checkpoint")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["processes"] == 2 and meta["ranks_agree"] is True  # DDP kept both ranks' G and D equal
    assert meta["steps"] == 6 and meta["resumed_from_step"] == 0 and meta["conditioning"] == "class"
    assert meta["registered_model"] == "imagegen-generator-mnist v1 (@candidate)"
    assert "data:image/png;base64," in meta["samples"] and "data:image/png;base64," in meta["loss_curves"]
    assert isinstance(mat.metadata["mlflow_run"], dg.UrlMetadataValue)
    assert isinstance(mat.metadata["checkpoint"], dg.PathMetadataValue)
    assert load_checkpoint(meta["checkpoint"])["world_size"] == 2
    logs = [e.message for e in result.all_events if e.event_type_value == "ENGINE_EVENT"] + [
        r.user_message for r in instance.all_logs(result.run_id)]
    assert any("resuming" in m or "starting" in m for m in logs)  # the stage's log lines came through Pipes
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)  # not an earlier test's
    mv = client.get_model_version_by_alias("imagegen-generator-mnist", "candidate")
    run = client.get_run(mv.run_id)
    assert run.data.params["processes"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "loss_g")) == 3  # log_every=2 over 6 steps, rank 0 only
    assert "checkpoint" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_killing_the_training_processes_then_rematerializing_resumes(mnist_shards, tmp_path):  # noqa: F811
    paths = mnist_shards
    proc, cmd, env = train_until_first_checkpoint(paths, tmp_path, 300, IMAGEGEN_TRAINING="torchrun",
                                                  IMAGEGEN_TRAINING_PROCS="2", OMP_NUM_THREADS="1")
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if TRAINING_MODULE in p.cmdline() and "torch.distributed.run" not in p.cmdline()]
    assert len(workers) == 2  # torchrun's two ranks, out of the run worker
    for w in workers:  # the node running training dies
        w.send_signal(signal.SIGKILL)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode != 0 and "the training processes failed" in out, out[-3000:]
    killed_at = load_checkpoint(next(paths.checkpoints("mnist").glob("dcgan-*/latest.pt")))["step"]
    assert 10 <= killed_at < 300
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("dcgan:"))
    assert line.startswith(f"dcgan: 300 steps (resumed from {killed_at})"), line


def _agreement(rank: int, port: int, drift: float, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    with torch.no_grad():
        net.bias[0] += drift * rank  # rank 1 alone went its own way
    out.put((rank, ddp.params_agree(net, ddp.current())))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("drift,agree", [(0.0, True), (1e-4, False)])
def test_params_agree_is_true_only_when_every_rank_holds_the_same_weights(drift, agree):
    """The check behind `ranks_agree` is not vacuous: one rank's 1e-4 drift in one bias makes it false."""
    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_agreement, args=(r, port, drift, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(out.get(timeout=5) for _ in procs) == [(0, agree), (1, agree)]
