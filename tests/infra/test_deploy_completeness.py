"""What `azd up` would miss, checked without the Bicep CLI: files, parameters, module wiring, and the
outputs azure.yaml and the hooks read."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from infra_hooks import _az_calls, _env_reads, _hook_lines
from infra_trees import HOOKS, INFRA, ROOT, _azure_yaml, _module_call, _walk

# azd writes these into the environment's .env itself (azure-dev cli/azd/pkg/environment/environment.go:
# EnvNameEnvVarName, LocationEnvVarName, SubscriptionIdEnvVarName), and hooks get that .env
# (pkg/ext/hooks_runner.go: hookEnv.Environ()), beside the provisioning outputs
# (pkg/infra/provisioning/manager.go: UpdateEnvironment).
AZD_PROVIDED = {"AZURE_ENV_NAME", "AZURE_LOCATION", "AZURE_SUBSCRIPTION_ID"}
# azd substitutes these in main.parameters.json only, with the signed-in principal
# (pkg/infra/provisioning/bicep/bicep_provider.go: evalParamEnvSubst); they are not in the hook's environment.
AZD_PARAMETER_ONLY = {"AZURE_PRINCIPAL_ID", "AZURE_PRINCIPAL_TYPE"}


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
