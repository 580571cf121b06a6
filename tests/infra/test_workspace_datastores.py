"""The workspace reaches its system datastores with its identity, and the hooks check that after provisioning."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from infra_hooks import _az_calls, _hook
from infra_trees import HOOKS, _resources

# Workspace API versions whose schema declares properties.systemDatastoresAuthMode with the enum
# AccessKey | Identity | UserDelegationSAS (azure-rest-api-specs, specification/machinelearningservices/.../
# workspaceRP.json; the generated index Azure/bicep-types-az lists the same). The stable 2024-10-01 lacks it.
SYSTEM_DATASTORES_AUTH_MODE_VERSIONS = {
    "2024-10-01-preview", "2025-01-01-preview", "2025-04-01-preview", "2025-06-01", "2025-07-01-preview",
    "2025-09-01", "2025-10-01-preview", "2025-12-01", "2026-01-15-preview", "2026-03-01", "2026-03-15-preview",
    "2026-05-01", "2026-05-15-preview",
}


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
