"""The local workspace's job runner: a job's steps, in order, on a small pool of worker threads.

A job runs `ml/pipeline.yml`'s steps in dependency order, each its component's command (templated by
pipeline.py) as a process (processes.py), its inputs and outputs bound to local folders. The runner
keeps the job's state and each step's in the catalogue, the job's MLflow runs (tracking.py) and its
run events (events.py). A job stopped by `close()` stays queued or running in the catalogue; the
next workspace resumes it from its first step, on clean folders.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from threading import Lock, Thread

from autoretrain.adapters.localworkspace.catalog import Catalog, now
from autoretrain.adapters.localworkspace.channel import ForkedHelper
from autoretrain.adapters.localworkspace.events import RunEvents
from autoretrain.adapters.localworkspace.pipeline import PipelineSpec, Step, cache_folder, load_pipeline
from autoretrain.adapters.localworkspace.processes import StepProcesses
from autoretrain.adapters.localworkspace.tracking import LocalTracking, StepRun
from autoretrain.adapters.localworkspace.warm import RunnerDied
from autoretrain.datacontract import NO_CHAMPION_FILES
from autoretrain.domain import NO_CHAMPION_PATH, JobState, job_output_path
from autoretrain.domain.errors import WorkspaceError
from autoretrain.logs import bound, log_event, log_exception

__all__ = ["JobRunner"]

# The workspace's lines keep the workspace's logger, whichever of its modules writes them.
log = logging.getLogger("autoretrain.adapters.localworkspace.workspace")


class JobRunner:
    """Runs the catalogue's jobs, each on a worker thread of its own while it runs."""

    def __init__(
        self, catalog: Catalog, *, pipeline: Path, contract: Path, python: str, warm: bool,
        tracking: LocalTracking | None, events: RunEvents, step_env: Mapping[str, str], max_parallel_jobs: int,
        warm_up: bool = True,
    ) -> None:
        self._catalog = catalog
        self._root = catalog.root
        self._pipeline_path = pipeline
        self._spec: PipelineSpec | None = None
        self._spec_lock = Lock()
        self._contract = contract
        self._python = python
        self._tracking = tracking
        self._events = events
        self._step_env = step_env
        # Steps run in forks of a warm server that has imported the heavy libraries once; it loads
        # the tracking store's modules too, and opens the store once, so a step that logs pays neither.
        self._processes = StepProcesses(
            python=python, warm=warm, tracking=tracking,
            env={**step_env, "MLFLOW_TRACKING_URI": tracking.uri} if tracking is not None else step_env,
            eager=warm_up,
        )
        self._pool = ThreadPoolExecutor(max_workers=max_parallel_jobs, thread_name_prefix="local-job")
        self._lock = Lock()
        self._futures: set[Future[None]] = set()
        self._tracked: set[str] = set()  # jobs running with an MLflow run
        # Loading the pipeline imports azure-ai-ml (~2 s): do it now, off the caller's thread,
        # so the first job does not wait for it and a broken pipeline.yml shows in the log at once.
        Thread(target=self._preload, name="local-pipeline-load", daemon=True).start()

    def _preload(self) -> None:
        try:
            self.pipeline()
        except WorkspaceError as exc:
            log_event(log, logging.ERROR, "workspace.pipeline_invalid", error=str(exc))

    def pipeline(self) -> PipelineSpec:
        with self._spec_lock:
            if self._spec is None:
                self._spec = load_pipeline(self._pipeline_path, cache=cache_folder())
            return self._spec

    def fork_tracker(self, log: Path) -> ForkedHelper | None:
        """The MLflow tracker, forked from the warm step runner (None: there is none)."""
        return self._processes.fork_tracker(log)

    def job_dir(self, job: str) -> Path:
        return self._root / "jobs" / job

    def start(self, job: str) -> None:
        future = self._pool.submit(self._run_logged, job)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def drain(self, timeout: float) -> bool:
        """Wait until every job this runner started has ended; False on timeout."""
        with self._lock:
            futures = list(self._futures)
        _, pending = wait(futures, timeout=timeout)
        return not pending

    def close(self, timeout: float) -> None:
        """Stop the running steps (SIGKILL after `timeout`); queued jobs do not start."""
        self._processes.stop(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._processes.close()

    # -- one job -------------------------------------------------------------------------------

    def _run_logged(self, job: str) -> None:
        row = self._catalog.job(job)
        if row is None:  # not in the catalogue (a job starts once it is): nothing to run
            return
        with bound(**_job_fields(job, row)):
            self._run_bound(job, row)

    def _run_bound(self, job: str, row: sqlite3.Row) -> None:
        try:
            self._run(job, row)
        except Exception as exc:  # a bug here must still end the job and tell the loop
            if self._processes.stopping:
                return
            log_exception(log, "job.crashed", error=str(exc))
            self._finish(job, JobState.FAILED, failed_step=None, error=f"local runner error: {exc}")

    def _run(self, job: str, row: sqlite3.Row) -> None:
        if self._processes.stopping:
            return
        spec = self.pipeline()
        self._begin(job, row)
        parent = {"data": row["data_path"], "contract": str(self._contract)}
        # Every input bound, as on Azure ML: a first model's champion is the "no champion yet" marker.
        parent["champion"] = row["champion"] or str(self._no_champion())
        parent["train_last"] = str(row["train_last"] or 0)
        parent["new_files"] = str(row["new_files"] or 1)
        parent["mode"] = row["mode"] or "train"
        produced: dict[tuple[str, str], Path] = {}
        runs = _StepRuns(self._tracking if job in self._tracked else None)
        for step in spec.steps:
            if not self._run_step(job, step, parent, produced, runs):
                return
        runs.end_last()
        self._finish(job, JobState.COMPLETED)

    def _begin(self, job: str, row: sqlite3.Row) -> None:
        for folder in (self.job_dir(job), self._root / job_output_path(job, "")):
            if folder.exists():
                shutil.rmtree(folder)  # a resumed job starts clean: no half-written outputs
        (self.job_dir(job) / "logs").mkdir(parents=True)
        self._catalog.set_job(job, JobState.RUNNING, started=now())
        # The job's MLflow run, made by the tracker while the job gets ready (nothing waits for it);
        # a job started before (and stopped) has one already.
        if self._tracking is not None:
            self._tracking.start_job(job, self._run_tags(row), resumed=row["started"] is not None)
            self._tracked.add(job)
        self._events.changed(job, JobState.RUNNING)
        log_event(log, logging.INFO, "job.started", job=job, data=row["data"])

    def _run_step(
        self, job: str, step: Step, parent: Mapping[str, str], produced: dict[tuple[str, str], Path],
        runs: _StepRuns,
    ) -> bool:
        """Run one step of the job; False when the job ends with it (failed, or stopped by close())."""
        started = runs.ask(job, step.name)
        base = self.job_dir(job)
        outputs = {}
        for out in step.outputs:
            promoted = step.promoted.get(out)
            folder = self._root / job_output_path(job, promoted) if promoted else base / "outputs" / step.name / out
            folder.mkdir(parents=True)
            outputs[out] = produced[(step.name, out)] = folder
        argv = step.argv(self._python, step.bind(parent, produced), outputs)
        log_path, err_path = base / "logs" / f"{step.name}.log", base / "logs" / f"{step.name}.stderr.log"
        log_event(log, logging.INFO, "job.step_started", job=job, step=step.name)
        self._catalog.step_started(job, step.name)
        code_dir = step.snapshot(base / "code" / step.name)
        # Its script logs into its run: the environment names it, as Azure ML's does.
        step_run = runs.run(started)
        env = {**self._step_env, **step_run.env()} if step_run is not None else self._step_env
        began = time.monotonic()
        try:
            code = self._processes.run(job, argv, code_dir, log_path, err_path, env)
        except RunnerDied as exc:
            if self._processes.stopping:
                raise
            # The server the step forked from died under it (killed, out of memory): not the step's
            # fault. Once more, from clean outputs, on a runner started anew; a second death fails it.
            log_event(log, logging.WARNING, "job.step_restarted", job=job, step=step.name, error=str(exc))
            for folder in outputs.values():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
            code = self._processes.run(job, argv, code_dir, log_path, err_path, env)
        seconds = round(time.monotonic() - began, 3)
        if self._processes.stopping:
            # Stopped by close() (Ctrl-C, SIGTERM): not the job's fault. It stays running in the
            # catalogue, and the next start runs it again from the first step.
            log_event(log, logging.INFO, "job.interrupted", job=job, step=step.name)
            return False
        self._catalog.step_ended(job, step.name, code, seconds)
        runs.ended(step_run, code == 0)
        if code != 0:
            runs.end_last()
            # The scripts write their one-line reason to stderr; fall back to the log's end.
            error = _last_line(err_path) or _last_line(log_path) or "no output"
            self._finish(job, JobState.FAILED, failed_step=step.name, error=f"{error} (exit code {code})")
            return False
        log_event(log, logging.INFO, "job.step_completed", job=job, step=step.name, seconds=seconds)
        return True

    def _finish(self, job: str, state: JobState, *, failed_step: str | None = None, error: str | None = None) -> None:
        self._catalog.set_job(job, state, ended=now(), failed_step=failed_step, error=error)
        if job in self._tracked and self._tracking is not None:
            self._tracked.discard(job)
            completed = state is JobState.COMPLETED
            metrics = self._root / job_output_path(job, "metrics") / "metrics.json" if completed else None
            self._tracking.end_job(job, "FINISHED" if completed else "FAILED", metrics)
        if state is JobState.COMPLETED:
            log_event(log, logging.INFO, "job.completed", job=job)
        else:
            log_event(log, logging.ERROR, "job.failed", job=job, step=failed_step, error=error)
        self._events.changed(job, state)

    def _run_tags(self, row: sqlite3.Row) -> dict[str, str]:
        """The job run's tags: the job's own (work key, blob, eTag, champion), the data version of
        its blob version and the training set it trains on."""
        tags = {str(k): str(v) for k, v in json.loads(row["tags"]).items()}
        data_version = self._catalog.data_version_of(row["work_key"], tags.get("blob"), tags.get("etag"))
        return {**tags, "work_key": row["work_key"], "data_version": data_version, "training_set": row["data"]}

    def _no_champion(self) -> Path:
        folder = self._root / NO_CHAMPION_PATH
        if not (folder / "MLmodel").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in NO_CHAMPION_FILES.items():  # whole files only: a crash leaves none half-written
                staging = folder / f".{name}.{uuid.uuid4().hex}"
                staging.write_text(text, encoding="utf-8")
                staging.replace(folder / name)
        return folder


class _StepRuns:
    """A job's step runs in MLflow, as its steps go. A step's run is asked for before the last step's
    run is ended, so the tracker makes it while the step gets ready; once a step runs untracked (the
    tracker failed or is slow), the rest of the job does too."""

    def __init__(self, tracking: LocalTracking | None) -> None:
        self._tracking = tracking
        self._on = tracking is not None
        self._last: tuple[StepRun, bool] | None = None  # ended after the next step's run is asked for

    def ask(self, job: str, step: str) -> Future[object] | None:
        started = self._tracking.start_step(job, step) if self._on and self._tracking is not None else None
        self.end_last()
        return started

    def run(self, started: Future[object] | None) -> StepRun | None:
        step_run = self._tracking.step_run(started) if started is not None and self._tracking is not None else None
        self._on = step_run is not None
        return step_run

    def ended(self, step_run: StepRun | None, ok: bool) -> None:
        self._last = (step_run, ok) if step_run is not None else None

    def end_last(self) -> None:
        if self._last is not None and self._tracking is not None:
            self._tracking.end_step(*self._last)
            self._last = None


def _job_fields(job: str, row: sqlite3.Row) -> dict[str, str]:
    """The correlation fields of a job's lines (its thread has no caller's context: a resumed job
    has none at all): the work key, and the blob version from its tags."""
    tags = json.loads(row["tags"])
    return {"work_key": row["work_key"], "blob": tags.get("blob"), "etag": tags.get("etag"), "job": job}


def _last_line(path: Path) -> str | None:
    """The last non-empty line a step wrote to a file, if any."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:500] if lines else None
