"""The far side of `dcgan_checkpoint` with `TrainingLauncher(mode="torchrun")`: the same stage as in-process
training, started by torchrun in N processes and reporting back through Dagster Pipes.

    torchrun --standalone --nproc-per-node N -m imagegen_pipeline.external.train_generator

Dagster starts it (`PipesSubprocessClient`; `PipesK8sClient` on a cluster) with the request in the Pipes extras.
Rank 0 opens the Pipes channel: the stage's log lines become the run's logs, its metrics and sample grids go to
MLflow as in-process, and its metadata becomes the asset's materialization. The other ranks read the same extras
and train in step with rank 0 (DistributedDataParallel). A killed process leaves its last checkpoint; the next
materialization, in-process or not, resumes from it.
"""

from __future__ import annotations

import os
import sys

from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

from imagegen_pipeline.ml.dcgan import ddp
from imagegen_pipeline.paths import DataPaths, validate_dataset_name
from imagegen_pipeline.processes import ProcessRecord, die_with
from imagegen_pipeline.stages.dcgan import GeneratorJob, train_generator
from imagegen_pipeline.stages.outputs import StageFailed, typed
from imagegen_pipeline.tracking.tracker import Tracker


def request_extras() -> dict:
    """The extras Dagster passed (every rank reads them; only rank 0 talks back)."""
    with PipesDefaultContextLoader().load_context(PipesEnvVarParamsLoader().load_context_params()) as data:
        return dict(data["extras"])


def train(extras: dict, log, warn) -> dict:
    """Run the training stage for the request in `extras`; its metadata (empty on ranks other than 0). Every rank
    dies with the step process that started it (`owner`), which may be killed without a word to torchrun."""
    if extras.get("owner"):
        die_with(ProcessRecord.parse(extras["owner"]))
    paths = DataPaths.from_home(extras["home"] or None)
    tracker = Tracker.for_paths(paths, uri=extras["tracking_uri"], ui=extras["ui_url"])
    return train_generator(paths, validate_dataset_name(extras["dataset"]), GeneratorJob(**extras["job"]),
                           tracker=tracker, run_tag=extras["run_tag"], log=log, warn=warn)


def pipes_metadata(metadata: dict) -> dict:
    """Stage metadata in the Pipes wire format: the same Markdown pictures, links and paths as in-process."""
    out = {}
    for key, value in metadata.items():
        kind, raw = typed(value)
        out[key] = {"type": kind, "raw_value": raw} if kind else raw
    return out


def main() -> int:
    try:  # the stage joins torchrun's process group (on its device's backend); RANK says who talks to Dagster
        if int(os.environ.get("RANK", "0")) != 0:
            train(request_extras(), log=lambda _: None, warn=lambda _: None)
            return 0
        with open_dagster_pipes() as pipes:
            try:
                metadata = train(pipes.extras, log=pipes.log.info, warn=pipes.log.warning)
            except StageFailed as exc:  # a clear reason, not a stack trace, in the run's log
                pipes.log.error(str(exc))
                return 2
            pipes.report_asset_materialization(metadata=pipes_metadata(metadata))
        return 0
    finally:
        ddp.shutdown()


if __name__ == "__main__":
    sys.exit(main())
