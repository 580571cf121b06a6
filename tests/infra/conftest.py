"""The parsed Bicep of infra/, shared by the tests under tests/infra (parsed once per session: the
tests only read it, and those that plant faults do so in a deep copy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from infra_trees import INFRA, _bicep_files, _parse


@pytest.fixture(scope="session")
def trees() -> dict[str, dict[str, Any]]:
    """The parsed tree of every Bicep file under infra/, by path relative to infra/ ("modules/x.bicep")."""
    results = _parse(_bicep_files())
    broken = {path: r["error"] for path, r in results.items() if not r["ok"]}
    assert not broken, f"Bicep files that do not parse: {json.dumps(broken, indent=2)}"
    return {Path(path).relative_to(INFRA).as_posix(): r["tree"] for path, r in results.items()}
