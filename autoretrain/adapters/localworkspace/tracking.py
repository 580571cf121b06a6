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

The MLflow calls run in a tracker process of their own (`serve`), so the workspace's process (the
Functions host, locally) never imports the full MLflow and SQLAlchemy (about a second and 100 MB):
`LocalTracking` sends it one JSON line per call, queued, in order, and the job goes on: only a
step's start waits for its run id (the step's environment names it), asked for while the workspace
gets the step ready, so it is there by then. Tracking
never fails a job: when the full `mlflow` package is missing, or the tracker fails, jobs run
untracked and the reason is logged once.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from autoretrain.domain.errors import one_line
from autoretrain.logs import log_event

__all__ = [
    "CHAMPION_ALIAS",
    "INSTALL_HINT",
    "LocalTracking",
    "StepRun",
    "artifact_root",
    "mlflow_missing",
    "serve",
    "tracking_uri",
]

log = logging.getLogger("autoretrain.adapters.localworkspace.tracking")

CHAMPION_ALIAS = "champion"
INSTALL_HINT = "pip install -e '.[dev]' (or: pip install 'mlflow>=3,<4')"
# Tags on our runs and model versions (besides the job's own tags).
JOB_TAG = "autoretrain.job"
KIND_TAG = "autoretrain.kind"
STEP_TAG = "autoretrain.step"
VERSION_TAG = "autoretrain.local_version"
WORK_KEY_TAG = "autoretrain.work_key"
_PARENT_TAG = "mlflow.parentRunId"
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
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = Path(home).resolve()
        self.uri = tracking_uri(self.home)
        self.experiment = experiment
        self.model_name = model_name
        self._python = python
        self._env = dict(os.environ if env is None else env)
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._closed = False
        self._disabled: str | None = None
        # The tracker is started on this thread and dies with it (PR_SET_PDEATHSIG): it lives until close().
        self._thread = threading.Thread(target=self._work, name="local-mlflow-tracking", daemon=True)
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
        return future

    def _wait(self, future: Future[Any], timeout: float) -> Any:
        try:
            return future.result(timeout)
        except FutureTimeout:
            log_event(log, logging.WARNING, "tracking.timeout", seconds=timeout)
            return None

    def _work(self) -> None:
        process = self._start()
        failures = 0
        while True:
            item = self._queue.get()
            if item is None:
                break
            request, future = item
            if process is None and self._disabled is None and failures < 3:
                process = self._start()  # it died: once more, for this call
            if process is None:
                future.set_result(None)
                continue
            try:
                answer = _exchange(process, request)
            except (OSError, ValueError, RuntimeError) as exc:
                failures += 1
                log_event(log, logging.WARNING, "tracking.tracker_died", op=request["op"], error=str(exc),
                          log=str(store_folder(self.home) / "tracker.log"))
                _stop(process)
                process = None
                future.set_result(None)
                continue
            if "error" in answer:
                log_event(log, logging.WARNING, "tracking.call_failed", op=request["op"], error=answer["error"])
            future.set_result(answer.get("ok"))
        if process is not None:
            _stop(process)

    def _start(self) -> subprocess.Popen[str] | None:
        missing = mlflow_missing()
        if missing is not None:
            self._disabled = missing
            log_event(log, logging.WARNING, "tracking.unavailable", reason=missing)
            return None
        from autoretrain.adapters.localworkspace.warm import die_with_parent

        folder = store_folder(self.home)
        artifact_root(self.home).mkdir(parents=True, exist_ok=True)
        config = {"uri": self.uri, "artifacts": artifact_root(self.home).as_uri(), "experiment": self.experiment,
                  "model_name": self.model_name}
        env = {k: v for k, v in self._env.items() if k not in STEP_ENV}
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        with (folder / "tracker.log").open("ab") as errors:
            process = subprocess.Popen(
                [self._python, "-c", "from autoretrain.adapters.localworkspace.tracking import serve; serve()",
                 json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True, env=env,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        try:
            ready = _read(process)
        except (OSError, ValueError, RuntimeError) as exc:
            _stop(process)
            self._disabled = f"the tracker did not start ({exc}); see {folder / 'tracker.log'}"
            log_event(log, logging.WARNING, "tracking.unavailable", reason=self._disabled)
            return None
        if "error" in ready:
            _stop(process)
            self._disabled = f"the tracker did not start: {ready['error']}"
            log_event(log, logging.WARNING, "tracking.unavailable", reason=self._disabled)
            return None
        log_event(log, logging.INFO, "tracking.ready", uri=self.uri, experiment=self.experiment)
        return process


def _exchange(process: subprocess.Popen[str], request: Mapping[str, Any]) -> dict[str, Any]:
    assert process.stdin is not None
    process.stdin.write(json.dumps(dict(request)) + "\n")
    process.stdin.flush()
    return _read(process)


def _read(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the tracker exited (code {process.poll()})")
    return dict(json.loads(line))


def _stop(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()  # end of input: the tracker returns
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- the tracker process ---------------------------------------------------------------------------


def serve() -> None:
    """The tracker's loop (in its own process): one JSON request a line in, one answer a line out."""
    out = sys.stdout
    # Anything MLflow prints goes to the log (stderr), never into the answers.
    sys.stdout = sys.stderr
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        tracker = _Tracker(**json.loads(sys.argv[1]))
    except Exception as exc:  # the workspace runs its jobs untracked, and says why
        logging.getLogger(__name__).exception("tracker.start_failed")
        _answer(out, {"error": one_line(exc, 500)})
        return
    # MLflow's and SQLAlchemy's objects live as long as the tracker: out of the collector's sight,
    # so a full collection does not pause a call for ~150 ms walking them.
    gc.collect()
    gc.freeze()
    _answer(out, {"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            _answer(out, {"ok": tracker.handle(request)})
        except Exception as exc:  # one failed call: logged here, reported, the next one goes on
            logging.getLogger(__name__).exception("tracker.call_failed op=%s", request.get("op"))
            _answer(out, {"error": one_line(exc, 500)})


def _answer(out: IO[str], message: Mapping[str, Any]) -> None:
    out.write(json.dumps(dict(message)) + "\n")
    out.flush()


class _Tracker:
    """The MLflow calls, on one client of the local store."""

    def __init__(self, uri: str, artifacts: str, experiment: str, model_name: str) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self._model_name = model_name
        self._jobs: dict[str, str] = {}  # job -> its run id, as started by this tracker
        # WAL: readers (the UI, the steps) and the writer do not block each other; kept by the file.
        with self._client._tracking_client.store.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        found = self._client.get_experiment_by_name(experiment)
        if found is None:
            try:
                self._experiment_id = str(self._client.create_experiment(experiment, artifact_location=artifacts))
            except MlflowException:  # another tracker on this home created it meanwhile
                found = self._client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                self._experiment_id = str(found.experiment_id)
        else:
            self._experiment_id = str(found.experiment_id)

    def handle(self, request: Mapping[str, Any]) -> Any:
        op = request["op"]
        fields = {k: v for k, v in request.items() if k != "op"}
        if op == "ping":
            return True
        handler = getattr(self, f"_{op}", None)
        if handler is None:
            raise ValueError(f"unknown tracker call {op!r}")
        return handler(**fields)

    def _job_run_id(self, job: str) -> str:
        if job not in self._jobs:
            run = self._job_run(job)
            if run is None:
                raise LookupError(f"job {job} has no run in the MLflow store")
            self._jobs[job] = str(run.info.run_id)
        return self._jobs[job]

    def _job_run(self, job: str) -> Any:
        runs = self._client.search_runs(
            [self._experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{_quoted(job)}' and tags.`{KIND_TAG}` = 'job'",
            max_results=1,
        )
        return runs[0] if runs else None

    def _start_job(self, job: str, tags: Mapping[str, str], resumed: bool) -> str:
        run = self._job_run(job) if resumed else None
        if run is None:
            run = self._client.create_run(
                self._experiment_id, run_name=job, tags={**tags, JOB_TAG: job, KIND_TAG: "job"}
            )
            self._jobs[job] = str(run.info.run_id)
            return self._jobs[job]
        # A resumed job (the workspace was stopped mid-way): its run again, its steps anew.
        run_id = self._jobs[job] = str(run.info.run_id)
        self._client.update_run(run_id, status="RUNNING")
        for step in self._client.search_runs(
            [self._experiment_id], filter_string=f"tags.`{_PARENT_TAG}` = '{run_id}'", max_results=1000
        ):
            self._client.delete_run(step.info.run_id)
        return run_id

    def _start_step(self, job: str, step: str) -> dict[str, str]:
        parent = self._job_run_id(job)
        run = self._client.create_run(
            self._experiment_id, run_name=step,
            tags={_PARENT_TAG: parent, JOB_TAG: job, STEP_TAG: step, KIND_TAG: "step"},
        )
        return {"run_id": str(run.info.run_id), "parent": parent, "experiment_id": self._experiment_id}

    def _end_run(self, run_id: str, status: str) -> None:
        self._client.set_terminated(run_id, status)

    def _end_job(self, job: str, status: str, metrics_file: str | None) -> None:
        from mlflow.entities import Metric, Param

        run_id = self._job_run_id(job)
        self._jobs.pop(job, None)

        if metrics_file is not None:
            raw = json.loads(Path(metrics_file).read_text(encoding="utf-8"))
            values = {str(k): float(v) for k, v in (raw.get("metrics") or {}).items()}
            values |= {f"champion_{k}": float(v) for k, v in (raw.get("champion_metrics") or {}).items()}
            now = _millis()
            self._client.log_batch(
                run_id,
                metrics=[Metric(name, value, now, 0) for name, value in values.items()],
                params=[Param("primary_metric", str(raw.get("primary_metric"))),
                        Param("test_rows", str(raw.get("test_rows")))],
            )
        # A step that never ran (after a failed one) is left as it is: it has no run.
        self._client.set_terminated(run_id, status)

    def _model_version(self, version: str) -> Any:
        """The registered version of a local model version (normally the same number)."""
        found = self._client.search_model_versions(
            f"name = '{_quoted(self._model_name)}' and tags.`{VERSION_TAG}` = '{_quoted(version)}'"
        )
        return found[0] if found else None

    def _register_model(self, job: str, work_key: str, version: str, path: str, tags: Mapping[str, str]) -> str:
        from mlflow.exceptions import MlflowException

        existing = self._model_version(version)
        if existing is not None:
            return str(existing.version)
        with contextlib.suppress(MlflowException):  # it exists already
            self._client.create_registered_model(self._model_name, description="autoretrain's models, one a retrain")
        run = self._job_run(job)
        if run is not None:
            self._client.log_artifacts(run.info.run_id, path, "model")
            source = f"{run.info.artifact_uri}/model"
        else:  # the job ran untracked: the version points at the local workspace's copy
            source = Path(path).as_uri()
        registered = self._client.create_model_version(
            self._model_name, source, run_id=run.info.run_id if run is not None else None,
            tags={**tags, VERSION_TAG: version, WORK_KEY_TAG: work_key, JOB_TAG: job},
        )
        if str(registered.version) != str(version):
            logging.getLogger(__name__).warning(
                "tracker.version_mismatch local=%s mlflow=%s (the store missed a registration)",
                version, registered.version,
            )
        if run is not None:
            self._client.set_tag(run.info.run_id, "model_version", f"{self._model_name}:{version}")
        return str(registered.version)

    def _tag_model(self, version: str, key: str, value: str) -> None:
        found = self._model_version(version)
        if found is None:
            raise LookupError(f"model {self._model_name}:{version} is not registered in the MLflow store")
        self._client.set_model_version_tag(self._model_name, found.version, key, value)

    def _set_champion(self, version: str) -> None:
        found = self._model_version(version)
        if found is None:
            raise LookupError(f"model {self._model_name}:{version} is not registered in the MLflow store")
        self._client.set_registered_model_alias(self._model_name, CHAMPION_ALIAS, found.version)


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _millis() -> int:
    import time

    return int(time.time() * 1000)
