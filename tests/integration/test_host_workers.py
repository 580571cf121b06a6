"""`autoretrain up` with FUNCTIONS_WORKER_PROCESS_COUNT=2: a second process serves the same port,
each file is still trained exactly once, a worker that dies is started again, and no worker
outlives the host (Ctrl-C or SIGKILL)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from localstack import Loop, blob_created, free_port, per_file_contract, post_event, stack_env, start
from mlmodules import wine

from autoretrain.adapters.localworkspace.workspace import catalog_rows
from autoretrain.domain import LedgerState, WorkKey

pytestmark = pytest.mark.integration

_STARTED = re.compile(r"Worker process 1 started \(pid (\d+)\)")


@pytest.fixture
def running(tmp_path: Path, unique: str, azurite: str) -> Iterator[Loop]:
    yield from start(tmp_path, unique, azurite, {"FUNCTIONS_WORKER_PROCESS_COUNT": "2", **per_file_contract(tmp_path)})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: its parent has not reaped it yet.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        time.sleep(0.1)


def _worker_pids(log: Path) -> list[int]:
    return [int(pid) for pid in _STARTED.findall(log.read_text())]


def _first_worker(log: Path) -> int:
    """The second worker process's pid, once it has logged its start (the host may answer before)."""
    _wait(lambda: _worker_pids(log), 30, "no worker process started")
    return _worker_pids(log)[0]


def test_two_processes_serve_and_each_file_is_trained_once(running: Loop, tmp_path: Path) -> None:
    worker = _first_worker(running.log)
    assert _alive(worker)
    drops = list(wine().write_monthly_drops(tmp_path / "drops", months=4, seed=2))
    refs = [running.blobs.upload(running.incoming, p.name, p.read_bytes()) for p in drops]
    keys = [WorkKey.for_blob(r) for r in refs]
    # Every event four times at once, on top of the local Event Grid's own delivery: both processes
    # take requests (each builds its runtime on its first one), and each file is still one job.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: post_event(running.url, "ingest", blob_created(refs[i % 4], f"again-{i}")),
                                range(16)))
    assert answers == [200] * 16

    records = running.wait_final(keys, timeout=300)

    assert [records[k].state for k in keys] == [LedgerState.DONE] * 4, [records[k].reason for k in keys]
    jobs = catalog_rows(running.home, "jobs")
    assert sorted(j["name"] for j in jobs) == sorted(k.job_name for k in keys)
    assert sorted(r.model_version for r in records.values()) == [  # type: ignore[type-var]
        f"autoretrain-model:{i}" for i in (1, 2, 3, 4)]
    log = running.log.read_text()
    assert log.count("bootstrap.ready") == 2, "the worker process served no invocation"
    assert log.count("ingest.submitted") == 4


def test_a_dead_worker_is_started_again_and_none_outlives_ctrl_c(running: Loop) -> None:
    first = _first_worker(running.log)
    os.kill(first, signal.SIGKILL)
    _wait(lambda: len(_worker_pids(running.log)) == 2, 10, "no new worker process")
    second = _worker_pids(running.log)[1]
    assert f"Worker process 1 (pid {first}) exited with -9; starting it again" in running.log.read_text()
    assert not _alive(first) and _alive(second)

    running.process.send_signal(signal.SIGINT)
    assert running.process.wait(timeout=60) == 0
    assert not _alive(second)


def test_no_worker_outlives_a_killed_host(running: Loop) -> None:
    worker = _first_worker(running.log)
    running.process.kill()
    running.process.wait(timeout=10)
    _wait(lambda: not _alive(worker), 10, "the worker process outlived the host")


def test_autoretrain_host_alone_starts_with_its_worker_process_and_stops_on_ctrl_c(
    tmp_path: Path, unique: str, azurite: str
) -> None:
    """`autoretrain host` (the host without the stack) as a user runs it, with no reconcile schedule
    set (it failed on %AUTORETRAIN_RECONCILE_SCHEDULE% before) and two processes."""
    port = free_port()
    env = stack_env(tmp_path, unique, azurite, port, {"FUNCTIONS_WORKER_PROCESS_COUNT": "2"})
    env.pop("AUTORETRAIN_RECONCILE_SCHEDULE", None)
    log = tmp_path / "host.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "autoretrain.cli", "host"], cwd=tmp_path, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: _worker_pids(log) or process.poll() is not None, 30, "no worker process started")
        assert process.poll() is None, log.read_text()
        [worker] = _worker_pids(log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/host/status", timeout=5) as answer:
            assert json.load(answer) == {"state": "Running"}
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log.read_text()
        assert not _alive(worker)
    finally:
        if process.poll() is None:
            process.kill()
