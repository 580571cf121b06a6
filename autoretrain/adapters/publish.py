"""`autoretrain publish`: register ml/pipeline.yml in Azure ML as the pipeline component the app submits.

`az ml component create --file ml/pipeline.yml` cannot do this: the file is a pipeline *job* (it also
runs locally), and the component schema rejects its typed inputs. So, with azure-ai-ml:

1. each step component the pipeline names (`component: ./components/prep.yml`, ...) is registered
   under its own name, at a version that is a digest of what it is made of: its YAML, the files of
   its `code` folder, its `additional_includes` and its conda file (`__pycache__` left out). The SDK
   uploads the code snapshot (the folder plus the includes) and registers the environment with it;
2. the pipeline job is loaded with each step pointing at that registered version
   (`azureml:NAME:VERSION`), turned into its pipeline component as Azure ML does on submission, every
   input required (the app binds each one, `champion` to a "no champion yet" marker for the first
   model: the service has not been seen to accept an unbound optional input), and registered as
   `name` (AUTORETRAIN_PIPELINE_COMPONENT) at a digest of the pipeline YAML and of its
   steps' versions.

A version already in the workspace (a GET of name and version finds it) is not registered again:
publishing an unchanged ml/ sends no PUT, and a change to any file a component is made of gives that
component, and so the pipeline, a new version. The app submits the pipeline's newest version (its
`latest` label).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar

import yaml
from azure.ai.ml import MLClient, load_component, load_job
from azure.ai.ml.entities import Component, PipelineComponent, PipelineJob
from azure.ai.ml.exceptions import MlException
from azure.core.exceptions import AzureError, ClientAuthenticationError, ResourceNotFoundError

from autoretrain.adapters.azureml import service_reason
from autoretrain.domain.errors import PublishError, WorkspaceError

__all__ = ["component_version", "pipeline_version", "publish"]

VERSION_LENGTH = 16
# The inputs the app binds on every job (AzureMLWorkspace.submit).
BOUND_INPUTS = ("data", "contract", "train_last", "champion")

_T = TypeVar("_T")


def publish(client: MLClient, *, pipeline: Path, name: str, out: TextIO, dry_run: bool = False) -> list[str]:
    """Register the pipeline's step components, then the pipeline component `name`; one line each on
    `out`. Returns their `NAME:VERSION`s, the pipeline's last. `dry_run` looks up, registers nothing.

    Everything is loaded and versioned before the first call: a YAML azure-ai-ml rejects, or a file
    one names that is missing, stops the publish before anything is registered."""
    steps = _steps(pipeline)
    components: dict[Path, Component] = {}
    for path in steps.values():
        if path not in components:
            component = _load(path, partial(load_component, path))
            if not component.name:
                raise PublishError(f"{path}: the component has no `name:`; it is registered under it.")
            component.version = component_version(path)
            components[path] = component
    refs = {node: f"{components[path].name}:{components[path].version}" for node, path in steps.items()}
    components[pipeline] = _pipeline_component(pipeline, refs, name=name, version=pipeline_version(pipeline, refs))
    return [_register(client, component, out, dry_run=dry_run) for component in components.values()]


def _pipeline_component(pipeline: Path, steps: dict[str, str], *, name: str, version: str) -> PipelineComponent:
    """The pipeline job at `pipeline` as the component `name:version`, each node of `steps` running the
    registered component `NAME:VERSION` it maps to."""
    overrides: list[dict[str, Any]] = [{f"jobs.{node}.component": f"azureml:{ref}"} for node, ref in steps.items()]
    job = _load(pipeline, partial(load_job, pipeline, params_override=overrides))
    if not isinstance(job, PipelineJob):
        raise PublishError(f"{pipeline}: not a pipeline job; it must say `type: pipeline`.")
    translated = job._to_component()
    # A translated job is an anonymous component; the app asks for this one by name.
    component = PipelineComponent(
        name=name,
        version=version,
        display_name=translated.display_name,
        description=job.description,
        inputs=translated.inputs,
        outputs=translated.outputs,
        jobs=translated.jobs,
    )
    for bound in BOUND_INPUTS:
        if bound not in component.inputs:
            raise PublishError(f"{pipeline}: the pipeline has no {bound!r} input, which the app binds.")
    return component


def component_version(path: Path) -> str:
    """A digest of a component: its YAML, its code folder, its additional includes and its conda file."""
    spec = _yaml(path)
    digest = hashlib.sha256()
    _add(digest, "component.yml", path)
    parts: list[tuple[str, str]] = []
    if isinstance(spec.get("code"), str):
        parts.append(("code", spec["code"]))
    parts += [("include", str(include)) for include in spec.get("additional_includes") or ()]
    environment = spec.get("environment")
    if isinstance(environment, dict) and isinstance(environment.get("conda_file"), str):
        parts.append(("conda", environment["conda_file"]))
    for kind, value in parts:
        if value.startswith("azureml:"):
            digest.update(f"{kind}\0{value}\0".encode())
            continue
        for label, file in _files(path.parent / value, path):
            _add(digest, f"{kind}/{label}", file)
    return digest.hexdigest()[:VERSION_LENGTH]


def pipeline_version(pipeline: Path, steps: dict[str, str]) -> str:
    """A digest of the pipeline YAML and of the registered `NAME:VERSION` each of its steps runs."""
    digest = hashlib.sha256()
    _add(digest, "pipeline.yml", pipeline)
    for node, ref in sorted(steps.items()):
        digest.update(f"{node}\0{ref}\0".encode())
    return digest.hexdigest()[:VERSION_LENGTH]


def _register(client: MLClient, component: Component, out: TextIO, *, dry_run: bool) -> str:
    ref = f"{component.name}:{component.version}"
    try:
        client.components.get(str(component.name), version=str(component.version))
    except ResourceNotFoundError:
        pass
    except (AzureError, MlException) as exc:
        raise _failed(f"look up component {ref}", exc) from exc
    else:
        out.write(f"already registered {ref}\n")
        return ref
    if dry_run:
        out.write(f"would register {ref}\n")
        return ref
    try:
        client.components.create_or_update(component)
    except (AzureError, MlException) as exc:
        raise _failed(f"register component {ref}", exc) from exc
    out.write(f"registered {ref}\n")
    return ref


def _failed(action: str, exc: BaseException) -> WorkspaceError:
    reason = service_reason(exc).rstrip(".")
    if getattr(exc, "status_code", None) in (401, 403):
        return WorkspaceError(
            f"{action} failed: {reason}; publishing needs AzureML Data Scientist on the workspace and Storage "
            "Blob Data Contributor on its storage account (infra/ grants both to AZURE_PRINCIPAL_ID)"
        )
    if isinstance(exc, ClientAuthenticationError):
        # No token at all: DefaultAzureCredential lists every credential it tried; the first line says it.
        first = reason.split(" Attempted credentials:")[0].rstrip(".")
        return WorkspaceError(f"{action} failed: {first}; sign in with `az login` (or `azd auth login`)")
    return WorkspaceError(f"{action} failed: {reason}")


def _steps(pipeline: Path) -> dict[str, Path]:
    """The pipeline's nodes that name a component YAML file, and that file."""
    jobs = _yaml(pipeline).get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        raise PublishError(f"{pipeline}: no `jobs:`; a pipeline names its steps there.")
    steps: dict[str, Path] = {}
    for node, job in jobs.items():
        component = job.get("component") if isinstance(job, dict) else None
        if not isinstance(component, str):
            raise PublishError(
                f"{pipeline}: jobs.{node}.component must name a component YAML file (./components/x.yml) or a "
                "registered azureml:NAME:VERSION."
            )
        if not component.startswith("azureml:"):
            steps[str(node)] = (pipeline.parent / component).resolve()
    return steps


def _yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PublishError(f"{path}: cannot read it ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        raise PublishError(f"{path}: not YAML ({' '.join(str(exc).split())}).") from None
    if not isinstance(loaded, dict):
        raise PublishError(f"{path}: not a YAML mapping.")
    return loaded


def _load(path: Path, load: Callable[[], _T]) -> _T:
    """`load()` (azure-ai-ml's load_job or load_component), its schema errors as one line."""
    try:
        return load()
    except (MlException, OSError) as exc:
        raise PublishError(f"{path}: azure-ai-ml cannot load it: {service_reason(exc)}") from None


def _files(root: Path, named_by: Path) -> Iterator[tuple[str, Path]]:
    """A file, or every file under a folder (without __pycache__), with its path relative to `root`."""
    if root.is_file():
        yield root.name, root
        return
    if not root.is_dir():
        raise PublishError(f"{named_by}: names {root}, which does not exist.")
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file.relative_to(root)
        if "__pycache__" not in relative.parts:
            yield relative.as_posix(), file


def _add(digest: hashlib._Hash, label: str, file: Path) -> None:
    data = file.read_bytes()
    digest.update(f"{label}\0{len(data)}\0".encode())
    digest.update(data)
