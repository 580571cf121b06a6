"""Least privilege: every role assignment is scoped to one resource and grants one of the roles we mean."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from infra_trees import _body, _resources, _walk

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
