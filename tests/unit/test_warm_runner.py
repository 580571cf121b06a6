"""The local workspace's warm step runner: a step runs as its own script in a fork of a server that
imported the heavy libraries once; its logs, environment, working folder and exit code are its own."""

from __future__ import annotations

import os
import sys
import threading
import time
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


def test_two_steps_run_side_by_side_on_one_server(runner: WarmRunner, tmp_path: Path) -> None:
    """The workspace keeps one server for every job running: a step does not wait for another's end.
    The first step ends only once the second has started and written its mark."""
    (tmp_path / "first.py").write_text(
        "import pathlib, sys, time\n"
        "mark = pathlib.Path(sys.argv[1])\n"
        "deadline = time.monotonic() + 30\n"
        "while not mark.exists():\n"
        "    if time.monotonic() > deadline:\n"
        "        raise SystemExit(3)\n"
        "    time.sleep(0.02)\n"
    )
    (tmp_path / "second.py").write_text("import pathlib, sys\npathlib.Path(sys.argv[1]).write_text('here')\n")
    mark = str(tmp_path / "mark")
    codes: dict[str, int] = {}
    pids: list[int] = []

    def step(name: str) -> None:
        codes[name] = runner.run([sys.executable, f"{name}.py", mark], tmp_path, tmp_path / f"{name}.out",
                                 tmp_path / f"{name}.err", dict(os.environ), on_start=pids.append)

    first = threading.Thread(target=step, args=("first",))
    first.start()
    while not pids:  # the first step runs
        time.sleep(0.01)
    step("second")
    first.join(timeout=60)

    assert codes == {"first": 0, "second": 0}, (tmp_path / "first.err").read_text()
    assert len(set(pids)) == 2


def test_a_server_that_dies_fails_each_waiting_step_instead_of_hanging(tmp_path: Path) -> None:
    one = WarmRunner(sys.executable, dict(os.environ))
    (tmp_path / "step.py").write_text("import time\ntime.sleep(60)\n")
    pids: list[int] = []
    errors: list[str] = []

    def step() -> None:
        try:
            one.run([sys.executable, "step.py"], tmp_path, tmp_path / "o", tmp_path / "e", dict(os.environ),
                    on_start=pids.append)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=step) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        while len(pids) < 2:
            time.sleep(0.01)
        one._server.process.kill()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == ["the warm step runner exited (code -9)"] * 2
        assert not one.alive
        with pytest.raises(RuntimeError, match="warm step runner exited"):
            one.run([sys.executable, "step.py"], tmp_path, tmp_path / "o", tmp_path / "e", dict(os.environ),
                    on_start=pids.append)
    finally:
        one.close()


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_tracker_forks_from_the_server_and_lives_as_long_as_its_connection(tmp_path: Path) -> None:
    """The MLflow tracker is a fork of the server (which has imported MLflow and SQLAlchemy), reached
    over a connection of its own handed to the server; it serves on after the server is gone, and
    exits when the workspace closes that connection."""
    from autoretrain.adapters.localworkspace.tracking import artifact_root, store_folder, tracking_uri

    home = tmp_path / "home"
    store_folder(home).mkdir(parents=True)
    server = WarmRunner(sys.executable, {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(home)})
    tracker = server.fork_tracker(tmp_path / "tracker.log")
    try:
        assert _parent_of(tracker.pid) == server._server.process.pid
        config = {"uri": tracking_uri(home), "artifacts": artifact_root(home).as_uri(), "experiment": "autoretrain",
                  "model_name": "autoretrain-model"}
        assert tracker.call(config) == {"ready": True}
        server.close()
        assert tracker.call({"op": "start_job", "job": "autoretrain-j", "tags": {}, "resumed": False})["ok"]
    finally:
        tracker.stop(timeout=10)
    assert not tracker.alive
    assert (store_folder(home) / "mlflow.db").is_file()


def test_a_workspace_closed_while_its_runner_starts_starts_no_tracker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop right after a start (Ctrl-C on `autoretrain up`): the tracker, which waits for the warm
    runner's start to fork from it, gives up when the workspace closes; it starts neither forked nor
    cold, so nothing is started during the stop and no tracker is left to stop."""
    import logging

    from autoretrain.adapters.localworkspace.processes import StepProcesses
    from autoretrain.adapters.localworkspace.tracking import LocalTracking

    caplog.set_level(logging.INFO)
    tracking = LocalTracking(tmp_path / "home", experiment="autoretrain", model_name="autoretrain-model", start=False)
    steps = StepProcesses(python=sys.executable, env=dict(os.environ), warm=True, tracking=tracking)
    tracking.start(fork=steps.fork_tracker)
    # As LocalWorkspace.close() does, while the runner is still importing its libraries.
    steps.stop(1)
    steps.close()
    tracking.close()

    assert "tracking.ready" not in caplog.text and "tracking.fork_failed" not in caplog.text, caplog.text
    assert tracking.disabled is None  # not broken: closed
    assert steps.fork_tracker(tmp_path / "tracker.log") is None


def test_a_step_runs_with_the_collector_on(runner: WarmRunner, tmp_path: Path) -> None:
    """The server loads its libraries with the cyclic collector off, and turns it back on before it
    forks: a step's reference cycles are collected as in any Python process."""
    (tmp_path / "step.py").write_text("import gc\nprint(gc.isenabled(), gc.get_threshold()[0] > 0)\n")

    code = runner.run([sys.executable, "step.py"], tmp_path, tmp_path / "out.log", tmp_path / "err.log",
                      dict(os.environ), on_start=lambda _: None)

    assert code == 0 and (tmp_path / "out.log").read_text() == "True True\n"
