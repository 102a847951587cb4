"""Resources: where data lives and which MLflow store records it. Tests swap in a temp folder with `home=`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from imagegen_pipeline.paths import REPO_ROOT, DataPaths

if TYPE_CHECKING:
    from imagegen_pipeline.tracking.tracker import Tracker


class ImagegenStorage(dg.ConfigurableResource):
    """The data root: landing zone, manifests, shards and previews all live below it."""

    home: str = Field(default="", description="Data root folder; empty means $IMAGEGEN_HOME, else the repo root.")

    @property
    def paths(self) -> DataPaths:
        return DataPaths.from_home(self.home or None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A step that writes under the data root records its process for the dead-run reaper and dies with its
        orchestrator, so no orphan writes into a run folder that another run resumes."""
        from imagegen_pipeline.defs.dead_runs import record_step_process

        record_step_process(context)


class MlflowTracker(dg.ConfigurableResource):
    """Which MLflow store the stages use and where its UI is; `open` hands them a `Tracker` for it."""

    tracking_uri: str = Field(default="", description="MLflow tracking/registry URI; empty = sqlite under "
                                                      "<data root>/mlruns/mlflow.db.")
    ui_url: str = Field(default="", description="Where the MLflow UI is served, for links in metadata; empty = "
                                                "$IMAGEGEN_MLFLOW_UI or http://127.0.0.1:5000.")

    def open(self, paths: DataPaths) -> Tracker:
        """The stages' door to MLflow for this data root."""
        from imagegen_pipeline.tracking.tracker import Tracker

        return Tracker.for_paths(paths, uri=self.tracking_uri, ui=self.ui_url)


TRAINING_MODES = ("in_process", "torchrun", "k8s")
TRAINING_MODULE = "imagegen_pipeline.external.train_generator"
TRAINING_POD = REPO_ROOT / "deploy" / "k8s" / "training-pod.yaml"  # the k8s mode's pod spec (checked by test_deploy)


class TrainingLauncher(dg.ConfigurableResource):
    """Where `dcgan_checkpoint` trains. `in_process` (default): in the run worker, on its one device. `torchrun`:
    in `nproc_per_node` processes that torchrun starts through Dagster Pipes (DDP over NCCL on GPUs, gloo on CPU);
    their logs, metrics and metadata come back through Pipes, and the MLflow run and registered version are the
    same as in-process. `k8s`: the same torchrun command in a GPU pod (`PipesK8sClient`, deploy/k8s/training-pod.yaml).
    Set per deployment ($IMAGEGEN_TRAINING, $IMAGEGEN_TRAINING_PROCS, $IMAGEGEN_TRAINING_IMAGE), not per run."""

    mode: str = Field(default="in_process", description="'in_process', 'torchrun' or 'k8s'.")
    nproc_per_node: int = Field(default=1, description="torchrun: processes (GPUs) per node.")
    image: str = Field(default="", description="k8s: the training pod's image (the code location's).")

    @property
    def external(self) -> bool:
        if self.mode not in TRAINING_MODES:
            raise dg.Failure(f"TrainingLauncher mode {self.mode!r}: use one of {', '.join(TRAINING_MODES)}")
        return self.mode != "in_process"

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.nproc_per_node}",
                "-m", TRAINING_MODULE]

    def pod_spec(self) -> dict:
        """deploy/k8s/training-pod.yaml with one GPU per torchrun process."""
        import yaml

        spec = yaml.safe_load(TRAINING_POD.read_text())
        spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = str(self.nproc_per_node)
        return spec

    def launch(self, context: dg.AssetExecutionContext, extras: dict) -> dg.MaterializeResult:
        """Train in torchrun's processes through Pipes; the materialization they reported. A kill (of them or of
        this run) leaves their last checkpoint, which the next materialization resumes from."""
        from dagster._core.errors import DagsterPipesExecutionError

        try:
            if self.mode == "k8s":
                from dagster_k8s import PipesK8sClient

                return PipesK8sClient().run(context=context, extras=extras, image=self.image or None,
                                            command=self.command("python"),
                                            base_pod_spec=self.pod_spec()).get_materialize_result()
            import tempfile

            from imagegen_pipeline.defs.pipes_reader import WholeLineFileMessageReader
            from imagegen_pipeline.processes import ProcessRecord

            extras = {**extras, "owner": str(ProcessRecord.of())}  # so the ranks die with this step process too
            with tempfile.TemporaryDirectory(prefix="imagegen-pipes-") as tmp:
                client = dg.PipesSubprocessClient(  # forwards Dagster's termination only: see `owner` above
                    forward_termination=True, message_reader=WholeLineFileMessageReader(f"{tmp}/messages"))
                return client.run(command=self.command(), context=context, extras=extras).get_materialize_result()
        except DagsterPipesExecutionError as exc:
            raise dg.Failure(f"the training processes failed ({exc}); their log lines above say why. The next "
                             "materialization resumes from their last checkpoint") from exc
