"""A local server that never comes up says why in one line: it exited (with its code and last
words), or it did not answer in time (and nothing of it is left running)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoretrain.domain.errors import AutoretrainError
from autoretrain.local.mlflow_ui import MlflowUI
from autoretrain.waiting import wait_until


def _python(tmp_path: Path, body: str) -> str:
    """A stand-in for the interpreter the UI runs `-m mlflow server` with."""
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: its parent (init, once the server died) has not reaped it yet.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


class TestMlflowUIStart:
    def test_a_server_that_exits_is_reported_with_its_code_and_last_log_line(self, tmp_path: Path) -> None:
        ui = MlflowUI(tmp_path, python=_python(tmp_path, "echo 'Error: no such option: --workers' >&2; exit 3"))
        with pytest.raises(AutoretrainError) as info:
            ui.start(timeout=30)
        assert str(info.value) == "mlflow server exited at start (code 3): Error: no such option: --workers"
        assert ui.exited() is None  # nothing left to stop

    def test_a_server_that_never_answers_is_stopped_with_its_children(self, tmp_path: Path) -> None:
        pids = tmp_path / "pids"
        ui = MlflowUI(tmp_path, python=_python(tmp_path, f"sleep 60 & echo $! > {pids}; wait"))
        with pytest.raises(AutoretrainError) as info:
            ui.start(timeout=1)
        assert str(info.value) == (
            f"mlflow server did not answer {ui.url}/health within 1 s; see {ui.log_path}"
        )
        child = int(pids.read_text())
        assert wait_until(lambda: not _alive(child), 5), "the server's child outlived it"
