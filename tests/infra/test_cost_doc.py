"""infra/README.md's "What it costs" prices what Bicep deploys by default."""

from __future__ import annotations

import re
from typing import Any

from infra_trees import INFRA, _app_settings


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
