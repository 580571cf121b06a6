"""The local workspace's MLflow tracking: what Azure ML's workspace tracking is to a real job.

On Azure ML every pipeline job is an MLflow run in the workspace and each step a child run; Azure
ML sets MLFLOW_TRACKING_URI and MLFLOW_RUN_ID for each step, whose script logs to "its" run and
never chooses a tracking server. The embedded workspace does the same on this machine, with a
local store under AUTORETRAIN_HOME:

    mlflow/mlflow.db        tracking and model registry (SQLAlchemy on SQLite; MLflow 3 deprecates
                            the file store), in WAL mode so the UI reads while jobs write
    mlflow/artifacts/       run artifacts: each registered model's files, under its job's run
    mlflow/tracker.log      the tracker process's own log

- one run per pipeline job, named by the job, in the workspace's experiment, tagged with the work
  key, blob, eTag, data version and training set; a resumed job keeps its run;
- one child run per step (prep, train, evaluate), created when the step starts, ended FINISHED or
  FAILED with the step; the step logs its own parameters and metrics into it;
- the job's run gets evaluate's metrics (so the UI charts the primary metric across retrains);
- each registered model is a version of the registered model of the workspace's model name (its
  version number is the local one, tagged too), its files logged under the job's run, its metrics
  as tags; the champion is the registered model's `champion` alias, moved on promotion.

The MLflow calls run in a tracker process of their own (tracker.py), so the workspace's process
(the Functions host, locally) never imports the full MLflow and SQLAlchemy (about a second and
100 MB): `LocalTracking` sends it each call over its connection (channel.py), queued, in order, and
the job goes on: only a step's start waits for its run id (the step's environment names it), asked
for while the workspace gets the step ready, so it is there by then. The tracker is forked from the
warm step runner (warm.py), which has imported MLflow and SQLAlchemy for the steps already; without
one it starts cold. A new store starts as a copy of MLflow's empty schema (tracker.py). Tracking never fails a job:
when the full `mlflow` package is missing, or the tracker fails, jobs run untracked and the reason
is logged once.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoretrain.adapters.localworkspace.channel import ForkedHelper, Helper
from autoretrain.adapters.localworkspace.tracker import CHAMPION_ALIAS
from autoretrain.logs import log_event

__all__ = [
    "CHAMPION_ALIAS",
    "INSTALL_HINT",
    "LocalTracking",
    "StepRun",
    "artifact_root",
    "mlflow_missing",
    "tracking_uri",
]

log = logging.getLogger("autoretrain.adapters.localworkspace.tracking")

INSTALL_HINT = "pip install -e '.[dev]' (or: pip install 'mlflow>=3,<4')"
# The step's environment that names its run; nothing else of MLflow's is inherited by a step.
STEP_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
            "MLFLOW_REGISTRY_URI", "MLFLOW_PARENT_RUN_ID")


def store_folder(home: Path) -> Path:
    return Path(home).resolve() / "mlflow"


def tracking_uri(home: Path) -> str:
    """The local tracking (and registry) store's URI: SQLite, as MLflow 3 recommends for local use."""
    return f"sqlite:///{store_folder(home) / 'mlflow.db'}"


def artifact_root(home: Path) -> Path:
    return store_folder(home) / "artifacts"


def mlflow_missing() -> str | None:
    """Why the local store cannot be used, in one line (None: it can). The function app's
    requirements carry only mlflow-skinny; the SQLite store and the UI need the full package."""
    try:
        importlib.metadata.distribution("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return f"the full 'mlflow' package is not installed (mlflow-skinny has no SQL store or UI): {INSTALL_HINT}"
    for module in ("sqlalchemy", "alembic"):
        if importlib.util.find_spec(module) is None:
            return f"'{module}' is not installed (the full mlflow package needs it): {INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class StepRun:
    """A step's MLflow run: the environment that points the step's script at it."""

    run_id: str
    parent_run_id: str
    experiment_id: str
    uri: str

    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_RUN_ID": self.run_id,
                "MLFLOW_EXPERIMENT_ID": self.experiment_id, "MLFLOW_PARENT_RUN_ID": self.parent_run_id}


_Item = tuple[dict[str, Any], "Future[Any]"]


class LocalTracking:
    """The workspace's side: queues each call to the tracker process, in order, on one thread."""

    def __init__(
        self, home: Path, *, experiment: str, model_name: str, python: str = sys.executable,
        env: Mapping[str, str] | None = None, start: bool = True,
    ) -> None:
        """The tracker starts now, cold; with `start=False`, at `start()`."""
        self.home = Path(home).resolve()
        self.uri = tracking_uri(self.home)
        self.experiment = experiment
        self.model_name = model_name
        self._python = python
        self._env = dict(os.environ if env is None else env)
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._closed = False
        self._disabled: str | None = None
        self._fork: Callable[[Path], ForkedHelper | None] | None = None
        self._start_lock = threading.Lock()
        self._lazy = False  # started by the first call
        # A tracker started cold dies with this thread (PR_SET_PDEATHSIG): it lives until close().
        self._thread = threading.Thread(target=self._work, name="local-mlflow-tracking", daemon=True)
        if start:
            self._thread.start()

    def start(self, fork: Callable[[Path], ForkedHelper | None] | None = None, *, lazy: bool = False) -> None:
        """Start the tracker; `lazy`: at the first call instead (a one-shot command may make none).
        `fork(log)`: one forked from a process that has imported MLflow and SQLAlchemy already (the
        warm step runner: about 1.8 s of CPU less than a cold start), or None; without `fork`, or
        when it gives none (or fails), the tracker starts cold."""
        self._fork = fork
        self._lazy = lazy
        if not lazy:
            self._begin()

    def _begin(self) -> None:
        with self._start_lock:
            if self._thread.ident is None:
                self._thread.start()

    # -- the calls -----------------------------------------------------------------------------

    def start_job(self, job: str, tags: Mapping[str, str], *, resumed: bool = True) -> Future[Any]:
        """The job's run: created, or for a `resumed` job the one of its earlier attempt, if any
        (its step runs are deleted). The future's result is its id (None: the job runs untracked)."""
        return self._send("start_job", job=job, tags=dict(tags), resumed=resumed)

    def start_step(self, job: str, step: str) -> Future[Any]:
        """Ask for a new child run of the job's run for a step; `step_run` waits for it."""
        return self._send("start_step", job=job, step=step)

    def step_run(self, started: Future[Any], timeout: float = 30.0) -> StepRun | None:
        """The step's run once made (None: the step runs untracked)."""
        answer = self._wait(started, timeout)
        if not isinstance(answer, dict):
            return None
        return StepRun(run_id=answer["run_id"], parent_run_id=answer["parent"],
                       experiment_id=answer["experiment_id"], uri=self.uri)

    def end_step(self, run: StepRun, ok: bool) -> None:
        self._send("end_run", run_id=run.run_id, status="FINISHED" if ok else "FAILED")

    def end_job(self, job: str, status: str, metrics_file: Path | None = None) -> None:
        """End the job's run (FINISHED, FAILED or KILLED); log evaluate's metrics.json onto it."""
        self._send("end_job", job=job, status=status,
                   metrics_file=str(metrics_file) if metrics_file is not None else None)

    def register_model(self, job: str, work_key: str, version: str, path: Path, tags: Mapping[str, str]) -> None:
        self._send("register_model", job=job, work_key=work_key, version=version, path=str(path), tags=dict(tags))

    def tag_model(self, version: str, key: str, value: str) -> None:
        self._send("tag_model", version=version, key=key, value=value)

    def set_champion(self, version: str) -> None:
        self._send("set_champion", version=version)

    def ready(self, timeout: float = 120.0) -> bool:
        """Wait until the tracker runs (and the store exists); False if it does not (or not yet)."""
        try:
            return self._send("ping").result(timeout) is True
        except FutureTimeout:
            return False

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every call sent so far is done; False on timeout."""
        future = self._send("ping")
        try:
            future.result(timeout)
        except FutureTimeout:
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued calls (up to `timeout`), then stop the tracker."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def disabled(self) -> str | None:
        """Why jobs are not tracked, once known (None: tracked, or not known yet)."""
        return self._disabled

    # -- the plumbing --------------------------------------------------------------------------

    def _send(self, op: str, **fields: Any) -> Future[Any]:
        future: Future[Any] = Future()
        if self._closed:
            future.set_result(None)
        else:
            self._queue.put(({"op": op, **fields}, future))
            if self._lazy:
                self._begin()
        return future

    def _wait(self, future: Future[Any], timeout: float) -> Any:
        try:
            return future.result(timeout)
        except FutureTimeout:
            log_event(log, logging.WARNING, "tracking.timeout", seconds=timeout)
            return None

    def _work(self) -> None:
        tracker = self._start()
        failures = 0
        while True:
            item = self._queue.get()
            if item is None:
                break
            request, future = item
            if tracker is None and self._disabled is None and failures < 3:
                tracker = self._start()  # it died: once more, for this call
            if tracker is None:
                future.set_result(None)
                continue
            answer, tracker, failures = self._call(tracker, request, failures)
            if answer is None:
                future.set_result(None)
                continue
            if "error" in answer:
                log_event(log, logging.WARNING, "tracking.call_failed", op=request["op"], error=answer["error"])
            future.set_result(answer.get("ok"))
        if tracker is not None:
            tracker.stop()

    def _call(
        self, tracker: Helper | ForkedHelper, request: dict[str, Any], failures: int
    ) -> tuple[dict[str, Any] | None, Helper | ForkedHelper | None, int]:
        """Make the call; if the tracker died under it, make it once more on a new one (every call
        is safe to repeat: the tracker finds what an earlier attempt made). The answer (None: lost),
        the tracker now, and how many trackers died."""
        while True:
            try:
                return tracker.call(request), tracker, failures
            except (OSError, ValueError, RuntimeError) as exc:
                failures += 1
                log_event(log, logging.WARNING, "tracking.tracker_died", op=request["op"], error=str(exc),
                          log=str(store_folder(self.home) / "tracker.log"))
                tracker.stop()
            again = self._start() if self._disabled is None and failures < 3 else None
            if again is None:
                return None, None, failures
            tracker = again
            # A job's run that the dead tracker may have made is found, not made twice.
            request = {**request, "again": True, **({"resumed": True} if request["op"] == "start_job" else {})}

    def _start(self) -> Helper | ForkedHelper | None:
        if self._nothing_to_track():
            return None
        missing = mlflow_missing()
        if missing is not None:
            self._disable(missing)
            return None
        folder = store_folder(self.home)
        artifact_root(self.home).mkdir(parents=True, exist_ok=True)
        config = {"uri": self.uri, "artifacts": artifact_root(self.home).as_uri(), "experiment": self.experiment,
                  "model_name": self.model_name}
        env = {k: v for k, v in self._env.items() if k not in STEP_ENV}
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        tracker: Helper | ForkedHelper | None = self._forked(folder / "tracker.log")
        if tracker is None:
            if self._nothing_to_track():  # closed while the warm runner was starting
                return None
            with (folder / "tracker.log").open("ab") as output:
                tracker = Helper("from autoretrain.adapters.localworkspace.tracker import serve; serve()",
                                 python=self._python, env=env, what="tracker", output=output)
        try:
            ready = tracker.call(config)
        except (OSError, ValueError, RuntimeError) as exc:
            tracker.stop()
            self._disable(f"the tracker did not start ({exc}); see {folder / 'tracker.log'}")
            return None
        if "error" in ready:
            tracker.stop()
            self._disable(f"the tracker did not start: {ready['error']}")
            return None
        started = "forked" if isinstance(tracker, ForkedHelper) else "cold"
        log_event(log, logging.INFO, "tracking.ready", uri=self.uri, experiment=self.experiment, tracker=started)
        return tracker

    def _nothing_to_track(self) -> bool:
        """Closed with no call left to make (only close()'s end mark queued): a stop right after
        the start does not wait for a tracker that would track nothing."""
        return self._closed and self._queue.qsize() <= 1

    def _forked(self, output: Path) -> ForkedHelper | None:
        if self._fork is None:
            return None
        try:
            return self._fork(output)
        except (OSError, RuntimeError, ValueError) as exc:  # the runner is gone: a cold start, then
            log_event(log, logging.INFO, "tracking.fork_failed", error=str(exc))
            return None

    def _disable(self, reason: str) -> None:
        self._disabled = reason
        log_event(log, logging.WARNING, "tracking.unavailable", reason=reason)

