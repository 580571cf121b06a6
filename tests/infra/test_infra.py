"""Offline checks of infra/: Bicep syntax, checkov, app-setting names, least privilege, no secrets, what
azd deploys (service tag, outputs, parameters, modules) and what the postdeploy hooks do.

Bicep cannot be compiled here, so the Bicep files are parsed with pycep-parser and scanned with
checkov, both installed in their own environment (.venv-iac, made by `make setup` from
requirements-iac.txt) and called as subprocesses.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoretrain.events import COMMITTED_APIS
from autoretrain.settings import SETTING_NAMES, Settings, WorkspaceKind

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
IAC_BIN = ROOT / ".venv-iac" / ("Scripts" if sys.platform == "win32" else "bin")
IAC_PYTHON = IAC_BIN / ("python.exe" if sys.platform == "win32" else "python")
CHECKOV = IAC_BIN / ("checkov.cmd" if sys.platform == "win32" else "checkov")
BICEP_JSON = Path(__file__).resolve().parent / "_bicep_json.py"
LOCAL_SETTINGS_EXAMPLE = ROOT / "local.settings.json.example"
HOOKS = {"postdeploy.sh": "sh", "postdeploy.ps1": "ps1"}

# azd writes these into the environment's .env itself (azure-dev cli/azd/pkg/environment/environment.go:
# EnvNameEnvVarName, LocationEnvVarName, SubscriptionIdEnvVarName), and hooks get that .env
# (pkg/ext/hooks_runner.go: hookEnv.Environ()), beside the provisioning outputs
# (pkg/infra/provisioning/manager.go: UpdateEnvironment).
AZD_PROVIDED = {"AZURE_ENV_NAME", "AZURE_LOCATION", "AZURE_SUBSCRIPTION_ID"}
# azd substitutes these in main.parameters.json only, with the signed-in principal
# (pkg/infra/provisioning/bicep/bicep_provider.go: evalParamEnvSubst); they are not in the hook's environment.
AZD_PARAMETER_ONLY = {"AZURE_PRINCIPAL_ID", "AZURE_PRINCIPAL_TYPE"}
# How each hook may name azd's subscription to az.
SUBSCRIPTION_REFS = {"$AZURE_SUBSCRIPTION_ID", "${AZURE_SUBSCRIPTION_ID}", "$env:AZURE_SUBSCRIPTION_ID"}
AZD_SERVICE_TAG = "azd-service-name"
# Workspace API versions whose schema declares properties.systemDatastoresAuthMode with the enum
# AccessKey | Identity | UserDelegationSAS (azure-rest-api-specs, specification/machinelearningservices/.../
# workspaceRP.json; the generated index Azure/bicep-types-az lists the same). The stable 2024-10-01 lacks it.
SYSTEM_DATASTORES_AUTH_MODE_VERSIONS = {
    "2024-10-01-preview", "2025-01-01-preview", "2025-04-01-preview", "2025-06-01", "2025-07-01-preview",
    "2025-09-01", "2025-10-01-preview", "2025-12-01", "2026-01-15-preview", "2026-03-01", "2026-03-15-preview",
    "2026-05-01", "2026-05-15-preview",
}
# The settings `autoretrain.cli publish` reads.
PUBLISH_SETTINGS = (
    "AUTORETRAIN_AZUREML_SUBSCRIPTION_ID",
    "AUTORETRAIN_AZUREML_RESOURCE_GROUP",
    "AUTORETRAIN_AZUREML_WORKSPACE",
    "AUTORETRAIN_PIPELINE_COMPONENT",
)

# Names only a laptop sets: a connection string to Azurite, the local workspace folder, the local host.
LOCAL_ONLY = {"AUTORETRAIN_STORAGE", "AUTORETRAIN_HOME", "AUTORETRAIN_HOST_URL"}
# Names the Functions platform and the Azure SDKs read; allowed in Bicep beside SETTING_NAMES.
# PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: the Python worker's switch for OpenTelemetry to Application Insights.
PLATFORM_NAME = re.compile(
    r"^(AzureWebJobsStorage__(accountName|credential|clientId)|(PYTHON_)?APPLICATIONINSIGHTS_[A-Z_]+)$"
)

ROLE_NAMES = {
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "f6c7c914-8db3-469d-8ca1-694a8f32e121": "AzureML Data Scientist",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
}
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Each pattern is a way a secret gets into a template. Bicep comments are scanned too, except for the
# words "connection string", which comments use to explain why none is needed.
FORBIDDEN = {
    "listKeys(": re.compile(r"listKeys\s*\(", re.IGNORECASE),
    "AccountKey=": re.compile(r"AccountKey\s*=", re.IGNORECASE),
    "SharedAccessSignature": re.compile(r"SharedAccessSignature", re.IGNORECASE),
    "allowSharedKeyAccess: true": re.compile(r"allowSharedKeyAccess\s*:\s*true", re.IGNORECASE),
    "sas token": re.compile(r"\bsas_?token\b|\bsasToken\b", re.IGNORECASE),
}
CONNECTION_STRING = re.compile(r"connection[\s_-]?string", re.IGNORECASE)
# The one connection string allowed: Application Insights' names the resource and its ingestion
# endpoint and carries no secret (local auth is disabled; ingestion needs an Entra token).
ALLOWED_CONNECTION_STRING_LINE = (
    "APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString"
)


def _require_iac_env() -> None:
    if not IAC_PYTHON.exists() or not CHECKOV.exists():
        pytest.fail(
            f"{ROOT / '.venv-iac'} is missing or incomplete; run `make setup` (it installs "
            "requirements-iac.txt: checkov and pycep-parser)."
        )


def _parse(paths: list[Path]) -> dict[str, dict[str, Any]]:
    _require_iac_env()
    proc = subprocess.run(
        [str(IAC_PYTHON), str(BICEP_JSON), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"pycep-parser failed to run:\n{proc.stderr}"
    return json.loads(proc.stdout)


def _bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@pytest.fixture(scope="module")
def trees() -> dict[str, dict[str, Any]]:
    """The parsed tree of every Bicep file under infra/, by path relative to infra/ ("modules/x.bicep")."""
    results = _parse(_bicep_files())
    broken = {path: r["error"] for path, r in results.items() if not r["ok"]}
    assert not broken, f"Bicep files that do not parse: {json.dumps(broken, indent=2)}"
    return {Path(path).relative_to(INFRA).as_posix(): r["tree"] for path, r in results.items()}


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    """checkov's JSON report over infra/ (run once: it takes about half a minute)."""
    _require_iac_env()
    proc = subprocess.run(
        [
            str(CHECKOV),
            "--framework",
            "bicep",
            "--skip-download",
            "--compact",
            "-d",
            str(INFRA),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov printed no JSON (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    reports = report if isinstance(report, list) else [report]
    bicep = [r for r in reports if r.get("check_type") == "bicep"]
    assert len(bicep) == 1, (
        f"expected one bicep report from checkov, got {[r.get('check_type') for r in reports]}"
    )
    return bicep[0]


# --- helpers that read the parsed Bicep -------------------------------------------------------------


def _resources(tree: Mapping[str, Any], type_: str) -> dict[str, Mapping[str, Any]]:
    return {name: r for name, r in tree["resources"].items() if r["type"] == type_ and not r.get("existing")}


def _body(resource: Mapping[str, Any]) -> Mapping[str, Any]:
    """A resource's body (name, scope, properties), also for `[for ...]` loops and `if` conditions."""
    config = resource["config"]
    while "config" in config and ("loop_type" in config or "condition" in config):
        config = config["config"]
    return config


def _module_call(tree: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    calls = [m for m in tree["modules"].values() if m["detail"]["path"] == path]
    assert len(calls) == 1, f"main.bicep should call {path} once, found {len(calls)}"
    return calls[0]


def _literal(tree: Mapping[str, Any], value: Any, *, depth: int = 0) -> str | None:
    """The string a Bicep value resolves to statically, or None for an expression known only at deploy.

    pycep-parser writes both a string literal and a bare identifier as a Python str; an identifier is
    told apart by being the name of a parameter or variable of the same file.
    """
    if not isinstance(value, str) or depth > 5:
        return None
    if value in tree.get("parameters", {}):
        return _literal(tree, tree["parameters"][value].get("default"), depth=depth + 1)
    if value in tree.get("variables", {}):
        return _literal(tree, tree["variables"][value]["value"], depth=depth + 1)
    if "${" in value:
        return None
    return value


def _app_settings(trees: Mapping[str, Mapping[str, Any]]) -> dict[str, str | None]:
    """The function app's settings as deployed: name -> static value (None where it is an expression).

    Follows what the `appsettings` config resource really receives: `union(...)` of the module's
    parameter (filled by main.bicep's module call) and of the module's own variables.
    """
    main, module = trees["main.bicep"], trees["modules/function-app.bicep"]
    configs = [
        r
        for r in _resources(module, "Microsoft.Web/sites/config").values()
        if r["config"]["name"] == "appsettings"
    ]
    assert len(configs) == 1, "function-app.bicep should have exactly one appsettings config resource"
    properties = configs[0]["config"]["properties"]
    if isinstance(properties, dict) and "function" in properties:
        assert properties["function"]["type"] == "union", f"unexpected appsettings expression: {properties}"
        parts = list(properties["function"]["parameters"].values())
    else:
        parts = [properties]
    call = _module_call(main, "modules/function-app.bicep")
    settings: dict[str, str | None] = {}
    for part in parts:
        if isinstance(part, str) and part in module["parameters"]:
            source, values = main, call["config"]["params"][part]
        elif isinstance(part, str) and part in module["variables"]:
            source, values = module, module["variables"][part]["value"]
        else:
            source, values = module, part
        assert isinstance(values, dict), f"cannot read app settings statically from {part!r}: {values!r}"
        for name, value in values.items():
            settings[name] = _literal(source, value)
    return settings


def _strip_bicep_comment(line: str) -> str:
    # Good enough for these files: '//' inside a string literal would be a URL, which we never use.
    return line.split("//", 1)[0]


def _secret_findings(path: str, text: str) -> list[str]:
    findings = []
    for number, line in enumerate(text.splitlines(), 1):
        for label, pattern in FORBIDDEN.items():
            if pattern.search(line):
                findings.append(f"{path}:{number}: {label}: {line.strip()}")
        code = _strip_bicep_comment(line) if path.endswith(".bicep") else line
        if CONNECTION_STRING.search(code) and code.strip() != ALLOWED_CONNECTION_STRING_LINE:
            findings.append(f"{path}:{number}: connection string: {line.strip()}")
    return findings


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _unquote(name: str) -> str:
    """A Bicep object key as written: pycep keeps the quotes of 'azd-service-name'."""
    return name[1:-1] if len(name) >= 2 and name[0] == name[-1] == "'" else name


def _module_paths_calling(trees: Mapping[str, Mapping[str, Any]], path: str) -> list[Mapping[str, Any]]:
    """main.bicep's calls of the module at `path` (relative to infra/)."""
    return [m for m in trees["main.bicep"]["modules"].values() if m["detail"]["path"] == path]


def _resolve(trees: Mapping[str, Mapping[str, Any]], path: str, value: Any, *, depth: int = 0) -> list[tuple[str, Any]]:
    """The (file, value) pairs an identifier stands for, following parameters into main.bicep's module calls
    and variables into their values; anything else stands for itself."""
    tree = trees[path]
    if not isinstance(value, str) or depth > 6:
        return [(path, value)]
    if value in tree.get("parameters", {}):
        calls = _module_paths_calling(trees, path) if path != "main.bicep" else []
        passed = [c["config"]["params"][value] for c in calls if value in c["config"]["params"]]
        if passed:
            return [r for v in passed for r in _resolve(trees, "main.bicep", v, depth=depth + 1)]
        return _resolve(trees, path, tree["parameters"][value].get("default"), depth=depth + 1)
    if value in tree.get("variables", {}):
        return _resolve(trees, path, tree["variables"][value]["value"], depth=depth + 1)
    return [(path, value)]


def _service_tags(trees: Mapping[str, Mapping[str, Any]], path: str, value: Any, *, depth: int = 0) -> list[str | None]:
    """The azd-service-name values a `tags:` expression gives its resource (None where not static)."""
    found: list[str | None] = []
    for source, resolved in _resolve(trees, path, value, depth=depth):
        if isinstance(resolved, dict):
            for key, item in resolved.items():
                if _unquote(key) == AZD_SERVICE_TAG:
                    literals = [v for _, v in _resolve(trees, source, item, depth=depth + 1)]
                    found += [v if isinstance(v, str) and "${" not in v else None for v in literals]
                elif depth < 6:
                    found += _service_tags(trees, source, item, depth=depth + 1)
        elif isinstance(resolved, list) and depth < 6:
            for item in resolved:
                found += _service_tags(trees, source, item, depth=depth + 1)
        elif isinstance(resolved, str) and resolved != value and depth < 6:
            found += _service_tags(trees, source, resolved, depth=depth + 1)
    return found


def _azure_yaml() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert isinstance(document, dict)
    return document


# --- helpers that read the hook scripts ---------------------------------------------------------------
#
# The hooks are read as text, the way a reviewer reads them: continuation lines joined, string literals set
# aside (so that a message quoting `az extension add` is not taken for a command), comments dropped.

_STRINGS = {
    "sh": re.compile(r'"(?:\\.|[^"\\])*"|\'[^\']*\''),
    "ps1": re.compile(r'"(?:`.|[^"`])*"|\'(?:\'\'|[^\'])*\''),
}
_CONTINUATION = {"sh": "\\", "ps1": "`"}
# `az` where a command starts: line start, after ; & | ( { ! = or $(, or after a shell keyword.
_AZ_COMMAND = re.compile(r"(?:^|[;&|({!=]|\$\(|\b(?:then|do|else|if|until|while)\b)\s*az(?=\s|$)")
_COMMAND_END = re.compile(r"[;|)}]|&&")


@dataclass(frozen=True)
class _Line:
    """One logical line of a hook: `code` has each string literal replaced by `\\x00<n>\\x00`."""

    number: int
    text: str
    code: str
    strings: tuple[str, ...]

    def resolved(self, code: str | None = None) -> str:
        """`code` (default: the whole line) with the string literals put back, without their quotes."""
        return re.sub(
            r"\x00(\d+)\x00", lambda m: self.strings[int(m.group(1))][1:-1], self.code if code is None else code
        )


@dataclass(frozen=True)
class _AzCall:
    line: int
    args: str  # everything after `az`, strings put back without quotes
    subscription: str | None


def _hook_lines(text: str, kind: str) -> list[_Line]:
    lines: list[_Line] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            if raw.lstrip().startswith("#") or not raw.strip():
                continue
            start = number
        if raw.rstrip().endswith(_CONTINUATION[kind]):
            pending.append(raw.rstrip()[:-1])
            continue
        if kind == "ps1" and raw.rstrip().endswith(","):  # PowerShell continues a list after a comma
            pending.append(raw)
            continue
        pending.append(raw)
        logical = " ".join(part.strip() for part in pending)
        pending = []
        strings: list[str] = []

        def keep(match: re.Match[str], strings: list[str] = strings) -> str:
            strings.append(match.group(0))
            return f"\x00{len(strings) - 1}\x00"

        code = _STRINGS[kind].sub(keep, logical)
        code = re.sub(r"(^|\s)#.*$", "", code)
        lines.append(_Line(start, logical, code, tuple(strings)))
    return lines


def _hook(script: str) -> tuple[str, list[_Line]]:
    text = (INFRA / "hooks" / script).read_text()
    return text, _hook_lines(text, HOOKS[script])


def _az_calls(lines: list[_Line]) -> list[_AzCall]:
    calls = []
    for line in lines:
        for match in _AZ_COMMAND.finditer(line.code):
            rest = line.code[match.end():]
            end = _COMMAND_END.search(rest)
            args = line.resolved(rest[: end.start()] if end else rest).strip()
            subscription = re.search(r"--subscription\s+(\S+)", args)
            calls.append(_AzCall(line.number, args, subscription.group(1) if subscription else None))
    return calls


def _checked_names(lines: list[_Line], kind: str) -> set[str]:
    """The variables the hook refuses to run without (its `for name in ...` / `$names = ...` list)."""
    for line in lines:
        if kind == "sh" and re.match(r"\s*for name in ", line.code):
            return set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", line.code.split(";")[0]))
        if kind == "ps1" and re.match(r"\s*\$names\s*=", line.code):
            return {s.strip("'\"") for s in line.strings}
    return set()


def _env_reads(text: str, kind: str) -> set[str]:
    """Every environment variable the hook reads."""
    pattern = r"\$\{?([A-Z][A-Z0-9_]+)" if kind == "sh" else r"\$env:([A-Z][A-Z0-9_]+)"
    return set(re.findall(pattern, text)) | _checked_names(_hook_lines(text, kind), kind)


def _int_assignments(lines: list[_Line], kind: str) -> dict[str, int]:
    pattern = r"\s*(\w+)=(\d+)\s*$" if kind == "sh" else r"\s*\$(\w+)\s*=\s*(\d+)\s*$"
    return {m.group(1): int(m.group(2)) for line in lines if (m := re.match(pattern, line.code))}


def _enclosing_loop(lines: list[_Line], index: int, kind: str) -> list[_Line]:
    """The innermost loop (while/until ... done, or for/while (...) { ... }) around lines[index]."""
    start = re.compile(r"\s*(while|until)\b" if kind == "sh" else r"\s*(for|while)\s*\(")
    for first in range(index, -1, -1):
        if not start.match(lines[first].code):
            continue
        depth = 0
        for last in range(first, len(lines)):
            code = lines[last].code
            if kind == "sh":
                depth += len(re.findall(r"\bdo\b", code)) - len(re.findall(r"\bdone\b", code))
            else:
                depth += code.count("{") - code.count("}")
            if depth <= 0 and last > first:
                break
        if last >= index:
            return lines[first : last + 1]
    return []


def _deploy_gaps(
    trees: Mapping[str, Mapping[str, Any]],
    parameters: Mapping[str, Any],
    azure_yaml: Mapping[str, Any],
    hooks: Mapping[str, str],
    exists: Callable[[str], bool],
) -> list[str]:
    """What `azd up` would miss, checked without the Bicep CLI: files, parameters, module wiring and the
    outputs azure.yaml and the hooks read. `exists` answers for paths relative to the repository root."""
    gaps: list[str] = []
    main = trees["main.bicep"]
    outputs = set(main["outputs"])
    infra = azure_yaml.get("infra", {})
    entry = f"{infra.get('path', 'infra')}/{infra.get('module', 'main')}"
    for needed in (f"{entry}.bicep", f"{entry}.parameters.json"):
        if not exists(needed):
            gaps.append(f"azure.yaml: {needed} does not exist")

    # main.parameters.json against main.bicep's parameters, and what azd fills in.
    for name, spec in parameters.items():
        if name not in main["parameters"]:
            gaps.append(f"main.parameters.json: {name} is not a parameter of main.bicep")
        for variable, default in re.findall(r"\$\{([A-Z][A-Z0-9_]*)(=[^}]*)?\}", json.dumps(spec)):
            if not default and variable not in AZD_PROVIDED | AZD_PARAMETER_ONLY:
                gaps.append(f"main.parameters.json: {name} needs ${{{variable}}}, which azd does not set")
    for name, spec in main["parameters"].items():
        if spec.get("default") is None and name not in parameters:
            gaps.append(f"main.bicep: required parameter {name} is not in main.parameters.json")

    # Modules: the file, its required parameters, no unknown ones, and the outputs main.bicep reads.
    for symbol, call in main["modules"].items():
        path = call["detail"]["path"]
        if not exists(f"infra/{path}") or path not in trees:
            gaps.append(f"main.bicep: module {symbol} calls {path}, which does not exist")
            continue
        declared = trees[path]["parameters"]
        passed = call["config"].get("params", {})
        required = {n for n, p in declared.items() if p.get("default") is None}
        gaps += [f"main.bicep: module {symbol} does not pass {n} to {path}" for n in sorted(required - set(passed))]
        unknown = sorted(set(passed) - set(declared))
        gaps += [f"main.bicep: module {symbol} passes {n}, unknown to {path}" for n in unknown]
    for value in _walk(main):
        references: list[tuple[str, str]] = []
        if isinstance(value, dict) and value.get("type") == "property_accessor":
            first, second = value["operands"]["operand_1"], value["operands"]["operand_2"]
            if first in main["modules"] and isinstance(second, dict) and "operator" in second:
                inner = second["operator"]["operands"]
                if inner["operand_1"] == "outputs":
                    references.append((first, inner["operand_2"]))
        elif isinstance(value, str):
            references += re.findall(r"\b(\w+)\.outputs\.(\w+)", value)
        for symbol, output in references:
            path = main["modules"].get(symbol, {}).get("detail", {}).get("path")
            if path in trees and output not in trees[path]["outputs"]:
                gaps.append(f"main.bicep: {symbol}.outputs.{output} is not an output of {path}")

    # What azure.yaml and the hooks read from the azd environment.
    for variable in sorted(set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", json.dumps(azure_yaml)))):
        if variable not in outputs | AZD_PROVIDED:
            gaps.append(f"azure.yaml reads {variable}, which is neither a main.bicep output nor set by azd")
    for script, text in hooks.items():
        kind = HOOKS[script]
        for variable in sorted(_env_reads(text, kind) - outputs - AZD_PROVIDED):
            gaps.append(f"{script} reads {variable}, which is neither a main.bicep output nor set by azd")
        # The templates the hook deploys: the file, and the parameters it passes.
        for call in _az_calls(_hook_lines(text, kind)):
            template = re.search(r"--template-file\s+(\S+)", call.args)
            if not template:
                continue
            path = template.group(1)
            relative = path.removeprefix("infra/")
            if not exists(path) or relative not in trees:
                gaps.append(f"{script}: {path} does not exist")
                continue
            passed = set(re.findall(r"(?:^|\s)(\w+)=", call.args.split("--parameters", 1)[-1]))
            declared = trees[relative]["parameters"]
            required = {n for n, p in declared.items() if p.get("default") is None}
            gaps += [f"{script}: {path} needs {n}, which the hook does not pass" for n in sorted(required - passed)]
            gaps += [f"{script}: {path} has no parameter {n}" for n in sorted(passed - declared.keys())]
    return gaps


# --- syntax -----------------------------------------------------------------------------------------


class TestBicepSyntax:
    def test_every_bicep_file_parses(self, trees: dict[str, Any]) -> None:
        """pycep-parser reads every .bicep file under infra/, the entry points and each module."""
        assert {"main.bicep", "event-subscriptions.bicep"} <= trees.keys()
        assert sum(1 for path in trees if path.startswith("modules/")) >= 6

    def test_the_parser_rejects_broken_bicep(self, tmp_path: Path) -> None:
        """A file with a syntax error fails to parse, so a passing parse means something."""
        good = tmp_path / "good.bicep"
        good.write_text("param name string\noutput upper string = toUpper(name)\n")
        broken = tmp_path / "broken.bicep"
        broken.write_text(
            "resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'x'\n"
        )
        results = _parse([good, broken])
        assert results[str(good)]["ok"] is True
        assert results[str(broken)]["ok"] is False
        assert "Unexpected" in results[str(broken)]["error"]

    def test_main_calls_only_modules_that_exist(self, trees: dict[str, Any]) -> None:
        """Every module path in main.bicep names a file that was parsed."""
        paths = {m["detail"]["path"] for m in trees["main.bicep"]["modules"].values()}
        assert paths and paths <= trees.keys(), f"missing modules: {paths - trees.keys()}"


# --- checkov ----------------------------------------------------------------------------------------


class TestCheckov:
    def test_no_failed_checks(self, checkov_report: dict[str, Any]) -> None:
        """checkov finds no failed check in infra/, and it did check something."""
        summary = checkov_report["summary"]
        failed = [
            f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
            for c in checkov_report["results"]["failed_checks"]
        ]
        assert summary["failed"] == 0, "checkov failed checks:\n" + "\n".join(failed)
        assert summary["parsing_errors"] == 0
        assert summary["passed"] > 0

    def test_every_skip_gives_a_reason(self, checkov_report: dict[str, Any]) -> None:
        """Each suppressed check carries its justification in the skip comment."""
        skipped = checkov_report["results"]["skipped_checks"]
        vague = [
            f"{c['check_id']} {c['resource']}"
            for c in skipped
            if len(c.get("check_result", {}).get("suppress_comment", "").strip()) < 30
        ]
        assert not vague, f"skips without a real reason: {vague}"

    def test_every_skip_comment_is_applied(self, checkov_report: dict[str, Any]) -> None:
        """No skip comment sits outside a resource, where checkov would silently ignore it."""
        comments = sum(len(re.findall(r"checkov:skip=", path.read_text())) for path in _bicep_files())
        assert comments == len(checkov_report["results"]["skipped_checks"])


# --- app settings -----------------------------------------------------------------------------------


class TestAppSettings:
    def test_bicep_sets_only_known_names(self, trees: dict[str, Any]) -> None:
        """Every setting in Bicep is one of SETTING_NAMES or a platform name (host storage, App Insights)."""
        unknown = [n for n in _app_settings(trees) if n not in SETTING_NAMES and not PLATFORM_NAME.match(n)]
        assert not unknown, f"app settings unknown to autoretrain.settings.SETTING_NAMES: {unknown}"

    def test_bicep_sets_every_name_but_the_local_ones(self, trees: dict[str, Any]) -> None:
        """Each AUTORETRAIN_* name is set in Azure, except the three that only make sense on a laptop."""
        in_bicep = set(_app_settings(trees))
        names = {n for n in SETTING_NAMES if n.startswith("AUTORETRAIN_")}
        assert names - in_bicep == LOCAL_ONLY
        assert "AZURE_CLIENT_ID" in in_bicep

    def test_bicep_sets_no_secret_and_no_local_setting(self, trees: dict[str, Any]) -> None:
        """No connection string or key in the settings: storage is reached by URI with the identity."""
        settings = _app_settings(trees)
        assert not LOCAL_ONLY & settings.keys()
        assert "AzureWebJobsStorage" not in settings
        assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
        for name, value in settings.items():
            assert value is None or not re.search(r"AccountKey|SharedAccessSignature|sig=", value), name

    def test_outputs_use_known_names(self, trees: dict[str, Any]) -> None:
        """The AUTORETRAIN_* outputs the hook reads are setting names too."""
        outputs = [n for n in trees["main.bicep"]["outputs"] if n.startswith("AUTORETRAIN_")]
        assert outputs and not [n for n in outputs if n not in SETTING_NAMES]

    def test_settings_accept_the_bicep_values(
        self, trees: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Settings.from_env reads the Azure settings as Bicep writes them (placeholders for expressions)."""
        settings = _app_settings(trees)
        contract = settings["AUTORETRAIN_CONTRACT"]
        assert contract and not Path(contract).is_absolute(), "the contract path is relative to the app root"
        # The app root on Azure: the contract file at the path Bicep names.
        (tmp_path / contract).parent.mkdir(parents=True)
        (tmp_path / contract).write_text("placeholder\n")
        monkeypatch.chdir(tmp_path)
        env = {
            name: value if value is not None else f"deploy-time-{i}"
            for i, (name, value) in enumerate(settings.items())
        }
        parsed = Settings.from_env(env)
        assert parsed.workspace is WorkspaceKind.AZUREML
        assert parsed.storage_connection is None
        assert parsed.blob_service_uri and parsed.table_service_uri
        assert (parsed.incoming_container, parsed.quarantine_container, parsed.datasets_container) == (
            "incoming",
            "quarantine",
            "datasets",
        )
        assert parsed.ledger_table == "autoretrainledger"
        assert parsed.pipeline_component == "autoretrain_pipeline"

    def test_local_example_uses_known_names(self) -> None:
        """local.settings.json.example names only SETTING_NAMES (plus the host's own settings)."""
        document = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text())
        assert document["IsEncrypted"] is False
        values = document["Values"]
        assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
        host_names = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage", "AzureWebJobsFeatureFlags"}
        unknown = [n for n in values if n not in SETTING_NAMES and n not in host_names]
        assert not unknown, f"names unknown to autoretrain.settings.SETTING_NAMES: {unknown}"
        assert values.keys() >= LOCAL_ONLY

    def test_settings_accept_the_local_example(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Settings.from_env reads the example file as it is (the local workspace, Azurite)."""
        values = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text())["Values"]
        (tmp_path / values["AUTORETRAIN_CONTRACT"]).parent.mkdir(parents=True)
        (tmp_path / values["AUTORETRAIN_CONTRACT"]).write_text("placeholder\n")
        monkeypatch.chdir(tmp_path)
        parsed = Settings.from_env(values)
        assert parsed.workspace is WorkspaceKind.LOCAL
        assert parsed.storage_connection == "UseDevelopmentStorage=true"


# --- security ---------------------------------------------------------------------------------------


class TestNoSecrets:
    def test_the_scan_finds_what_it_looks_for(self) -> None:
        """The scanner flags each kind of secret, so a clean scan means something."""
        samples = [
            "x: listKeys(account.id, '2023-01-01').keys[0].value",
            "'AccountKey=abc'",
            "SharedAccessSignature=sv",
            "allowSharedKeyAccess: true",
            "AzureWebJobsStorage: 'DefaultEndpointsProtocol=https;connectionString'",
        ]
        for sample in samples:
            assert _secret_findings("sample.bicep", sample), sample
        assert not _secret_findings("sample.bicep", "  " + ALLOWED_CONNECTION_STRING_LINE)

    def test_nothing_under_infra_carries_a_secret(self) -> None:
        """No key listing, account key, SAS or connection string anywhere in infra/ (README aside)."""
        files = [
            p for p in INFRA.rglob("*") if p.is_file() and p.suffix in {".bicep", ".json", ".sh", ".ps1"}
        ]
        assert len(files) > 8
        findings = [f for p in files for f in _secret_findings(p.relative_to(ROOT).as_posix(), p.read_text())]
        assert not findings, "\n".join(findings)

    def test_every_storage_account_refuses_keys_and_plain_http(self, trees: dict[str, Any]) -> None:
        """Shared keys off, TLS 1.2, HTTPS only, no anonymous blob access on every account we create."""
        accounts = {
            f"{path}:{name}": r
            for path, tree in trees.items()
            for name, r in _resources(tree, "Microsoft.Storage/storageAccounts").items()
        }
        assert len(accounts) == 3, sorted(accounts)
        for name, account in accounts.items():
            props = account["config"]["properties"]
            assert (
                props["allowSharedKeyAccess"],
                props["allowBlobPublicAccess"],
                props["minimumTlsVersion"],
                props["supportsHttpsTrafficOnly"],
            ) == (False, False, "TLS1_2", True), name

    def test_customer_account_has_soft_delete_and_the_containers(self, trees: dict[str, Any]) -> None:
        """Blob and container soft delete are on; main.bicep asks for the four containers and the ledger."""
        storage = trees["modules/storage.bicep"]
        (blob_service,) = _resources(storage, "Microsoft.Storage/storageAccounts/blobServices").values()
        props = blob_service["config"]["properties"]
        assert props["deleteRetentionPolicy"]["enabled"] is True
        assert props["containerDeleteRetentionPolicy"]["enabled"] is True
        main = trees["main.bicep"]
        params = _module_call(main, "modules/storage.bicep")["config"]["params"]
        assert sorted(_literal(main, n) for n in params["containerNames"]) == [
            "datasets",
            "deadletter",
            "incoming",
            "quarantine",
        ]
        assert _literal(main, params["tableName"]) == "autoretrainledger"


# --- least privilege --------------------------------------------------------------------------------


class TestRoleAssignments:
    def _assignments(self, trees: dict[str, Any]) -> dict[str, Mapping[str, Any]]:
        return {
            f"{path}:{name}": r
            for path, tree in trees.items()
            for name, r in _resources(tree, "Microsoft.Authorization/roleAssignments").items()
        }

    def test_every_assignment_is_scoped_to_a_resource(self, trees: dict[str, Any]) -> None:
        """No role is granted on a whole resource group or subscription: each names its resource scope."""
        assignments = self._assignments(trees)
        assert len(assignments) >= 15
        unscoped = [name for name, r in assignments.items() if not _body(r).get("scope")]
        assert not unscoped, f"role assignments without a resource scope: {unscoped}"

    def test_only_the_expected_roles_are_granted(self, trees: dict[str, Any]) -> None:
        """Every role id in infra/ is one of the data-plane roles we mean (no Owner, no Contributor)."""
        used = {
            g for tree in trees.values() for v in _walk(tree) if isinstance(v, str) for g in GUID.findall(v)
        }
        assert used == set(ROLE_NAMES), f"unexpected role ids: {used - set(ROLE_NAMES)}"

    def test_customer_storage_roles_sit_on_containers_and_the_table(self, trees: dict[str, Any]) -> None:
        """Each role on the customer account is scoped to one container or to the ledger table."""
        roles = trees["modules/storage-roles.bicep"]
        existing = {name: r["type"] for name, r in roles["resources"].items() if r.get("existing")}
        scopes = {
            _body(r)["scope"]: existing.get(_body(r)["scope"])
            for r in _resources(roles, "Microsoft.Authorization/roleAssignments").values()
        }
        assert scopes == {
            "incoming": "Microsoft.Storage/storageAccounts/blobServices/containers",
            "quarantine": "Microsoft.Storage/storageAccounts/blobServices/containers",
            "datasets": "Microsoft.Storage/storageAccounts/blobServices/containers",
            "deadLetter": "Microsoft.Storage/storageAccounts/blobServices/containers",
            "ledger": "Microsoft.Storage/storageAccounts/tableServices/tables",
        }


# --- Event Grid ---------------------------------------------------------------------------------------


class TestEventSubscriptions:
    def _subscription(self, trees: dict[str, Any], name: str) -> Mapping[str, Any]:
        tree = trees["event-subscriptions.bicep"]
        subs = [
            r
            for r in _resources(tree, "Microsoft.EventGrid/systemTopics/eventSubscriptions").values()
            if r["config"]["name"] == name
        ]
        assert len(subs) == 1, f"one subscription named {name!r} expected"
        return subs[0]["config"]["properties"]

    def test_ingest_gets_committed_blobs_in_incoming_only(self, trees: dict[str, Any]) -> None:
        props = self._subscription(trees, "ingest")
        assert props["destination"]["endpointType"] == "AzureFunction"
        assert props["destination"]["properties"]["resourceId"].endswith("/functions/ingest")
        assert props["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
        assert (
            props["filter"]["subjectBeginsWith"]
            == "/blobServices/default/containers/${incomingContainerName}/"
        )
        (api,) = props["filter"]["advancedFilters"]
        # The same committed writes as the function accepts (events.COMMITTED_APIS), SftpCommit too.
        assert (api["operatorType"], api["key"], sorted(api["values"])) == (
            "StringIn", "data.api", sorted(COMMITTED_APIS),
        )

    def test_completion_gets_our_runs_completed_and_failed_or_canceled(self, trees: dict[str, Any]) -> None:
        """RunCompleted of runs with our tag; RunStatusChanged only for Failed and Canceled (which raise
        no RunCompleted). No runType filter: the function identifies runs by the tag and job name."""
        tree = trees["event-subscriptions.bicep"]
        assert tree["variables"]["ourRuns"]["value"] == {
            "operatorType": "IsNotNull", "key": "data.runTags.${runTagKey}",
        }
        completed = self._subscription(trees, "completion")
        failed = self._subscription(trees, "completion-failed")
        for props in (completed, failed):
            assert props["destination"]["properties"]["resourceId"].endswith("/functions/completion")
            assert props["deadLetterWithResourceIdentity"] == "deadLetter"
            assert "runType" not in str(props["filter"])
        assert completed["filter"]["includedEventTypes"] == ["Microsoft.MachineLearningServices.RunCompleted"]
        assert completed["filter"]["advancedFilters"] == ["ourRuns"]
        assert failed["filter"]["includedEventTypes"] == ["Microsoft.MachineLearningServices.RunStatusChanged"]
        ours, status = failed["filter"]["advancedFilters"]
        assert ours == "ourRuns"
        assert (status["operatorType"], status["key"], status["values"]) == (
            "StringIn", "data.runStatus", ["Failed", "Canceled"],
        )
        assert _literal(tree, "runTagKey") == "autoretrain"

    def test_both_retry_and_dead_letter_with_the_topic_identity(self, trees: dict[str, Any]) -> None:
        tree = trees["event-subscriptions.bicep"]
        dead_letter = tree["variables"]["deadLetter"]["value"]
        assert dead_letter["identity"] == {"type": "SystemAssigned"}
        assert dead_letter["deadLetterDestination"]["endpointType"] == "StorageBlob"
        assert _literal(tree, "deadLetterContainerName") == "deadletter"
        for name in ("ingest", "completion", "completion-failed"):
            props = self._subscription(trees, name)
            assert props["deadLetterWithResourceIdentity"] == "deadLetter"
            assert props["retryPolicy"] == "retryPolicy"


# --- azd ----------------------------------------------------------------------------------------------


class TestAzd:
    def test_azure_yaml_deploys_the_root_as_a_python_function(self) -> None:
        document = yaml.safe_load((ROOT / "azure.yaml").read_text())
        assert document["name"] == "autoretrain"
        assert document["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}

    def test_hooks_exist(self) -> None:
        """Every hook script azure.yaml names is there."""
        hooks = yaml.safe_load((ROOT / "azure.yaml").read_text())["hooks"]
        scripts = [platform["run"] for hook in hooks.values() for platform in hook.values()]
        assert len(scripts) >= 2
        missing = [s for s in scripts if not (ROOT / s).is_file()]
        assert not missing, missing

    def test_hook_deploys_the_subscriptions_and_publishes_the_pipeline(self) -> None:
        for script in HOOKS:
            text = (INFRA / "hooks" / script).read_text()
            assert "infra/event-subscriptions.bicep" in text, script
            assert "-m autoretrain.cli publish" in text, script

    def test_parameters_use_azd_substitutions(self) -> None:
        params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
        assert params["environmentName"]["value"] == "${AZURE_ENV_NAME}"
        assert params["location"]["value"] == "${AZURE_LOCATION}"
        assert params["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"

    def test_funcignore_keeps_tooling_out_of_the_package(self) -> None:
        lines = {line.strip().rstrip("/") for line in (ROOT / ".funcignore").read_text().splitlines()}
        assert {
            ".venv",
            ".venv-iac",
            "node_modules",
            ".autoretrain",
            "tests",
            "bench",
            "infra",
            ".git",
        } <= lines


# --- what azd deploys ---------------------------------------------------------------------------------


class TestAzdServiceTag:
    def test_only_the_function_app_carries_the_service_tag(self, trees: dict[str, Any]) -> None:
        """Exactly one resource is tagged azd-service-name: the function app, with azure.yaml's service name.
        azd before 1.23.4 stops `azd deploy` when the tag is on more than one resource (azure-dev #6674)."""
        tagged = [
            (f"{path}:{name}", resource["type"], value)
            for path, tree in trees.items()
            for name, resource in tree["resources"].items()
            if not resource.get("existing") and "tags" in _body(resource)
            for value in _service_tags(trees, path, _body(resource)["tags"])
        ]
        services = list(_azure_yaml()["services"])
        assert services == ["api"]
        assert [(kind, value) for _, kind, value in tagged] == [("Microsoft.Web/sites", "api")], tagged
        assert tagged[0][0] == "modules/function-app.bicep:functionApp"

    def test_the_tag_search_follows_module_parameters(self, trees: dict[str, Any]) -> None:
        """A tag passed down through a module's `tags` parameter is found on every resource that uses it."""
        planted = copy.deepcopy(trees)
        call = _module_call(planted["main.bicep"], "modules/storage.bicep")
        call["config"]["params"]["tags"] = {
            "function": {"type": "union", "parameters": {"arg_1": "tags", "arg_2": {"'azd-service-name'": "api"}}}
        }
        (account,) = _resources(planted["modules/storage.bicep"], "Microsoft.Storage/storageAccounts").values()
        assert _service_tags(planted, "modules/storage.bicep", _body(account)["tags"]) == ["api"]


class TestWorkspaceDatastores:
    def _workspace(self, trees: dict[str, Any]) -> Mapping[str, Any]:
        (workspace,) = _resources(
            trees["modules/ml-workspace.bicep"], "Microsoft.MachineLearningServices/workspaces"
        ).values()
        return workspace

    def test_system_datastores_use_the_workspace_identity(self, trees: dict[str, Any]) -> None:
        """systemDatastoresAuthMode is 'Identity', on an API version whose schema declares it (the stable
        2024-10-01 does not, so ARM would not apply it there)."""
        workspace = self._workspace(trees)
        assert workspace["api_version"] in SYSTEM_DATASTORES_AUTH_MODE_VERSIONS, workspace["api_version"]
        assert workspace["config"]["properties"]["systemDatastoresAuthMode"] == "Identity"

    def test_the_hooks_check_the_auth_mode_after_provisioning(self) -> None:
        """Each hook reads system_datastores_auth_mode with `az ml workspace show` (after checking that the
        ml extension is there, with one line saying how to add it) and stops with one line unless it is
        identity; all before publishing."""
        for script, kind in HOOKS.items():
            text, lines = _hook(script)
            calls = _az_calls(lines)
            assert any(c.args.startswith("extension show --name ml") for c in calls), script
            assert "az extension add --name ml" in text, script
            (show,) = [c for c in calls if c.args.startswith("ml workspace show")]
            assert "--query system_datastores_auth_mode" in show.args, script
            assert "$AUTORETRAIN_AZUREML_WORKSPACE" in show.args or "$workspace" in show.args, script
            index = next(i for i, line in enumerate(lines) if line.number == show.line)
            variable = re.search(r"\$?(\w+)\s*=\s*\$?\(?az ml workspace show", lines[index].code)
            assert variable, f"{script}: the auth mode is not kept in a variable"
            after = lines[index : index + 14]
            # [Ii][Dd]... in a sh case pattern reads as "identity"; PowerShell's -ne ignores case.
            normal = " ".join(re.sub(r"\[([A-Za-z])([A-Za-z])\]", r"\1", line.resolved()) for line in after)
            assert variable.group(1) in normal and "identity" in normal.lower(), script
            failure = r"echo .*systemDatastoresAuthMode.*>&2" if kind == "sh" else r"throw .*systemDatastoresAuthMode"
            assert any(re.search(failure, line.text) for line in after), f"{script}: no one-line failure"
            publish = next(i for i, line in enumerate(lines) if "autoretrain.cli publish" in line.code)
            assert index < publish, f"{script}: the workspace is checked after publishing"


class TestHooks:
    def test_every_az_call_names_azds_subscription(self) -> None:
        """Each az command in both hooks passes --subscription with azd's AZURE_SUBSCRIPTION_ID (az's default
        subscription may be another one), and each hook refuses to run without that variable."""
        for script, kind in HOOKS.items():
            _, lines = _hook(script)
            calls = _az_calls(lines)
            wrong = [f"{script}:{c.line}: az {c.args}" for c in calls if c.subscription not in SUBSCRIPTION_REFS]
            assert not wrong, "az calls without --subscription $AZURE_SUBSCRIPTION_ID:\n" + "\n".join(wrong)
            assert len(calls) >= 4, f"{script}: expected the hook's az calls, found {calls}"
            assert "AZURE_SUBSCRIPTION_ID" in _checked_names(lines, kind), script

    def test_the_az_scan_finds_what_it_looks_for(self) -> None:
        """The scan sees az in every command position and not inside messages, so a clean scan means something."""
        sh = _hook_lines(
            'az group list --output none\n'
            'if ! x=$(az account show \\\n    --subscription "$AZURE_SUBSCRIPTION_ID"); then\n'
            '  echo "run az extension add --name ml" >&2\nfi\n'
            'until az functionapp show --name a; do sleep 1; done\n',
            "sh",
        )
        assert [(c.args.split()[0], c.subscription) for c in _az_calls(sh)] == [
            ("group", None), ("account", "$AZURE_SUBSCRIPTION_ID"), ("functionapp", None),
        ]
        ps1 = _hook_lines(
            "$x = az ml workspace show `\n    --subscription $env:AZURE_SUBSCRIPTION_ID\n"
            "throw \"add it with 'az extension add --name ml'\"\n"
            "& az @args\n",
            "ps1",
        )
        assert [(c.args.split()[0], c.subscription) for c in _az_calls(ps1)] == [
            ("ml", "$env:AZURE_SUBSCRIPTION_ID"), ("@args", None),
        ]

    def test_publishing_is_retried_for_a_bounded_time(self) -> None:
        """The publish step runs in a loop that retries an authorization failure (new role assignments take
        minutes to apply) with one progress line per attempt, and gives up after at most ten minutes."""
        for script, kind in HOOKS.items():
            text, lines = _hook(script)
            index = next((i for i, line in enumerate(lines) if "autoretrain.cli publish" in line.code), None)
            assert index is not None, f"{script}: no `autoretrain.cli publish` step"
            loop = _enclosing_loop(lines, index, kind)
            assert loop, f"{script}: the publish step is not in a loop"
            body = "\n".join(line.resolved() for line in loop)
            numbers = _int_assignments(lines, kind)

            def value(token: str, numbers: dict[str, int] = numbers) -> int:
                return int(token) if token.isdigit() else numbers[token]

            bound = re.search(r"-(?:ge|gt)\s+\$?\{?(\w+)\}?", body)
            sleep = re.search(r"(?:\bsleep|Start-Sleep -Seconds)\s+\$?\{?(\w+)\}?", body)
            assert bound and sleep, f"{script}: no attempt bound or no wait in the publish loop"
            attempts, wait = value(bound.group(1)), value(sleep.group(1))
            assert attempts >= 2 and wait >= 5, (script, attempts, wait)
            assert attempts * wait <= 600, f"{script}: retries for {attempts * wait} s"
            assert re.search(r"exit 1" if kind == "sh" else r"\bthrow\b", body), script
            assert re.search(r"(?:echo|Write-Host) .*attempt", body), f"{script}: no progress line per attempt"
            # Retried only when the output reads as a 403.
            assert re.search(r"grep -Eqi|-match", body), script
            assert "403" in text and "authorizationfailed" in text.lower(), script

    def test_the_hooks_set_up_their_python_and_run_the_publish_command(self) -> None:
        """The hook runs `autoretrain.cli publish` with the project's .venv, sets that venv up when it is
        missing or lacks azure-ai-ml (or stops with one line saying what to run), and hands the command
        the settings it reads."""
        for script, kind in HOOKS.items():
            text, lines = _hook(script)
            assert "publish_pipeline.py" not in text, script
            python = re.search(r"\$?python\s*=\s*(?:if .*\{ )?'?(\.venv/[\w/.]+)", text)
            assert python, f"{script}: the hook does not use the project's .venv"
            (publish,) = [line for line in lines if "autoretrain.cli publish" in line.code]
            assert re.search(r"(\"\$python\"|& \$python) -m autoretrain\.cli publish", publish.text), script
            check = next(i for i, line in enumerate(lines) if "import azure.ai.ml" in line.text)
            setup = next(i for i, line in enumerate(lines) if "-m venv .venv" in line.code)
            install = next(i for i, line in enumerate(lines) if re.search(r"-m pip install .*-e \.", line.code))
            assert check < setup <= install < lines.index(publish), script
            assert re.search(r"run '.*-m venv \.venv.*pip install -e \.'", text), f"{script}: no one-line fix"
            checked, reads = _checked_names(lines, kind), _env_reads(text, kind)
            for name in PUBLISH_SETTINGS:
                assert name in SETTING_NAMES, name
                assigned = re.search(rf"^\s*(export )?{name}=|\$env:{name} = ", text, re.MULTILINE)
                assert name in checked or assigned, f"{script}: {name} is neither required nor set"
                assert name in reads or assigned, script
            if kind == "sh":
                exported = {w for line in lines if line.code.startswith("export ") for w in line.code.split()[1:]}
                assert set(PUBLISH_SETTINGS) <= exported, f"{script}: not exported: {set(PUBLISH_SETTINGS) - exported}"


def _run_sh_hook(tmp_path: Path, *, auth_mode: str = "Identity", publish: list[tuple[int, str]]) -> tuple[
    subprocess.CompletedProcess[str], list[str], int
]:
    """Run postdeploy.sh under /bin/sh in `tmp_path` with stand-ins for az, sleep and the venv's python:
    az logs its arguments and answers `auth_mode`; each publish answers the next (exit code, output)."""
    bin_dir, venv = tmp_path / "bin", tmp_path / ".venv" / "bin"
    bin_dir.mkdir()
    venv.mkdir(parents=True)
    log = tmp_path / "az.log"
    stubs = {
        bin_dir / "az": f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in "ml workspace show"*) echo "{auth_mode}" ;; esac
exit 0
""",
        bin_dir / "sleep": "#!/bin/sh\nexit 0\n",
        venv / "python": f"""#!/bin/sh
[ "$1" = "-c" ] && exit 0
n=$(cat {tmp_path}/publish.count 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > {tmp_path}/publish.count
sed -n "${{n}}p" {tmp_path}/publish.out | tr '|' '\n'
exit "$(sed -n "${{n}}p" {tmp_path}/publish.codes)"
""",
    }
    for path, body in stubs.items():
        path.write_text(body)
        path.chmod(0o755)
    (tmp_path / "publish.out").write_text("".join(f"{out}\n" for _, out in publish))
    (tmp_path / "publish.codes").write_text("".join(f"{code}\n" for code, _ in publish))
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "AZURE_SUBSCRIPTION_ID": "sub-of-azd",
        "AZURE_RESOURCE_GROUP": "rg-test",
        "AZURE_FUNCTION_APP_NAME": "func-test",
        "AZURE_STORAGE_TOPIC_NAME": "evgt-storage",
        "AZURE_WORKSPACE_TOPIC_NAME": "evgt-ml",
        "AZURE_DEADLETTER_CONTAINER": "deadletter",
        "AUTORETRAIN_STORAGE_RESOURCE_ID": "/subscriptions/sub-of-azd/x",
        "AUTORETRAIN_INCOMING_CONTAINER": "incoming",
        "AUTORETRAIN_AZUREML_WORKSPACE": "mlw-test",
        "AUTORETRAIN_PIPELINE_COMPONENT": "autoretrain_pipeline",
    }
    proc = subprocess.run(
        ["/bin/sh", str(INFRA / "hooks" / "postdeploy.sh")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    count = tmp_path / "publish.count"
    return proc, calls, int(count.read_text()) if count.exists() else 0


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs a POSIX shell")
class TestShHookRuns:
    """postdeploy.sh run for real under /bin/sh, with az, sleep and the venv's python stood in for."""

    def test_a_403_is_retried_until_publishing_succeeds(self, tmp_path: Path) -> None:
        denied = "autoretrain: AuthorizationFailed: (403) does not have authorization to perform action"
        proc, calls, publishes = _run_sh_hook(tmp_path, publish=[(2, denied), (2, denied), (0, "registered")])
        assert proc.returncode == 0, proc.stderr
        assert publishes == 3
        assert [line for line in proc.stdout.splitlines() if "(attempt " in line] == [
            f"postdeploy: publishing ml/pipeline.yml as component 'autoretrain_pipeline' (attempt {n}/15)"
            for n in (1, 2, 3)
        ]
        assert calls and all("--subscription sub-of-azd" in call for call in calls), calls
        assert calls[-1].startswith("deployment group create")

    def test_any_other_publish_failure_stops_at_once(self, tmp_path: Path) -> None:
        proc, calls, publishes = _run_sh_hook(tmp_path, publish=[(2, "autoretrain: ml/pipeline.yml: bad input")])
        assert (proc.returncode, publishes) == (1, 1)
        assert proc.stderr.splitlines()[-1].startswith("postdeploy: publishing the pipeline failed")
        assert not any(call.startswith("deployment group create") for call in calls)

    def test_retries_end_after_the_bound(self, tmp_path: Path) -> None:
        proc, _, publishes = _run_sh_hook(tmp_path, publish=[(2, "HTTP 403 Forbidden")] * 20)
        assert (proc.returncode, publishes) == (1, 15)
        assert proc.stderr.splitlines()[-1].startswith("postdeploy: still not authorized")

    def test_a_workspace_on_access_keys_stops_the_hook(self, tmp_path: Path) -> None:
        proc, calls, publishes = _run_sh_hook(tmp_path, auth_mode="AccessKey", publish=[(0, "registered")])
        assert (proc.returncode, publishes) == (1, 0)
        (line,) = proc.stderr.splitlines()
        assert "'AccessKey', not its identity" in line and "systemDatastoresAuthMode: 'Identity'" in line
        assert calls == [
            "extension show --name ml --subscription sub-of-azd --only-show-errors --output none",
            "ml workspace show --name mlw-test --resource-group rg-test --subscription sub-of-azd "
            "--query system_datastores_auth_mode --output tsv --only-show-errors",
        ]


class TestDeployCompleteness:
    def _inputs(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
        parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
        hooks = {script: (INFRA / "hooks" / script).read_text() for script in HOOKS}
        return parameters, _azure_yaml(), hooks

    def test_everything_azd_deploys_is_declared(self, trees: dict[str, Any]) -> None:
        """Every module file main.bicep calls exists and gets its parameters; every parameter in
        main.parameters.json is declared in main.bicep; every azd value azure.yaml and the hooks read is a
        main.bicep output or one azd sets itself; the template the hook deploys gets its parameters."""
        parameters, azure_yaml, hooks = self._inputs()
        gaps = _deploy_gaps(trees, parameters, azure_yaml, hooks, lambda path: (ROOT / path).is_file())
        assert not gaps, "\n".join(gaps)

    def test_the_completeness_check_finds_gaps(self, trees: dict[str, Any]) -> None:
        """Each kind of gap, planted in a copy, is reported, so a clean check means something."""
        parameters, azure_yaml, hooks = self._inputs()
        planted = copy.deepcopy(trees)
        main = planted["main.bicep"]
        main["outputs"].pop("AZURE_FUNCTION_APP_NAME", None)
        _module_call(main, "modules/identities.bicep")["config"]["params"].pop("location")
        _module_call(main, "modules/storage.bicep")["config"]["params"]["colour"] = "'blue'"
        _module_call(main, "modules/monitoring.bicep")["detail"]["path"] = "modules/missing.bicep"
        del planted["modules/identities.bicep"]["outputs"]["computePrincipalId"]
        extra = {**parameters, "legacy": {"value": "${AZURE_LEGACY_THING}"}}
        sh = hooks["postdeploy.sh"].replace("storageTopicName=", "storageTopic=").replace(
            "set -eu", 'set -eu\necho "$AZURE_NOT_AN_OUTPUT"'
        )
        gaps = "\n".join(
            _deploy_gaps(
                planted, extra, {**azure_yaml, "infra": {"provider": "bicep", "path": "infra", "module": "nope"}},
                {**hooks, "postdeploy.sh": sh}, lambda path: (ROOT / path).is_file(),
            )
        )
        for expected in (
            "infra/nope.bicep does not exist",
            "legacy is not a parameter of main.bicep",
            "needs ${AZURE_LEGACY_THING}",
            "does not pass location to modules/identities.bicep",
            "passes colour, unknown to modules/storage.bicep",
            "calls modules/missing.bicep, which does not exist",
            "identities.outputs.computePrincipalId is not an output",
            "postdeploy.sh reads AZURE_FUNCTION_APP_NAME",
            "postdeploy.ps1 reads AZURE_FUNCTION_APP_NAME",
            "postdeploy.sh reads AZURE_NOT_AN_OUTPUT",
            "needs storageTopicName, which the hook does not pass",
            "has no parameter storageTopic",
        ):
            assert expected in gaps, f"{expected!r} not reported in:\n{gaps}"


# --- what it costs ------------------------------------------------------------------------------------


class TestCostDoc:
    def test_readme_prices_the_defaults_infra_deploys(self, trees: dict[str, Any]) -> None:
        """infra/README.md's "What it costs" prices what Bicep deploys by default: the cluster's VM size and
        node range, the app's instance memory, and as many incoming listings as the reconcile schedule runs."""
        readme = (INFRA / "README.md").read_text()
        match = re.search(r"^### What it costs\n(.*?)(?=^### |\Z)", readme, re.MULTILINE | re.DOTALL)
        assert match, 'infra/README.md has no "### What it costs" section'
        section = match.group(1)
        main, workspace = trees["main.bicep"], trees["modules/ml-workspace.bicep"]
        vm_size = main["parameters"]["computeVmSize"]["default"]
        max_nodes = main["parameters"]["computeMaxNodes"]["default"]
        memory = trees["modules/function-app.bicep"]["parameters"]["instanceMemoryMB"]["default"]
        idle = workspace["parameters"]["computeIdleTimeBeforeScaleDown"]["default"]
        schedule = _app_settings(trees)["AUTORETRAIN_RECONCILE_SCHEDULE"]
        assert schedule and idle
        minutes = re.fullmatch(r"0 \*/(\d+) \* \* \* \*", schedule)
        assert minutes, f"update this test for the schedule {schedule!r}"
        listings = 30 * 24 * 60 // int(minutes.group(1))
        idle_minutes = int(re.fullmatch(r"PT(\d+)S", idle).group(1)) // 60  # type: ignore[union-attr]
        for expected in (
            f"`{vm_size}`",
            f"0 to {max_nodes} nodes",
            f"{idle_minutes} idle minutes",
            f"{memory:,} MB",
            f"{listings:,}",
            "East US",
        ):
            assert expected in section, f"{expected!r} missing from the cost section"
        assert re.search(r"\b20\d\d-\d\d\b", section), "the cost section does not date its prices"
        assert section.count("\n|") >= 8, "the cost section shows no arithmetic table"
