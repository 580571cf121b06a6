"""Every Bicep file under infra/ parses (pycep-parser), and the parser does reject broken Bicep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra_trees import _parse


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
