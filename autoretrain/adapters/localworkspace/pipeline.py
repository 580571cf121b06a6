"""`ml/pipeline.yml` as azure-ai-ml loads it, reduced to what a local runner needs, and its templating.

The YAML is loaded with azure-ai-ml's own `load_job`, so it is validated by the same schema Azure
ML uses; the result is turned into plain `Step`s in dependency order. Nothing here runs anything.

Loading imports azure-ai-ml and validates every component: about a second of CPU at each start of a
local workspace. The result is kept in the user's cache folder (`$XDG_CACHE_HOME/autoretrain`, or
`~/.cache/autoretrain`), named by a hash of every YAML file under the pipeline's folder and of the
azure-ai-ml version: the same files are loaded from there, any change is loaded and validated again
(a YAML that does not load is never cached). `AUTORETRAIN_PIPELINE_CACHE=off` turns it off.

Every expression of the YAML is read here, in one place: a step's input bindings
(`${{parent.inputs.x}}`, `${{parent.jobs.<step>.outputs.y}}`, a literal), its outputs promoted to the
pipeline's (`${{parent.outputs.z}}`), and its command's `${{inputs.x}}`, `${{outputs.y}}` and
`$[[ ... ]]` (kept only when every input in it has a value), which `Step.argv` fills in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from autoretrain.domain.errors import WorkspaceError

__all__ = ["FromParent", "FromStep", "Literal", "PipelineSpec", "Step", "cache_folder", "cache_root", "load_pipeline"]

_PARENT_INPUT = re.compile(r"^\$\{\{\s*parent\.inputs\.([A-Za-z0-9_]+)\s*\}\}$")
_STEP_OUTPUT = re.compile(r"^\$\{\{\s*parent\.jobs\.([A-Za-z0-9_]+)\.outputs\.([A-Za-z0-9_]+)\s*\}\}$")
_PARENT_OUTPUT = re.compile(r"^\$\{\{\s*parent\.outputs\.([A-Za-z0-9_]+)\s*\}\}$")
_INPUT_REF = re.compile(r"\$\{\{\s*inputs\.([A-Za-z0-9_]+)\s*\}\}")
_OUTPUT_REF = re.compile(r"\$\{\{\s*outputs\.([A-Za-z0-9_]+)\s*\}\}")
_OPTIONAL = re.compile(r"\$\[\[(.*?)\]\]")


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

    def bind(self, parent: Mapping[str, str], produced: Mapping[tuple[str, str], Path]) -> dict[str, str]:
        """The step's input values: the pipeline's inputs given (`parent`), the folders of the outputs
        earlier steps produced (`produced`, by step and output name), and literals."""
        values = {}
        for name, binding in self.inputs.items():
            if isinstance(binding, FromParent):
                if binding.input in parent:
                    values[name] = parent[binding.input]
                # else: an optional pipeline input left out (the champion of a first model); a
                # command that needs it anyway fails in argv, naming the input.
            elif isinstance(binding, FromStep):
                values[name] = str(produced[(binding.step, binding.output)])
            elif isinstance(binding, Literal):
                values[name] = binding.value
        return values

    def argv(self, python: str, inputs: Mapping[str, str], outputs: Mapping[str, Path]) -> list[str]:
        """The step's command with its inputs and outputs filled in, run by `python`."""

        def optional(match: re.Match[str]) -> str:
            names = _INPUT_REF.findall(match.group(1))
            return match.group(1) if all(n in inputs for n in names) else ""

        command = _OPTIONAL.sub(optional, self.command)
        argv = shlex.split(command)
        if not argv or argv[0] not in ("python", "python3"):
            raise WorkspaceError(f"step {self.name!r}: command must start with 'python', got {command!r}.")

        def one_input(m: re.Match[str]) -> str:
            if m.group(1) not in inputs:
                raise WorkspaceError(f"step {self.name!r}: input {m.group(1)!r} has no value.")
            return inputs[m.group(1)]

        def one_output(m: re.Match[str]) -> str:
            if m.group(1) not in outputs:
                raise WorkspaceError(f"step {self.name!r}: output {m.group(1)!r} is not declared.")
            return str(outputs[m.group(1)])

        return [python, *(_OUTPUT_REF.sub(one_output, _INPUT_REF.sub(one_input, a)) for a in argv[1:])]


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


_CACHE_FORMAT = 1  # bump when PipelineSpec or Step change shape


def cache_root() -> Path:
    """The user's cache folder for autoretrain: `$XDG_CACHE_HOME/autoretrain`, or `~/.cache/autoretrain`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoretrain"


def cache_folder() -> Path | None:
    """Where loaded pipelines are kept (None: not kept)."""
    if os.environ.get("AUTORETRAIN_PIPELINE_CACHE", "").lower() in ("off", "0", "false", "no"):
        return None
    return cache_root() / "pipelines"


def load_pipeline(path: Path, *, cache: Path | None = None) -> PipelineSpec:
    """The pipeline YAML, loaded and validated with azure-ai-ml and flattened into ordered steps; from
    `cache` when the same files were loaded before."""
    entry = cache / f"{_fingerprint(path)}.json" if cache is not None else None
    if entry is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return _from_json(json.loads(entry.read_text(encoding="utf-8")))
    spec = _load_with_azure_ai_ml(path)
    if entry is not None:
        with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(_to_json(spec), out)
            os.replace(temporary, entry)  # two loaders at once: one whole file wins
    return spec


def _fingerprint(path: Path) -> str:
    """A hash of every YAML file under the pipeline's folder (the pipeline, its components, their
    environments), their paths, and the azure-ai-ml version that validated them."""
    digest = hashlib.sha256(f"{_CACHE_FORMAT}|{_azure_ai_ml_version()}|{path.resolve()}".encode())
    root = path.resolve().parent
    for file in sorted(p for p in root.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file()):
        digest.update(f"|{file.relative_to(root)}|".encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:32]


def _azure_ai_ml_version() -> str:
    try:
        return metadata.version("azure-ai-ml")
    except metadata.PackageNotFoundError:
        return "none"


def _to_json(spec: PipelineSpec) -> dict[str, Any]:
    def binding(b: Binding) -> dict[str, str]:
        if isinstance(b, FromParent):
            return {"parent": b.input}
        if isinstance(b, FromStep):
            return {"step": b.step, "output": b.output}
        return {"literal": b.value}

    return {
        "path": str(spec.path), "experiment": spec.experiment, "inputs": list(spec.inputs),
        "outputs": list(spec.outputs),
        "steps": [{"name": s.name, "component": s.component, "command": s.command, "code": str(s.code),
                   "inputs": {k: binding(v) for k, v in s.inputs.items()}, "outputs": dict(s.outputs),
                   "promoted": dict(s.promoted), "includes": [str(i) for i in s.includes]} for s in spec.steps],
    }


def _from_json(data: dict[str, Any]) -> PipelineSpec:
    def binding(b: dict[str, str]) -> Binding:
        if "parent" in b:
            return FromParent(b["parent"])
        if "step" in b:
            return FromStep(b["step"], b["output"])
        return Literal(b["literal"])

    return PipelineSpec(
        path=Path(data["path"]), experiment=data["experiment"], inputs=tuple(data["inputs"]),
        outputs=tuple(data["outputs"]),
        steps=tuple(Step(name=s["name"], component=s["component"], command=s["command"], code=Path(s["code"]),
                         inputs={k: binding(v) for k, v in s["inputs"].items()}, outputs=dict(s["outputs"]),
                         promoted=dict(s["promoted"]), includes=tuple(Path(i) for i in s["includes"]))
                    for s in data["steps"]),
    )


def _load_with_azure_ai_ml(path: Path) -> PipelineSpec:
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
    steps = {name: _step(path, name, node) for name, node in job.jobs.items()}
    return PipelineSpec(
        path=path,
        experiment=job.experiment_name,
        inputs=tuple(job.inputs or {}),
        outputs=tuple(job.outputs or {}),
        steps=_order(steps),
    )


def _step(path: Path, name: str, node: Any) -> Step:
    """One of the pipeline's jobs (azure-ai-ml's node) as a Step."""
    component = node.component
    command = getattr(component, "command", None)
    if not isinstance(command, str):
        raise WorkspaceError(f"{path}: step {name!r} is not a command step; the local workspace runs only those.")
    base = Path(getattr(component, "base_path", None) or path.parent)
    inputs: dict[str, Binding] = {}
    for input_name, declared in (component.inputs or {}).items():
        given = node.inputs.get(input_name) if node.inputs else None
        binding = _binding(given, getattr(declared, "default", None))
        if binding is not None:
            inputs[input_name] = binding
    return Step(
        name=name,
        component=str(component.name),
        command=command,
        code=(base / str(component.code)).resolve() if component.code else base,
        inputs=inputs,
        outputs={out: str(decl.type) for out, decl in (component.outputs or {}).items()},
        promoted=_promoted(node),
        includes=_includes(path, name, base, component),
    )


def _promoted(node: Any) -> dict[str, str]:
    """The step's outputs bound to the pipeline's (`${{parent.outputs.z}}`): output -> pipeline output."""
    promoted: dict[str, str] = {}
    for out, raw in (node.outputs or {}).items():
        data = getattr(raw, "_data", raw)
        if isinstance(data, str) and (match := _PARENT_OUTPUT.match(data)):
            promoted[out] = match.group(1)
    return promoted


def _includes(path: Path, name: str, base: Path, component: Any) -> tuple[Path, ...]:
    includes = []
    for include in getattr(component, "additional_includes", None) or []:
        resolved = (base / str(include)).resolve()
        if not resolved.exists():
            raise WorkspaceError(f"{path}: step {name!r} includes {include!r}, which does not exist.")
        includes.append(resolved)
    return tuple(includes)
