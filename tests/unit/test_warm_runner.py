"""The local workspace's warm step runner: a step runs as its own script in a fork of a server that
imported the heavy libraries once; its logs, environment, working folder and exit code are its own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from autoretrain.adapters.localworkspace.warm import WarmRunner


@pytest.fixture(scope="module")
def runner() -> WarmRunner:
    one = WarmRunner(sys.executable, dict(os.environ))
    yield one  # type: ignore[misc]
    one.close()


def test_a_step_runs_its_script_with_its_args_env_and_folder(runner: WarmRunner, tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("VALUE = 'from the snapshot'\n")
    (tmp_path / "step.py").write_text(
        "import os, sys, helper\n"
        "print(sys.argv[1:], os.getcwd(), os.environ['STEP_ONLY'], helper.VALUE)\n"
        "print('to stderr', file=sys.stderr)\n"
    )
    pids: list[int] = []

    code = runner.run([sys.executable, "step.py", "--x", "1"], tmp_path, tmp_path / "out.log", tmp_path / "err.log",
                      {**os.environ, "STEP_ONLY": "yes"}, on_start=pids.append)

    assert code == 0 and pids and pids[0] != os.getpid()
    assert (tmp_path / "out.log").read_text() == f"['--x', '1'] {tmp_path} yes from the snapshot\n"
    assert (tmp_path / "err.log").read_text() == "to stderr\n"
    assert "STEP_ONLY" not in os.environ


@pytest.mark.parametrize(("body", "code"), [("raise SystemExit(2)", 2), ("raise ValueError('boom')", 1)])
def test_the_exit_code_is_the_step_s(runner: WarmRunner, tmp_path: Path, body: str, code: int) -> None:
    (tmp_path / "step.py").write_text(body + "\n")
    assert runner.run([sys.executable, "step.py"], tmp_path, tmp_path / "o", tmp_path / "e", dict(os.environ),
                      on_start=lambda _: None) == code
    if code == 1:
        assert (tmp_path / "e").read_text().strip().endswith("ValueError: boom")


def test_a_second_step_does_not_see_the_first_one_s_modules(runner: WarmRunner, tmp_path: Path) -> None:
    """Each step forks from the server: what one step imported or changed is gone for the next."""
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, value in ((first, "A"), (second, "B")):
        folder.mkdir()
        (folder / "contract.py").write_text(f"WHICH = {value!r}\n")
        (folder / "step.py").write_text("import contract\nprint(contract.WHICH)\n")
    for folder in (first, second):
        runner.run([sys.executable, "step.py"], folder, folder / "o", folder / "e", dict(os.environ),
                   on_start=lambda _: None)
    assert [(f / "o").read_text().strip() for f in (first, second)] == ["A", "B"]
