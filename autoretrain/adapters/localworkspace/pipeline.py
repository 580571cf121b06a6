"""`ml/pipeline.yml` as azure-ai-ml loads it, reduced to what a local runner needs.

The YAML is loaded with azure-ai-ml's own `load_job`, so it is validated by the same schema Azure
ML uses; the result is turned into plain `Step`s in dependency order. Nothing here runs anything.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoretrain.domain.errors import WorkspaceError

__all__ = ["FromParent", "FromStep", "Literal", "PipelineSpec", "Step", "load_pipeline"]

_PARENT_INPUT = re.compile(r"^\$\{\{\s*parent\.inputs\.([A-Za-z0-9_]+)\s*\}\}$")
_STEP_OUTPUT = re.compile(r"^\$\{\{\s*parent\.jobs\.([A-Za-z0-9_]+)\.outputs\.([A-Za-z0-9_]+)\s*\}\}$")
_PARENT_OUTPUT = re.compile(r"^\$\{\{\s*parent\.outputs\.([A-Za-z0-9_]+)\s*\}\}$")


@dataclass(frozen=True, slots=True)
class FromParent:
    input: str


@dataclass(frozen=True, slots=True)
class FromStep:
    step: str
    output: str


@dataclass(frozen=True, slots=True)
class Literal:
    value: str


Binding = FromParent | FromStep | Literal


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    component: str
    command: str
    code: Path
    inputs: Mapping[str, Binding]
    outputs: Mapping[str, str]
    """output name -> its type (uri_folder, mlflow_model, ...)"""
    promoted: Mapping[str, str] = field(default_factory=dict)
    """output name -> the pipeline output it is bound to"""
    includes: tuple[Path, ...] = ()
    """the component's additional_includes, resolved: copied into the code snapshot, as Azure ML does"""

    def snapshot(self, target: Path) -> Path:
        """The step's code as Azure ML uploads it: `code` plus each additional include at the root."""
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(self.code, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for include in self.includes:
            if include.is_dir():
                shutil.copytree(include, target / include.name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(include, target / include.name)
        return target


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    path: Path
    experiment: str | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    steps: tuple[Step, ...]


def _binding(raw: Any, default: Any) -> Binding | None:
    data = getattr(raw, "_data", raw)
    if data is None:
        return None if default is None else Literal(str(default))
    if isinstance(data, str):
        if match := _PARENT_INPUT.match(data):
            return FromParent(match.group(1))
        if match := _STEP_OUTPUT.match(data):
            return FromStep(match.group(1), match.group(2))
        if data.startswith("${{"):
            raise WorkspaceError(f"pipeline binding {data!r} is not supported by the local workspace.")
    return Literal(str(data))


def _order(steps: dict[str, Step]) -> tuple[Step, ...]:
    ordered: list[Step] = []
    state: dict[str, int] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise WorkspaceError(f"pipeline steps depend on each other in a cycle: {' -> '.join((*chain, name))}.")
        state[name] = 1
        for binding in steps[name].inputs.values():
            if isinstance(binding, FromStep):
                if binding.step not in steps:
                    raise WorkspaceError(f"step {name!r} reads from unknown step {binding.step!r}.")
                visit(binding.step, (*chain, name))
        state[name] = 2
        ordered.append(steps[name])

    for name in sorted(steps):
        visit(name, ())
    return tuple(ordered)


def load_pipeline(path: Path) -> PipelineSpec:
    """Load and validate the pipeline YAML with azure-ai-ml, and flatten it into ordered steps."""
    # azure-ai-ml logs warnings about its experimental classes on import; they are not ours.
    for name in ("azure.ai.ml", "azure.ai.ml._utils._experimental"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from azure.ai.ml import load_job

    try:
        job: Any = load_job(path)
    except Exception as exc:  # the SDK raises several unrelated types for a bad YAML
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkspaceError(f"{path}: azure-ai-ml cannot load it: {first}") from exc
    steps: dict[str, Step] = {}
    for name, node in job.jobs.items():
        component = node.component
        command = getattr(component, "command", None)
        if not isinstance(command, str):
            raise WorkspaceError(f"{path}: step {name!r} is not a command step; the local workspace runs only those.")
        base = Path(getattr(component, "base_path", None) or path.parent)
        code = (base / str(component.code)).resolve() if component.code else base
        declared_inputs = component.inputs or {}
        inputs: dict[str, Binding] = {}
        for input_name, declared in declared_inputs.items():
            given = node.inputs.get(input_name) if node.inputs else None
            binding = _binding(given, getattr(declared, "default", None))
            if binding is not None:
                inputs[input_name] = binding
        outputs = {out: str(decl.type) for out, decl in (component.outputs or {}).items()}
        includes = []
        for include in getattr(component, "additional_includes", None) or []:
            resolved = (base / str(include)).resolve()
            if not resolved.exists():
                raise WorkspaceError(f"{path}: step {name!r} includes {include!r}, which does not exist.")
            includes.append(resolved)
        promoted: dict[str, str] = {}
        for out, raw in (node.outputs or {}).items():
            data = getattr(raw, "_data", raw)
            if isinstance(data, str) and (match := _PARENT_OUTPUT.match(data)):
                promoted[out] = match.group(1)
        steps[name] = Step(
            name=name,
            component=str(component.name),
            command=command,
            code=code,
            inputs=inputs,
            outputs=outputs,
            promoted=promoted,
            includes=tuple(includes),
        )
    return PipelineSpec(
        path=path,
        experiment=job.experiment_name,
        inputs=tuple(job.inputs or {}),
        outputs=tuple(job.outputs or {}),
        steps=_order(steps),
    )
