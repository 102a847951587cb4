"""Issue 17.3: the cluster path on paper, checked so that it cannot rot silently. Every YAML under deploy/ parses;
the Helm chart version is the Dagster version the pinned dagster-k8s is built for; the Helm values use only keys the
chart has; the run launcher's keys are the ones dagster-k8s's K8sRunLauncher takes; the training pod spec is read by
dagster-k8s's own Kubernetes model parser, as PipesK8sClient reads it. Each check is shown failing on a typo."""

from __future__ import annotations

import copy
import importlib.metadata
import re

import dagster as dg
import kubernetes.client
import pytest
import yaml
from dagster_k8s import K8sRunLauncher
from dagster_k8s.models import k8s_model_from_dict

from imagegen_pipeline.defs.resources import TRAINING_POD, TrainingLauncher
from imagegen_pipeline.paths import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
VALUES = DEPLOY / "k8s" / "values.yaml"

# The keys of the dagster/dagster chart's values (helm/dagster/schema/schema/charts/dagster/values.py and its
# subschemas in the Dagster repository, 1.13 line) that a deployment may set, down to where Kubernetes objects or
# free-form maps begin (None: anything below is the chart's pass-through to Kubernetes).
K8S = None
CHART_KEYS = {
    "global": {"postgresqlSecretName": K8S, "dagsterHome": K8S, "serviceAccountName": K8S,
               "celeryConfigSecretName": K8S},
    "dagsterWebserver": K8S, "dagster-user-deployments": {
        "enabled": K8S, "enableSubchart": K8S, "imagePullSecrets": K8S,
        "deployments": [{"name": K8S, "image": {"repository": K8S, "tag": K8S, "pullPolicy": K8S}, "port": K8S,
                         "dagsterApiGrpcArgs": K8S, "codeServerArgs": K8S, "includeConfigInLaunchedRuns": K8S,
                         "env": K8S, "envConfigMaps": K8S, "envSecrets": K8S, "annotations": K8S,
                         "nodeSelector": K8S, "affinity": K8S, "tolerations": K8S, "podSecurityContext": K8S,
                         "securityContext": K8S, "resources": K8S, "livenessProbe": K8S, "readinessProbe": K8S,
                         "startupProbe": K8S, "labels": K8S, "volumeMounts": K8S, "volumes": K8S,
                         "schedulerName": K8S}]},
    "postgresql": {"enabled": K8S, "image": K8S, "postgresqlHost": K8S, "postgresqlUsername": K8S,
                   "postgresqlPassword": K8S, "postgresqlDatabase": K8S, "postgresqlParams": K8S,
                   "postgresqlScheme": K8S, "service": {"port": K8S}},
    "generatePostgresqlPasswordSecret": K8S, "generateCeleryConfigSecret": K8S, "rabbitmq": K8S, "redis": K8S,
    "flower": K8S, "ingress": K8S, "imagePullSecrets": K8S, "computeLogManager": K8S, "scheduler": K8S,
    "runLauncher": {"type": K8S, "config": {"k8sRunLauncher": K8S, "celeryK8sRunLauncher": K8S,
                                            "customRunLauncher": K8S}},
    "pythonLogs": K8S, "dagsterDaemon": {"enabled": K8S, "image": K8S, "runCoordinator": {
        "enabled": K8S, "type": K8S, "config": K8S}, "heartbeatTolerance": K8S, "runMonitoring": K8S,
        "runRetries": K8S, "sensors": K8S, "schedules": K8S, "env": K8S, "envConfigMaps": K8S, "envSecrets": K8S,
        "resources": K8S, "nodeSelector": K8S, "tolerations": K8S, "affinity": K8S, "annotations": K8S},
    "busybox": K8S, "migrate": K8S, "telemetry": {"enabled": K8S}, "serviceAccount": K8S, "retention": K8S,
    "concurrency": {"enabled": K8S, "pools": {"defaultLimit": K8S, "granularity": K8S, "opGranularityRunBuffer": K8S},
                    "runs": {"maxConcurrentRuns": K8S, "tagConcurrencyLimits": K8S}},
    "additionalInstanceConfig": K8S,
}


def unknown_keys(values, schema, where: str = "") -> list[str]:
    """The key paths in `values` that `schema` (nested dicts; [item schema] for lists; None = free) lacks."""
    if schema is None:
        return []
    if isinstance(schema, list):
        return [k for i, item in enumerate(values or []) for k in unknown_keys(item, schema[0], f"{where}[{i}]")]
    found = []
    for key, value in (values or {}).items():
        path = f"{where}.{key}" if where else key
        found += [path] if key not in schema else unknown_keys(value, schema[key], path)
    return found


def snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def launcher_problems(values: dict) -> list[str]:
    """The chart hands runLauncher.config.k8sRunLauncher (camelCase) to dagster-k8s's K8sRunLauncher (snake_case)."""
    config = values["runLauncher"]["config"]["k8sRunLauncher"]
    fields = K8sRunLauncher.config_type()
    wrong = [k for k in config if snake(k) not in fields]
    run_fields = fields["run_k8s_config"].config_type.fields
    wrong += [f"runK8sConfig.{k}" for k in config.get("runK8sConfig", {}) if snake(k) not in run_fields]
    container = config.get("runK8sConfig", {}).get("containerConfig")
    if container:
        try:  # the run pod's container, through the parser dagster-k8s runs on it
            k8s_model_from_dict(kubernetes.client.V1Container,  # merged into the run container (named there)
                                {"name": "run", **{snake(k): v for k, v in container.items()}})
        except Exception as exc:
            wrong.append(f"runK8sConfig.containerConfig: {exc}")
    return wrong


def test_every_yaml_under_deploy_parses_to_something():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {f.name for f in files} >= {"values.yaml", "training-pod.yaml", "mlflow.yaml"}
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), f


def test_the_chart_version_is_the_dagster_version_dagster_k8s_pins():
    [pin] = [r for r in importlib.metadata.requires("dagster-k8s") if re.match(r"dagster\s*==", r)]
    assert (DEPLOY / "k8s" / "CHART_VERSION").read_text().strip() == pin.split("==")[1].strip()


def test_helm_values_use_only_the_charts_keys_and_the_launchers_fields():
    values = yaml.safe_load(VALUES.read_text())
    assert unknown_keys(values, CHART_KEYS) == []
    assert launcher_problems(values) == []
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "imagegen_pipeline.definitions"]
    # a typo anywhere is caught
    typo = copy.deepcopy(values)
    typo["concurrency"]["pools"]["defaultlimit"] = 1
    typo["dagster-user-deployments"]["deployments"][0]["envSecret"] = []
    assert unknown_keys(typo, CHART_KEYS) == ["dagster-user-deployments.deployments[0].envSecret",
                                              "concurrency.pools.defaultlimit"]
    typo["runLauncher"]["config"]["k8sRunLauncher"]["envSecret"] = []
    typo["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConf"] = {}
    typo["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resource"] = {}
    assert launcher_problems(typo) == ["envSecret", "runK8sConfig.containerConf", "runK8sConfig.containerConfig: "
                                       "Unexpected keys in model class V1Container: {'resource'}"]


def test_the_training_pod_spec_is_what_pipes_k8s_client_accepts_with_one_gpu_per_process():
    spec = TrainingLauncher(mode="k8s", nproc_per_node=4).pod_spec()
    pod = k8s_model_from_dict(kubernetes.client.V1PodSpec, spec)  # the parser PipesK8sClient runs on it
    assert pod.containers[0].resources.limits["nvidia.com/gpu"] == "4"
    assert pod.restart_policy == "Never" and pod.tolerations[0].key == "nvidia.com/gpu"
    assert TrainingLauncher(mode="k8s", nproc_per_node=4).command("python")[:4] == [
        "python", "-m", "torch.distributed.run", "--standalone"]
    assert [TrainingLauncher(mode=m).external for m in ("in_process", "torchrun", "k8s")] == [False, True, True]
    with pytest.raises(dg.Failure, match="use one of in_process, torchrun, k8s"):
        TrainingLauncher(mode="slurm").external
    broken = yaml.safe_load(TRAINING_POD.read_text())
    broken["containers"][0]["resources"]["limit"] = broken["containers"][0]["resources"].pop("limits")
    with pytest.raises(Exception, match="Unexpected keys"):
        k8s_model_from_dict(kubernetes.client.V1PodSpec, broken)


def test_no_deploy_file_binds_every_interface():
    """Servers bind loopback or the pod's own address ($(POD_IP)), never 0.0.0.0 (the project's promise)."""
    assert [f.name for f in DEPLOY.rglob("*") if f.is_file() and "0.0.0.0" in f.read_text()] == []
    mlflow_yaml = yaml.safe_load_all((DEPLOY / "k8s" / "mlflow.yaml").read_text())
    [container] = next(d for d in mlflow_yaml if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["command"][container["command"].index("--host") + 1] == "$(POD_IP)"
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in container["env"]


def test_the_dockerfile_copies_files_that_exist_and_serves_our_definitions():
    text = (DEPLOY / "Dockerfile").read_text()
    for line in (ln for ln in text.splitlines() if ln.startswith("COPY ")):
        for src in line.split()[1:-1]:
            assert (REPO_ROOT / src).exists(), src
    assert '"-m", "imagegen_pipeline.definitions"' in text and "requirements-team.txt" in text
