"""What azd reads and deploys: azure.yaml, its hooks, main.parameters.json, .funcignore, and the
azd-service-name tag on exactly one resource."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import yaml
from infra_trees import HOOKS, INFRA, ROOT, _azure_yaml, _body, _module_call, _resources

AZD_SERVICE_TAG = "azd-service-name"


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
