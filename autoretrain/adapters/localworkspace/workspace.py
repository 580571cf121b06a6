"""The embedded local workspace: the Workspace port on this machine, the default adapter.

Everything lives under one folder (`AUTORETRAIN_HOME`, default `.autoretrain/`):

    workspace/catalog.sqlite        data versions, jobs and models (survives restarts)
    workspace/data/NAME/VERSION/    each data version's file, copied from Blob Storage
    workspace/autoretrain/jobs/JOB/OUTPUT/   the pipeline's outputs (model, metrics, report), at the
                                    path the Azure ML adapter binds them to on its datastore
    workspace/jobs/JOB/outputs/     the steps' other outputs, one folder per output
    workspace/jobs/JOB/logs/        each step's log (stdout and stderr)
    workspace/models/NAME/VERSION/  each registered model (MLflow format)
    mlflow/                         the MLflow tracking store: a run per job, a child run per step,
                                    the registered models and the champion alias (tracking.py)

Jobs run `ml/pipeline.yml` as azure-ai-ml loads it: each component's command as a subprocess of
this Python, inputs and outputs bound to local folders, in dependency order, on a small pool of
worker threads. When a job changes state the workspace sends the Azure ML events the real service
sends (RunStatusChanged, and RunCompleted on success), in the Event Grid schema, to `on_event`.

As Azure ML does, each job is an MLflow run and each step a child run that the step's script logs
its parameters and metrics into: the workspace gives each step MLFLOW_TRACKING_URI and
MLFLOW_RUN_ID, and the script (the same on both adapters) never picks a tracking server itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from autoretrain.adapters.localworkspace.pipeline import (
    FromParent,
    FromStep,
    Literal,
    PipelineSpec,
    Step,
    load_pipeline,
)
from autoretrain.adapters.localworkspace.tracking import STEP_ENV, LocalTracking, StepRun
from autoretrain.adapters.localworkspace.warm import WarmRunner, die_with_parent
from autoretrain.datacontract import NO_CHAMPION_FILES, REPORT_FILE, mltable_text, rejection
from autoretrain.domain import (
    JOB_TAG,
    NO_CHAMPION_PATH,
    BlobRef,
    DataVersion,
    JobState,
    JobStatus,
    Metrics,
    ModelVersion,
    PipelineJob,
    TrainingMember,
    WorkKey,
    job_output_path,
)
from autoretrain.domain.errors import JobNotFoundError, WorkspaceError
from autoretrain.domain.events import RUN_COMPLETED, RUN_STATUS_CHANGED
from autoretrain.domain.ports import BlobStore
from autoretrain.logs import bound, log_event, log_exception
from autoretrain.settings import LOCAL_WORKSPACE_TOPIC

__all__ = ["LocalWorkspace", "catalog_rows"]

log = logging.getLogger("autoretrain.adapters.localworkspace.workspace")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS data_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, work_key TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL, source TEXT NOT NULL, lineage TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY, experiment TEXT NOT NULL, work_key TEXT NOT NULL,
    data TEXT NOT NULL, data_path TEXT NOT NULL, tags TEXT NOT NULL, status TEXT NOT NULL,
    failed_step TEXT, error TEXT, created TEXT NOT NULL, started TEXT, ended TEXT, champion TEXT,
    train_last INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS steps (
    job TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, started TEXT NOT NULL, ended TEXT,
    seconds REAL, exit_code INTEGER, PRIMARY KEY (job, step));
CREATE TABLE IF NOT EXISTS training_sets (
    name TEXT NOT NULL, version INTEGER NOT NULL, work_key TEXT NOT NULL UNIQUE, path TEXT NOT NULL,
    members TEXT NOT NULL, created TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version INTEGER NOT NULL, work_key TEXT NOT NULL UNIQUE, job TEXT NOT NULL,
    path TEXT NOT NULL, tags TEXT NOT NULL, properties TEXT NOT NULL, metrics TEXT NOT NULL,
    champion INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL,
    PRIMARY KEY (name, version));
"""
_INPUT_REF = re.compile(r"\$\{\{\s*inputs\.([A-Za-z0-9_]+)\s*\}\}")
_OUTPUT_REF = re.compile(r"\$\{\{\s*outputs\.([A-Za-z0-9_]+)\s*\}\}")
_OPTIONAL = re.compile(r"\$\[\[(.*?)\]\]")
PIPELINE_RUN_TYPE = "azureml.PipelineRun"


def _now() -> str:
    return datetime.now(UTC).isoformat()


_LOCAL_FILE = re.compile(r"(?<![\w/-])([0-9a-f]{24})(?:[.][a-z0-9]{1,8})?(?=:)")


def _local_file_name(key: WorkKey, blob_name: str) -> str:
    """A data version's local file name: from the work key, never from the (untrusted, maybe very
    long) blob name; only a short, plain extension is kept."""
    suffix = PurePosixPath(blob_name.replace("\\", "/")).suffix.lower()
    return f"{key.value}{suffix if re.fullmatch(r'[.][a-z0-9]{1,8}', suffix) else ''}"


class LocalWorkspace:
    """The Workspace port, embedded: SQLite + files, jobs as local subprocesses."""

    def __init__(
        self,
        home: Path,
        *,
        pipeline: Path,
        contract: Path,
        blobs: BlobStore,
        experiment: str = "autoretrain",
        data_asset: str = "autoretrain-data",
        model_name: str = "autoretrain-model",
        on_event: Callable[[dict[str, Any]], None] | None = None,
        max_parallel_jobs: int = 2,
        python: str = sys.executable,
        warm: bool = True,
        tracking: bool = True,
    ) -> None:
        self.root = Path(home).resolve() / "workspace"
        self.root.mkdir(parents=True, exist_ok=True)
        self._db = self.root / "catalog.sqlite"
        self._pipeline_path = pipeline
        self._contract = contract.resolve()
        self._blobs = blobs
        self.experiment = experiment
        self.data_asset = data_asset
        self.model_name = model_name
        self._on_event = on_event
        self._python = python
        self._pool = ThreadPoolExecutor(max_workers=max_parallel_jobs, thread_name_prefix="local-job")
        # Set by close(): running steps are stopped and their jobs left queued/running, to resume.
        self._stopping = threading.Event()
        self._steps: dict[str, subprocess.Popen[bytes] | _ForkedStep] = {}
        # Steps run in forks of a warm server that has imported the heavy libraries once.
        self._warm = warm
        self._thread_state = threading.local()
        self._runners: list[WarmRunner] = []
        self._spare: queue.Queue[WarmRunner | None] = queue.Queue()

        self._futures: set[Future[None]] = set()
        self._steps_lock = threading.Lock()
        self._spec: PipelineSpec | None = None
        self._spec_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()  # see _connect
        self._closed = False
        # Steps run offline: MLflow's telemetry would only wait on a network that is not there. The
        # tracking variables are the workspace's to set, per step (a shell's own are not inherited).
        inherited = {k: v for k, v in os.environ.items() if k not in STEP_ENV}
        self._step_env = {**inherited, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
        # MLflow tracking: a tracker process of its own, started now (it imports MLflow once).
        self._tracking = (
            LocalTracking(home, experiment=experiment, model_name=model_name, python=python, env=self._step_env)
            if tracking else None
        )
        self._tracked: set[str] = set()  # jobs running with an MLflow run
        # The warm servers load the tracking store's modules too, and open the store once, so a step
        # that logs pays neither.
        self._runner_env = (
            {**self._step_env, "MLFLOW_TRACKING_URI": self._tracking.uri} if self._tracking else self._step_env
        )
        if warm:
            threading.Thread(target=self._start_runners, args=(max_parallel_jobs,), name="local-warm-runners",
                             daemon=True).start()
        with self._connect() as db:
            db.executescript(_SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
            # A catalogue made before these were pipeline inputs.
            if "champion" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN champion TEXT")
            if "train_last" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN train_last INTEGER NOT NULL DEFAULT 0")
        # Loading the pipeline imports azure-ai-ml (~2 s): do it now, off the caller's thread,
        # so the first job does not wait for it and a broken pipeline.yml shows in the log at once.
        threading.Thread(target=self._preload, name="local-pipeline-load", daemon=True).start()

    def _preload(self) -> None:
        try:
            self.pipeline()
        except WorkspaceError as exc:
            log_event(log, logging.ERROR, "workspace.pipeline_invalid", error=str(exc))

    # -- storage -------------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A catalogue connection of this workspace's pool (one is opened when none is idle): opening
        one per call cost more than the queries on the ingest path."""
        try:
            db = self._idle.get_nowait()
        except queue.Empty:
            db = sqlite3.connect(self._db, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
        try:
            yield db
        finally:
            if db.in_transaction or self._closed:
                db.close()  # a transaction left open (a failed ROLLBACK) stays with no one
            else:
                self._idle.put(db)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # One writer at a time in this process; BEGIN IMMEDIATE guards against other processes.
        with self._write_lock, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def pipeline(self) -> PipelineSpec:
        with self._spec_lock:
            if self._spec is None:
                self._spec = load_pipeline(self._pipeline_path)
            return self._spec

    # -- data ----------------------------------------------------------------------------------

    def register_data(
        self, source: BlobRef, key: WorkKey, lineage: Mapping[str, str], content: bytes | None = None
    ) -> DataVersion:
        existing = self._data_by_key(key)
        if existing is not None:
            return existing
        # Two deliveries of one event may register at once: each writes to its own folder.
        staging = self.root / "data" / ".staging" / uuid.uuid4().hex / _local_file_name(key, source.name)
        if content is None:
            self._blobs.download_to(source, staging)
        else:
            staging.parent.mkdir(parents=True)
            staging.write_bytes(content)
        with self._transaction() as db:
            row = db.execute("SELECT * FROM data_versions WHERE work_key = ?", (key.value,)).fetchone()
            if row is None:
                version = db.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM data_versions WHERE name = ?", (self.data_asset,)
                ).fetchone()[0]
                final = self.root / "data" / self.data_asset / str(version) / staging.name
                final.parent.mkdir(parents=True, exist_ok=True)
                staging.replace(final)
                db.execute(
                    "INSERT INTO data_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (self.data_asset, version, key.value, str(final), source.path, json.dumps(dict(lineage)), _now()),
                )
                row = db.execute("SELECT * FROM data_versions WHERE work_key = ?", (key.value,)).fetchone()
        shutil.rmtree(staging.parent, ignore_errors=True)
        return self._data(row)

    def register_training_set(self, key: WorkKey, members: Sequence[TrainingMember]) -> DataVersion:
        # The local catalogue holds its own copy of each version (a local read, not a service call).
        name = f"{self.data_asset}-trainset"
        versions = [member.data_version for member in members]
        # The members' files in one read, before the write lock: other ingests do not wait on it.
        with self._connect() as db:
            row = db.execute("SELECT * FROM training_sets WHERE work_key = ?", (key.value,)).fetchone()
            named = (m.rpartition(":") for m in versions)
            wanted = [int(v) for n, _, v in named if n == self.data_asset and v.isdigit()]
            paths = {
                f"{r['name']}:{r['version']}": Path(r["path"])
                for r in db.execute(
                    "SELECT name, version, path FROM data_versions WHERE name = ?"
                    " AND version IN (SELECT value FROM json_each(?))", (self.data_asset, json.dumps(wanted)),
                )
            } if row is None else {}
        if row is not None:
            return DataVersion(name=row["name"], version=str(row["version"]), uri=Path(row["path"]).as_uri())
        unknown = [m for m in versions if m not in paths]
        if unknown:
            raise WorkspaceError(f"data version(s) {', '.join(unknown)} are not registered in {self._db}.")
        files = [paths[m] for m in versions]
        with self._transaction() as db:
            row = db.execute("SELECT * FROM training_sets WHERE work_key = ?", (key.value,)).fetchone()
            if row is None:
                version = db.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM training_sets WHERE name = ?", (name,)
                ).fetchone()[0]
                folder = self.root / "data" / name / str(version)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "MLTable").write_text(mltable_text(str(f) for f in files), encoding="utf-8")
                db.execute(
                    "INSERT INTO training_sets VALUES (?, ?, ?, ?, ?, ?)",
                    (name, version, key.value, str(folder), json.dumps(versions), _now()),
                )
                row = db.execute("SELECT * FROM training_sets WHERE work_key = ?", (key.value,)).fetchone()
        return DataVersion(name=row["name"], version=str(row["version"]), uri=Path(row["path"]).as_uri())

    def training_set_members(self, training_set: str) -> tuple[str, ...]:
        name, _, version = training_set.rpartition(":")
        with self._connect() as db:
            row = db.execute(
                "SELECT members FROM training_sets WHERE name = ? AND version = ?", (name, int(version or 0))
            ).fetchone()
        if row is None:
            raise WorkspaceError(f"training set {training_set} is not registered in {self._db}.")
        return tuple(json.loads(row["members"]))

    def _data_by_key(self, key: WorkKey) -> DataVersion | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM data_versions WHERE work_key = ?", (key.value,)).fetchone()
        return self._data(row) if row else None

    @staticmethod
    def _data(row: sqlite3.Row) -> DataVersion:
        return DataVersion(name=row["name"], version=str(row["version"]), uri=Path(row["path"]).as_uri())

    # -- jobs ----------------------------------------------------------------------------------

    def submit(
        self, data: DataVersion, key: WorkKey, tags: Mapping[str, str], champion: ModelVersion | None = None,
        train_last: int = 0,
    ) -> PipelineJob:
        name = key.job_name
        data_path = self._data_path(data)
        champion_path = self._model_path(champion) if champion is not None else None
        with self._transaction() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO jobs (name, experiment, work_key, data, data_path, tags, status, created,"
                " champion, train_last) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, self.experiment, key.value, f"{data.name}:{data.version}", str(data_path),
                 json.dumps(dict(tags)), JobState.QUEUED.value, _now(), champion_path, train_last),
            ).rowcount
        if inserted:
            self._start(name)
        with self._connect() as db:
            row = db.execute("SELECT tags FROM jobs WHERE name = ?", (name,)).fetchone()
        status = self.job_status(name)
        return PipelineJob(name=name, experiment=self.experiment, status=status.state, tags=json.loads(row["tags"]))

    def _model_path(self, model: ModelVersion) -> str:
        with self._connect() as db:
            row = db.execute(
                "SELECT path FROM models WHERE name = ? AND version = ?", (model.name, int(model.version))
            ).fetchone()
        if row is None:
            raise WorkspaceError(f"model {model.name}:{model.version} is not registered in {self._db}.")
        return str(row["path"])

    def _data_path(self, data: DataVersion) -> Path:
        with self._connect() as db:
            row = db.execute(
                "SELECT path FROM data_versions WHERE name = ? AND version = ?"
                " UNION ALL SELECT path FROM training_sets WHERE name = ? AND version = ?",
                (data.name, int(data.version), data.name, int(data.version)),
            ).fetchone()
        if row is None:
            raise WorkspaceError(f"data version {data.name}:{data.version} is not registered in {self._db}.")
        return Path(row["path"])

    def resume(self) -> list[str]:
        """Run again the jobs a previous process left queued or running (it died or was stopped)."""
        with self._connect() as db:
            names = [
                r["name"] for r in db.execute(
                    "SELECT name FROM jobs WHERE status IN (?, ?) ORDER BY created",
                    (JobState.QUEUED.value, JobState.RUNNING.value),
                )
            ]
        for name in names:
            log_event(log, logging.INFO, "job.resumed", job=name)
            self._start(name)
        return names

    def job_dir(self, job: str) -> Path:
        return self.root / "jobs" / job

    def _run_logged(self, job: str) -> None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE name = ?", (job,)).fetchone()
        with bound(**_job_fields(job, row)):
            self._run_bound(job, row)

    def _run_bound(self, job: str, row: sqlite3.Row) -> None:
        try:
            self._run(job, row)
        except Exception as exc:  # a bug here must still end the job and tell the loop
            if self._stopping.is_set():
                return
            log_exception(log, "job.crashed", error=str(exc))
            self._finish(job, JobState.FAILED, failed_step=None, error=f"local runner error: {exc}")

    def _set_status(self, job: str, state: JobState, **fields: str | None) -> None:
        columns = {"status": state.value, **fields}
        assignments = ", ".join(f"{c} = ?" for c in columns)
        with self._transaction() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE name = ?", (*columns.values(), job))

    def _run(self, job: str, row: sqlite3.Row) -> None:
        if self._stopping.is_set():
            return
        spec = self.pipeline()
        base = self.job_dir(job)
        for folder in (base, self.root / job_output_path(job, "")):
            if folder.exists():
                shutil.rmtree(folder)  # a resumed job starts clean: no half-written outputs
        (base / "logs").mkdir(parents=True)
        self._set_status(job, JobState.RUNNING, started=_now())
        # The job's MLflow run, made by the tracker while the job gets ready (nothing waits for it);
        # a job started before (and stopped) has one already.
        tracked = self._tracking is not None
        if self._tracking is not None:
            self._tracking.start_job(job, self._run_tags(row), resumed=row["started"] is not None)
            self._tracked.add(job)
        self._emit(job, RUN_STATUS_CHANGED, JobState.RUNNING)
        log_event(log, logging.INFO, "job.started", job=job, data=row["data"])

        parent_inputs = {"data": row["data_path"], "contract": str(self._contract)}
        # Every input bound, as on Azure ML: a first model's champion is the "no champion yet" marker.
        parent_inputs["champion"] = row["champion"] or str(self._no_champion())
        parent_inputs["train_last"] = str(row["train_last"] or 0)
        produced: dict[tuple[str, str], Path] = {}
        ended: tuple[StepRun, bool] | None = None  # the last step's run: ended after the next one is asked for
        for step in spec.steps:
            # The step's MLflow run (a child of the job's), made while the step gets ready.
            started = self._tracking.start_step(job, step.name) if tracked and self._tracking else None
            if ended is not None and self._tracking is not None:
                self._tracking.end_step(*ended)
            outputs = {}
            for out in step.outputs:
                promoted = step.promoted.get(out)
                folder = self.root / job_output_path(job, promoted) if promoted else base / "outputs" / step.name / out
                folder.mkdir(parents=True)
                outputs[out] = folder
                produced[(step.name, out)] = folder
            values = self._resolve_inputs(step, parent_inputs, produced)
            argv = self._argv(step, values, outputs)
            log_path = base / "logs" / f"{step.name}.log"
            err_path = base / "logs" / f"{step.name}.stderr.log"
            log_event(log, logging.INFO, "job.step_started", job=job, step=step.name)
            with self._transaction() as db:
                db.execute(
                    "INSERT OR REPLACE INTO steps (job, step, status, started) VALUES (?, ?, ?, ?)",
                    (job, step.name, JobState.RUNNING.value, _now()),
                )
            code_dir = step.snapshot(base / "code" / step.name)
            # Its script logs into it: the environment names it, as Azure ML's does.
            step_run = self._tracking.step_run(started) if started is not None and self._tracking else None
            tracked = step_run is not None  # else the tracker failed or is slow: the rest runs untracked
            env = {**self._step_env, **step_run.env()} if step_run is not None else self._step_env
            began = time.monotonic()
            code = self._call(job, argv, code_dir, log_path, err_path, env)
            seconds = round(time.monotonic() - began, 3)
            if self._stopping.is_set():
                # Stopped by close() (Ctrl-C, SIGTERM): not the job's fault. It stays running in the
                # catalogue, and the next start runs it again from the first step.
                log_event(log, logging.WARNING, "job.interrupted", job=job, step=step.name)
                return
            with self._transaction() as db:
                db.execute(
                    "UPDATE steps SET status = ?, ended = ?, seconds = ?, exit_code = ? WHERE job = ? AND step = ?",
                    ((JobState.COMPLETED if code == 0 else JobState.FAILED).value, _now(), seconds, code,
                     job, step.name),
                )
            ended = (step_run, code == 0) if step_run is not None else None
            if code != 0:
                if ended is not None and self._tracking is not None:
                    self._tracking.end_step(*ended)
                # The scripts write their one-line reason to stderr; fall back to the log's end.
                error = _last_line(err_path) or _last_line(log_path) or "no output"
                self._finish(job, JobState.FAILED, failed_step=step.name, error=f"{error} (exit code {code})")
                return
            log_event(log, logging.INFO, "job.step_completed", job=job, step=step.name, seconds=seconds)
        if ended is not None and self._tracking is not None:
            self._tracking.end_step(*ended)
        self._finish(job, JobState.COMPLETED)

    def _run_tags(self, row: sqlite3.Row) -> dict[str, str]:
        """The job run's tags: the job's own (work key, blob, eTag, champion), the data version of
        its blob version and the training set it trains on."""
        tags = {str(k): str(v) for k, v in json.loads(row["tags"]).items()}
        lineage = {k: tags[k] for k in ("blob", "etag") if k in tags}
        with self._connect() as db:
            # A retrain has a work key of its own: its blob version's data version is found by blob and eTag.
            found = db.execute(
                "SELECT name, version FROM data_versions WHERE work_key = ? OR (json_extract(lineage, '$.blob') = ?"
                " AND json_extract(lineage, '$.etag') = ?) ORDER BY work_key = ? DESC, version LIMIT 1",
                (row["work_key"], lineage.get("blob"), lineage.get("etag"), row["work_key"]),
            ).fetchone()
        data_version = f"{found['name']}:{found['version']}" if found else ""
        return {**tags, "work_key": row["work_key"], "data_version": data_version, "training_set": row["data"]}

    def _call(self, job: str, argv: list[str], cwd: Path, log_path: Path, err_path: Path,
              env: Mapping[str, str]) -> int:
        runner = self._warm_runner()
        if runner is not None:
            def started(pid: int) -> None:
                with self._steps_lock:
                    self._steps[job] = _ForkedStep(pid)
                if self._stopping.is_set():
                    self._steps[job].terminate()

            try:
                return runner.run(argv, cwd, log_path, err_path, env, on_start=started)
            finally:
                with self._steps_lock:
                    self._steps.pop(job, None)
        with log_path.open("wb") as out_file, err_path.open("wb") as err_file:
            with self._steps_lock:
                if self._stopping.is_set():
                    return -1
                # Its own session: a Ctrl-C in the terminal reaches the stack, which stops the
                # steps itself, instead of failing them half-way.
                process = subprocess.Popen(argv, cwd=cwd, stdout=out_file, stderr=err_file,
                                           stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                           preexec_fn=die_with_parent)
                self._steps[job] = process
            try:
                return process.wait()
            finally:
                with self._steps_lock:
                    self._steps.pop(job, None)

    def _warm_runner(self) -> WarmRunner | None:
        """This job thread's prefork server (started on first use), or None to run steps cold."""
        if not self._warm:
            return None
        runner: WarmRunner | None = getattr(self._thread_state, "runner", None)
        if runner is not None and runner.alive:
            return runner
        try:
            runner = self._spare.get(timeout=60)  # started with the workspace, warm by now
        except queue.Empty:
            runner = None
        if runner is None or not runner.alive:
            runner = self._new_runner()
            if runner is None:
                return None
        self._thread_state.runner = runner
        return runner

    def _new_runner(self) -> WarmRunner | None:
        try:
            runner = WarmRunner(self._python, self._runner_env)
        except (OSError, RuntimeError) as exc:
            log_event(log, logging.WARNING, "workspace.warm_runner_unavailable", error=str(exc))
            self._warm = False
            return None
        with self._steps_lock:
            self._runners.append(runner)
        return runner

    def _start_runners(self, count: int) -> None:
        started = []
        for _ in range(count):
            runner = self._new_runner()
            if runner is None:
                self._spare.put(None)
                return
            self._spare.put(runner)
            started.append(runner)
        if self._tracking is not None and self._tracking.ready():
            # The store exists now: each server opens it once, for all the steps it forks.
            for runner in started:
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    runner.open_tracking(self._tracking.uri)
        # The servers die with the thread that started them (PR_SET_PDEATHSIG): it lives until close().
        self._stopping.wait()

    @staticmethod
    def _resolve_inputs(
        step: Step, parent: Mapping[str, str], produced: Mapping[tuple[str, str], Path]
    ) -> dict[str, str]:
        values = {}
        for name, binding in step.inputs.items():
            if isinstance(binding, FromParent):
                if binding.input in parent:
                    values[name] = parent[binding.input]
                # else: an optional pipeline input left out (the champion of a first model); a
                # command that needs it anyway fails in _argv, naming the input.
            elif isinstance(binding, FromStep):
                values[name] = str(produced[(binding.step, binding.output)])
            elif isinstance(binding, Literal):
                values[name] = binding.value
        return values

    def _argv(self, step: Step, inputs: Mapping[str, str], outputs: Mapping[str, Path]) -> list[str]:
        def optional(match: re.Match[str]) -> str:
            # $[[ ... ]] holds flags of optional inputs: kept only when every input in it has a value.
            names = _INPUT_REF.findall(match.group(1))
            return match.group(1) if all(n in inputs for n in names) else ""

        command = _OPTIONAL.sub(optional, step.command)
        argv = shlex.split(command)
        if not argv or argv[0] not in ("python", "python3"):
            raise WorkspaceError(f"step {step.name!r}: command must start with 'python', got {command!r}.")

        def substitute(arg: str) -> str:
            def one_input(m: re.Match[str]) -> str:
                if m.group(1) not in inputs:
                    raise WorkspaceError(f"step {step.name!r}: input {m.group(1)!r} has no value.")
                return inputs[m.group(1)]

            def one_output(m: re.Match[str]) -> str:
                if m.group(1) not in outputs:
                    raise WorkspaceError(f"step {step.name!r}: output {m.group(1)!r} is not declared.")
                return str(outputs[m.group(1)])

            return _OUTPUT_REF.sub(one_output, _INPUT_REF.sub(one_input, arg))

        return [self._python, *(substitute(a) for a in argv[1:])]

    def _finish(self, job: str, state: JobState, *, failed_step: str | None = None, error: str | None = None) -> None:
        self._set_status(job, state, ended=_now(), failed_step=failed_step, error=error)
        if job in self._tracked and self._tracking is not None:
            self._tracked.discard(job)
            completed = state is JobState.COMPLETED
            metrics = self._output(job, "metrics") / "metrics.json" if completed else None
            self._tracking.end_job(job, "FINISHED" if completed else "FAILED", metrics)
        if state is JobState.COMPLETED:
            log_event(log, logging.INFO, "job.completed", job=job)
        else:
            log_event(log, logging.ERROR, "job.failed", job=job, step=failed_step, error=error)
        self._emit(job, RUN_STATUS_CHANGED, state)
        if state is JobState.COMPLETED:
            self._emit(job, RUN_COMPLETED, state)

    def _emit(self, job: str, event_type: str, state: JobState) -> None:
        if self._on_event is None:
            return
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE name = ?", (job,)).fetchone()
        experiment_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"autoretrain-local/{row['experiment']}"))
        data: dict[str, Any] = {
            "experimentId": experiment_id,
            "experimentName": row["experiment"],
            "runId": job,
            "runType": PIPELINE_RUN_TYPE,
            "runTags": json.loads(row["tags"]),
            "runProperties": {"azureml.runsource": "azureml.PipelineRun", "data": row["data"]},
        }
        if event_type == RUN_STATUS_CHANGED:
            data["runStatus"] = state.value
        event = {
            "id": str(uuid.uuid4()),
            "topic": LOCAL_WORKSPACE_TOPIC,
            "subject": f"experiments/{experiment_id}/runs/{job}",
            "eventType": event_type,
            "eventTime": _now(),
            "data": data,
            "dataVersion": "2",
            "metadataVersion": "1",
        }
        try:
            self._on_event(event)
        except Exception:  # the job's result is in the catalogue; reconcile can still find it
            log.exception("job.event_not_sent job=%s type=%s", job, event_type)

    def job_status(self, job: str) -> JobStatus:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE name = ?", (job,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"job {job!r} does not exist in the local workspace ({self._db}).")
        state = JobState(row["status"])
        log_path = self.job_dir(job) / "logs" / f"{row['failed_step']}.log" if row["failed_step"] else None
        error = self._blob_names(row["error"]) if row["error"] else None
        # The data's fault is what prep wrote in its report, as on Azure ML; not the exit code or the error text.
        rejected = self._rejection(job) if state is JobState.FAILED else None
        return JobStatus(
            name=job, state=state, failed_step=row["failed_step"], error=error,
            log=str(log_path) if log_path else str(self.job_dir(job) / "logs"), rejected=rejected,
        )

    def _rejection(self, job: str) -> str | None:
        path = self._output(job, "report") / REPORT_FILE
        try:
            reason = rejection(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None  # no report: the job failed before prep judged the data, or for another reason
        return self._blob_names(reason) if reason else None

    def _blob_names(self, error: str) -> str:
        """A step names the data file it read, and here that is our own file (`<work key>.csv`); say
        which customer blob it is, as on Azure ML, where the file keeps the blob's name."""

        def blob(match: re.Match[str]) -> str:
            with self._connect() as db:
                row = db.execute("SELECT lineage FROM data_versions WHERE work_key = ?", (match[1],)).fetchone()
            return str(json.loads(row["lineage"]).get("blob", match[0])) if row else match[0]

        return _LOCAL_FILE.sub(blob, error)

    def jobs(self) -> Iterator[PipelineJob]:
        with self._connect() as db:
            rows = db.execute("SELECT name, experiment, status, tags FROM jobs ORDER BY created").fetchall()
        for row in rows:
            tags = json.loads(row["tags"])
            if JOB_TAG in tags:
                yield PipelineJob(row["name"], row["experiment"], JobState(row["status"]), tags)

    def wait(self, job: str, timeout: float) -> JobStatus:
        """Block until the job is finished (for the CLI and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.job_status(job)
            if status.state.terminal or time.monotonic() > deadline:
                return status
            time.sleep(0.1)

    def _output(self, job: str, pipeline_output: str) -> Path:
        """Where the job's pipeline output is: the one rule both adapters follow (job_output_path)."""
        return self.root / job_output_path(job, pipeline_output)

    def _no_champion(self) -> Path:
        folder = self.root / NO_CHAMPION_PATH
        if not (folder / "MLmodel").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in NO_CHAMPION_FILES.items():  # whole files only: a crash leaves none half-written
                staging = folder / f".{name}.{uuid.uuid4().hex}"
                staging.write_text(text, encoding="utf-8")
                staging.replace(folder / name)
        return folder

    def job_metrics(self, job: str) -> Metrics:
        status = self.job_status(job)
        if status.state is not JobState.COMPLETED:
            raise WorkspaceError(f"job {job} is {status.state.value}; metrics exist only for completed jobs.")
        path = self._output(job, "metrics") / "metrics.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return Metrics.from_evaluate(raw)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise WorkspaceError(f"job {job}: {path} is missing or not evaluate's metrics JSON ({exc}).") from exc

    # -- models --------------------------------------------------------------------------------

    def register_model(self, job: str, key: WorkKey, metrics: Metrics, lineage: Mapping[str, str]) -> ModelVersion:
        existing = self._model_where("work_key = ?", key.value)
        if existing is not None:
            self._track_model(existing, key, metrics)  # in case the last attempt stopped before it
            return existing
        source = self._output(job, "model")
        if not (source / "MLmodel").is_file():
            raise WorkspaceError(f"job {job}: {source} holds no MLflow model (no MLmodel file).")
        tags = metrics.as_tags()
        with self._transaction() as db:
            row = db.execute("SELECT version FROM models WHERE work_key = ?", (key.value,)).fetchone()
            if row is None:
                version = db.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE name = ?", (self.model_name,)
                ).fetchone()[0]
                target = self.root / "models" / self.model_name / str(version)
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(source, target)
                db.execute(
                    "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    (self.model_name, version, key.value, job, str(target), json.dumps(tags),
                     json.dumps(dict(lineage)), metrics.to_json(), _now()),
                )
        model = self._model_where("work_key = ?", key.value)
        assert model is not None
        self._track_model(model, key, metrics)
        return model

    def _track_model(self, model: ModelVersion, key: WorkKey, metrics: Metrics) -> None:
        """The model version in the MLflow registry too (queued; the tracker skips a known one)."""
        if self._tracking is not None:
            self._tracking.register_model(model.job, key.value, model.version, Path(self._model_path(model)),
                                          metrics.as_tags())

    def _model_where(self, clause: str, *args: object) -> ModelVersion | None:
        with self._connect() as db:
            row = db.execute(f"SELECT * FROM models WHERE name = ? AND {clause}", (self.model_name, *args)).fetchone()
        return self._model(row) if row else None

    @staticmethod
    def _model(row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(
            name=row["name"], version=str(row["version"]), job=row["job"],
            metrics=Metrics.from_json(row["metrics"]), properties=json.loads(row["properties"]),
            champion=bool(row["champion"]),
        )

    def record_decision(self, model: ModelVersion, decision: str) -> None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT tags FROM models WHERE name = ? AND version = ?", (model.name, int(model.version))
            ).fetchone()
            if row is None:
                raise WorkspaceError(f"model {model.name}:{model.version} is not registered in {self._db}.")
            tags = {**json.loads(row["tags"]), "gate": decision}
            db.execute("UPDATE models SET tags = ? WHERE name = ? AND version = ?",
                       (json.dumps(tags), model.name, int(model.version)))
        if self._tracking is not None:
            self._tracking.tag_model(model.version, "gate", decision)

    def champion(self) -> ModelVersion | None:
        return self._model_where("champion = 1")

    def promote(self, model: ModelVersion, *, replacing: ModelVersion | None) -> ModelVersion | None:
        with self._transaction() as db:
            # Compare and swap, in one transaction: two completions racing cannot both win.
            row = db.execute("SELECT version FROM models WHERE name = ? AND champion = 1", (model.name,)).fetchone()
            current = str(row["version"]) if row else None
            if current != (replacing.version if replacing else None):
                return None
            db.execute("UPDATE models SET champion = 0 WHERE name = ? AND champion = 1", (model.name,))
            db.execute(
                "UPDATE models SET champion = 1 WHERE name = ? AND version = ?", (model.name, int(model.version))
            )
        promoted = self._model_where("version = ?", int(model.version))
        assert promoted is not None
        if self._tracking is not None:
            self._tracking.set_champion(promoted.version)  # the registered model's `champion` alias
        return promoted

    def drain(self, timeout: float) -> bool:
        """Wait until every job this process started has ended; False on timeout."""
        with self._steps_lock:
            futures = list(self._futures)
        _, pending = wait(futures, timeout=timeout)
        return not pending

    def _start(self, job: str) -> None:
        future = self._pool.submit(self._run_logged, job)
        with self._steps_lock:
            self._futures.add(future)
        future.add_done_callback(lambda f: self._forget(f))

    def _forget(self, future: Future[None]) -> None:
        with self._steps_lock:
            self._futures.discard(future)

    def close(self, timeout: float = 10.0) -> None:
        """Stop: running steps get SIGTERM (SIGKILL after `timeout`), queued jobs do not start.
        Their jobs stay queued or running in the catalogue, and `resume()` runs them again."""
        with self._steps_lock:
            self._stopping.set()
            running = list(self._steps.items())
        for job, process in running:
            log_event(log, logging.INFO, "job.stopping", job=job, pid=process.pid)
            process.terminate()
        for _, process in running:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for runner in self._runners:
            runner.close()
        if self._tracking is not None:
            self._tracking.close(timeout)
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break

    def flush_tracking(self, timeout: float = 30.0) -> bool:
        """Wait until the MLflow store has every run, model and alias sent so far (tests, CLI)."""
        return self._tracking.flush(timeout) if self._tracking is not None else True


def _job_fields(job: str, row: sqlite3.Row | None) -> dict[str, str]:
    """The correlation fields of a job's lines (its thread has no caller's context: a resumed job
    has none at all): the work key, and the blob version from its tags."""
    if row is None:
        return {"job": job}
    tags = json.loads(row["tags"])
    return {"work_key": row["work_key"], "blob": tags.get("blob"), "etag": tags.get("etag"), "job": job}


_LISTINGS = {
    "data": "SELECT name, version, source, path, created FROM data_versions ORDER BY name, version",
    "trainsets": "SELECT name, version, members, path, created FROM training_sets ORDER BY name, version",
    "jobs": "SELECT name, experiment, data, status, failed_step, error, created, started, ended"
    " FROM jobs ORDER BY created",
    "models": "SELECT name, version, job, metrics, champion, tags, properties, created FROM models"
    " ORDER BY name, version",
    "steps": "SELECT job, step, status, seconds, exit_code, started, ended FROM steps ORDER BY started",
}


def catalog_rows(home: Path, kind: str) -> list[dict[str, Any]]:
    """The catalogue's data versions, jobs or models as plain rows (`autoretrain list`)."""
    if kind not in _LISTINGS:
        raise WorkspaceError(f"cannot list {kind!r}; choose one of {', '.join(_LISTINGS)}.")
    path = Path(home).resolve() / "workspace" / "catalog.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in db.execute(_LISTINGS[kind])]
    finally:
        db.close()
    for row in rows:
        if "metrics" in row:
            row["metrics"] = json.loads(row["metrics"])["values"]
        if "properties" in row:
            row["properties"] = json.loads(row["properties"])
        if "members" in row:
            row["members"] = json.loads(row["members"])
        if "tags" in row:
            row["tags"] = json.loads(row["tags"])
        if "champion" in row:
            row["champion"] = bool(row["champion"])
    return rows


class _ForkedStep:
    """A step running in a fork of the warm server: what close() needs to stop it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise subprocess.TimeoutExpired(str(self.pid), timeout)


def _last_line(path: Path) -> str | None:
    """The last non-empty line a step wrote to a file, if any."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:500] if lines else None
