"""The embedded local workspace running the real ml/pipeline.yml on blobs in Azurite."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mlmodules
import psutil
import pytest
from azure.storage.blob import BlobServiceClient

from autoretrain.adapters.localworkspace.workspace import LocalWorkspace, catalog_rows
from autoretrain.adapters.storage import AzureBlobStore
from autoretrain.bootstrap import PIPELINE
from autoretrain.domain import JOB_TAG, JobState, Metrics, WorkKey
from autoretrain.domain.errors import WorkspaceError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "ml" / "contract.yaml"


def wine_csv(rows: slice) -> bytes:
    return mlmodules.wine_csv(rows, seed=3)


class Events:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.items.append(event)

    def kinds(self, job: str) -> list[tuple[str, str | None]]:
        with self._lock:
            return [
                (e["eventType"].rsplit(".", 1)[1], e["data"].get("runStatus"))
                for e in self.items if e["data"]["runId"] == job
            ]

    def wait_for(self, job: str, count: int, timeout: float = 10) -> list[tuple[str, str | None]]:
        """The job's events once `count` have arrived: the status is written before they are sent."""
        deadline = time.monotonic() + timeout
        while len(self.kinds(job)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.kinds(job)


@pytest.fixture
def store(azurite: str) -> AzureBlobStore:
    return AzureBlobStore(BlobServiceClient.from_connection_string(azurite))


def make_workspace(home: Path, store: AzureBlobStore, events: Events) -> LocalWorkspace:
    return LocalWorkspace(home, pipeline=PIPELINE, contract=CONTRACT, blobs=store, on_event=events)


def test_a_blob_becomes_data_job_and_model_and_survives_a_restart(
    tmp_path: Path, store: AzureBlobStore, unique: str
) -> None:
    """register_data -> submit -> run prep/train/evaluate -> metrics -> model, all idempotent."""
    events = Events()
    workspace = make_workspace(tmp_path, store, events)
    blob = store.upload(f"ds{unique}", "k/2026-01.csv", wine_csv(slice(0, 60)))
    key = WorkKey.for_blob(blob)

    data = workspace.register_data(blob, key, {"blob": blob.path})
    assert workspace.register_data(blob, key, {"blob": blob.path}) == data
    assert (data.name, data.version) == ("autoretrain-data", "1")
    run = workspace.submit(data, key, {JOB_TAG: key.value})
    again = workspace.submit(data, key, {JOB_TAG: key.value})
    assert run.name == again.name == key.job_name

    status = workspace.wait(run.name, timeout=180)
    assert status.state is JobState.COMPLETED, status
    assert events.wait_for(run.name, 3) == [
        ("RunStatusChanged", "Running"), ("RunStatusChanged", "Completed"), ("RunCompleted", None)
    ]
    completed = events.items[-1]
    assert completed["data"]["runTags"] == {JOB_TAG: key.value}
    assert completed["subject"].endswith(f"/runs/{run.name}")
    for step in ("prep", "train", "evaluate"):
        assert (workspace.job_dir(run.name) / "logs" / f"{step}.log").is_file()

    metrics = workspace.job_metrics(run.name)
    assert metrics.primary == "f1_macro" and 0.0 <= metrics.primary_value <= 1.0
    model = workspace.register_model(run.name, key, metrics, {"job": run.name})
    assert workspace.register_model(run.name, key, metrics, {"job": run.name}) == model
    assert workspace.champion() is None
    promoted = workspace.promote(model, replacing=None)
    assert promoted is not None and promoted.champion and workspace.champion() == promoted
    assert workspace.promote(model, replacing=None) is None  # the champion is no longer "none"
    workspace.close()

    reopened = make_workspace(tmp_path, store, Events())
    assert reopened.champion() == promoted
    assert [r["status"] for r in catalog_rows(tmp_path, "jobs")] == ["Completed"]
    assert [(r["version"], r["champion"]) for r in catalog_rows(tmp_path, "models")] == [(1, True)]
    assert (reopened.root / "models" / "autoretrain-model" / "1" / "MLmodel").is_file()
    reopened.close()


def test_a_failing_step_fails_the_job_with_its_step_error_and_log(
    tmp_path: Path, store: AzureBlobStore, unique: str
) -> None:
    """A file whose every target is missing passes no prep: the job fails in prep, with its line."""
    events = Events()
    workspace = make_workspace(tmp_path, store, events)
    text = wine_csv(slice(0, 20)).decode().splitlines()
    header = text[0].split(",")
    target = header.index("cultivar")
    rows = [",".join("" if i == target else v for i, v in enumerate(line.split(","))) for line in text[1:]]
    blob = store.upload(f"ds{unique}", "k/empty-target.csv", ("\n".join([text[0], *rows]) + "\n").encode())
    key = WorkKey.for_blob(blob)
    lineage = {"blob": "incoming/empty target.csv"}
    run = workspace.submit(workspace.register_data(blob, key, lineage), key, {JOB_TAG: key.value})

    status = workspace.wait(run.name, timeout=120)

    assert (status.state, status.failed_step) == (JobState.FAILED, "prep")
    assert status.log is not None and Path(status.log).name == "prep.log" and Path(status.log).is_file()
    # Local file names come from the work key, never from the (untrusted) blob name; the error
    # names the blob it came from, as on Azure ML. Exit code 65: the data's fault, so `rejected`.
    reason = ("incoming/empty target.csv: 0 row(s) have a 'cultivar' value; at least 10 are needed to train "
              "and test. Upload a file with more rows.")
    assert (status.error, status.rejected) == (f"{reason} (exit code 65)", reason)
    assert any(p.name == f"{key}.csv" for p in (workspace.root / "data").rglob("*.csv"))
    assert events.wait_for(run.name, 2) == [("RunStatusChanged", "Running"), ("RunStatusChanged", "Failed")]
    with pytest.raises(WorkspaceError, match="metrics exist only for completed jobs"):
        workspace.job_metrics(run.name)
    workspace.close()


def _set_runner(home: Path, job: str, runner: str) -> None:
    """Name another process as the job's runner, as its catalogue row would after that process submitted it."""
    with sqlite3.connect(home / "workspace" / "catalog.sqlite") as db:
        db.execute("UPDATE jobs SET runner = ? WHERE name = ?", (runner, job))


def _runner_of(process: subprocess.Popen[bytes]) -> str:
    return f"{process.pid}:{psutil.Process(process.pid).create_time():.2f}:0123abcd"


def test_jobs_left_queued_by_a_dead_process_run_on_resume(
    tmp_path: Path, store: AzureBlobStore, unique: str
) -> None:
    """A job queued when the host died is not lost: the next workspace runs it. One whose runner still
    runs (a CLI command's job, a host worker's) is left to it until that process is gone."""
    blob = store.upload(f"ds{unique}", "k/a.csv", wine_csv(slice(60, 110)))
    key = WorkKey.for_blob(blob)
    first = make_workspace(tmp_path, store, Events())
    data = first.register_data(blob, key, {})
    first._runner._pool.shutdown(wait=True)  # the "crash": nothing will pick the job up in this process
    with pytest.raises(RuntimeError):
        first.submit(data, key, {JOB_TAG: key.value})
    assert [r["status"] for r in catalog_rows(tmp_path, "jobs")] == ["Queued"]
    # The process that queued it is another one, still running.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _set_runner(tmp_path, key.job_name, _runner_of(other))
        events = Events()
        second = make_workspace(tmp_path, store, events)
        assert second.resume() == []
    finally:
        other.kill()
        other.wait()
    assert second.resume() == [key.job_name]  # it is gone now: taken over
    assert second.resume() == []  # and only once
    assert second.wait(key.job_name, timeout=180).state is JobState.COMPLETED
    assert ("RunCompleted", None) in events.wait_for(key.job_name, 3)
    second.close()
    first.close()  # its tracker and warm runner, which the "crash" left running


def test_metrics_direction_comes_from_evaluate(tmp_path: Path) -> None:
    """Metrics as the local workspace reads them keep evaluate's direction for the champion gate."""
    metrics = Metrics({"rmse": 2.0, "r2": 0.4}, primary="rmse", greater_is_better=False)
    assert Metrics.from_json(metrics.to_json()) == metrics


def test_bytes_already_read_register_one_version_once_however_many_deliveries_at_once(
    tmp_path: Path, store: AzureBlobStore, unique: str
) -> None:
    """A small file's bytes (read whole by the head check) are written by the delivery that registers
    the version; eight at once give one version, its file byte for byte, and nothing left in staging."""
    workspace = LocalWorkspace(tmp_path, pipeline=PIPELINE, contract=CONTRACT, blobs=store, warm=False,
                               tracking=False)
    content = wine_csv(slice(0, 30))
    blob = store.upload(f"ds{unique}", "k/2026-02.csv", content)
    key = WorkKey.for_blob(blob)
    results: list[Any] = []
    start = threading.Barrier(8)

    def deliver() -> None:
        start.wait()
        results.append(workspace.register_data(blob, key, {"blob": blob.path}, content))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(results) == 8 and len(set(results)) == 1
        [version] = catalog_rows(tmp_path, "data")
        assert Path(version["path"]).read_bytes() == content
        staging = workspace.root / "data" / ".staging"
        assert not staging.exists() or not any(staging.iterdir())
    finally:
        workspace.close()


def _warm_servers(but: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """The warm step runners this process started (an earlier test's not yet gone: `but`): its own
    children, not their forks (a step, the MLflow tracker), which share the server's command line."""
    return [p for p in psutil.Process().children()
            if "localworkspace.warm import serve" in " ".join(p.cmdline()) and p.pid not in but]


def _forks(servers: list[psutil.Process]) -> list[psutil.Process]:
    forks = []
    for server in servers:
        with contextlib.suppress(psutil.Error):
            forks += server.children()
    return forks


def _cwd(process: psutil.Process) -> str:
    try:
        return str(process.cwd())
    except psutil.Error:  # ended meanwhile
        return ""


def test_a_warm_runner_killed_under_a_step_runs_the_step_again_on_a_new_one(
    tmp_path: Path, store: AzureBlobStore, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server a step forks from dies (SIGKILL, the OOM killer): the step is not at fault, so it
    runs once more on a runner started anew, and the job completes. One server, whatever the jobs."""
    events = Events()
    earlier = frozenset(p.pid for p in _warm_servers())
    workspace = make_workspace(tmp_path, store, events)
    try:
        blob = store.upload(f"ds{unique}", "k/2026-03.csv", wine_csv(slice(0, 60)))
        key = WorkKey.for_blob(blob)
        run = workspace.submit(workspace.register_data(blob, key, {}), key, {JOB_TAG: key.value})
        # Killed while train runs in its fork (its working folder is its code snapshot): not before
        # the step reached the server, nor between two steps.
        deadline = time.monotonic() + 60
        while not [c for c in _forks(_warm_servers(but=earlier)) if _cwd(c).endswith("/code/train")]:
            assert time.monotonic() < deadline, "train never ran in a fork of the server"
            time.sleep(0.005)
        [server] = _warm_servers(but=earlier)
        server.kill()

        status = workspace.wait(run.name, timeout=120)

        assert status.state is JobState.COMPLETED, status.error
        assert [r.getMessage().split(" ")[0] for r in caplog.records if "job.step_restarted" in r.getMessage()] == [
            "job.step_restarted"]
        restarted = next(r.getMessage() for r in caplog.records if "job.step_restarted" in r.getMessage())
        assert "step=train" in restarted and "warm step runner exited (code -9)" in restarted
        [again] = _warm_servers(but=earlier)
        assert again.pid != server.pid
    finally:
        workspace.close()


def _helpers(but: frozenset[int]) -> list[psutil.Process]:
    """This process's workspace helpers (warm servers, their trackers and steps), but `but`."""
    return [p for p in psutil.Process().children(recursive=True)
            if "autoretrain.adapters.localworkspace" in " ".join(p.cmdline()) and p.pid not in but]


def test_a_one_shot_command_s_workspace_starts_its_runner_and_tracker_at_its_first_job(
    tmp_path: Path, store: AzureBlobStore, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`warm_up=False` (what a CLI command builds): no helper process until a job runs, then the warm
    runner and the tracker forked from it, as for `up`."""
    caplog.set_level(logging.INFO, logger="autoretrain.adapters.localworkspace.tracking")
    earlier = frozenset(p.pid for p in _helpers(frozenset()))
    workspace = LocalWorkspace(tmp_path, pipeline=PIPELINE, contract=CONTRACT, blobs=store, warm_up=False)
    try:
        time.sleep(1.0)  # an eager workspace has started both by now
        assert _helpers(earlier) == []
        blob = store.upload(f"ds{unique}", "k/2026-04.csv", wine_csv(slice(0, 60)))
        key = WorkKey.for_blob(blob)
        run = workspace.submit(workspace.register_data(blob, key, {}), key, {JOB_TAG: key.value})
        assert workspace.wait(run.name, timeout=120).state is JobState.COMPLETED
        assert len(_warm_servers(but=earlier)) == 1
        assert workspace.flush_tracking(60)
    finally:
        workspace.close()
    assert "tracking.ready" in caplog.text and "tracker=forked" in caplog.text, caplog.text
