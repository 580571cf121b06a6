"""What the tests under tests/infra share: the paths, the Bicep parser run in .venv-iac, and the helpers
that read the parsed Bicep.

Bicep cannot be compiled here, so the Bicep files are parsed with pycep-parser and scanned with
checkov, both installed in their own environment (.venv-iac, made by `make setup` from
requirements-iac.txt) and called as subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
IAC_BIN = ROOT / ".venv-iac" / ("Scripts" if sys.platform == "win32" else "bin")
IAC_PYTHON = IAC_BIN / ("python.exe" if sys.platform == "win32" else "python")
CHECKOV = IAC_BIN / ("checkov.cmd" if sys.platform == "win32" else "checkov")
BICEP_JSON = Path(__file__).resolve().parent / "_bicep_json.py"
HOOKS = {"postdeploy.sh": "sh", "postdeploy.ps1": "ps1"}


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


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _azure_yaml() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert isinstance(document, dict)
    return document
