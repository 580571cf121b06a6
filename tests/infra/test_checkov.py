"""checkov over infra/: no failed check, and every skip is justified and applied."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
from infra_trees import CHECKOV, INFRA, ROOT, _bicep_files, _require_iac_env


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
