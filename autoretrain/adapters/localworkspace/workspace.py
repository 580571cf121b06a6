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

`LocalWorkspace` is the port; its parts do the work (the package's docstring lists them).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoretrain.adapters.localworkspace.catalog import (
    Catalog,
    catalog_rows,
    local_file_name,
    runner_alive,
    this_runner,
)
from autoretrain.adapters.localworkspace.events import RunEvents
from autoretrain.adapters.localworkspace.pipeline import PipelineSpec
from autoretrain.adapters.localworkspace.runner import JobRunner
from autoretrain.adapters.localworkspace.tracking import STEP_ENV, LocalTracking
from autoretrain.datacontract import REPORT_FILE, rejection
from autoretrain.domain import (
    JOB_TAG,
    BlobRef,
    DataVersion,
    JobMode,
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
from autoretrain.domain.ports import BlobStore
from autoretrain.logs import log_event
from autoretrain.waiting import wait_until

__all__ = ["LocalWorkspace", "catalog_rows"]  # catalog_rows: catalog.py's, where `autoretrain list` finds it

log = logging.getLogger("autoretrain.adapters.localworkspace.workspace")


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
        warm_up: bool = True,
    ) -> None:
        """`warm_up`: the warm step runner and the MLflow tracker start now, so the first job finds
        them ready (`up`, the host); otherwise at the first job or tracking call (a one-shot command,
        which may run no job: about 4 s of CPU saved)."""
        self.root = Path(home).resolve() / "workspace"
        self.root.mkdir(parents=True, exist_ok=True)
        self._blobs = blobs
        self.experiment = experiment
        self.data_asset = data_asset
        self.model_name = model_name
        # Steps run offline: MLflow's telemetry would only wait on a network that is not there. The
        # tracking variables are the workspace's to set, per step (a shell's own are not inherited).
        inherited = {k: v for k, v in os.environ.items() if k not in STEP_ENV}
        step_env = {**inherited, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
        # MLflow tracking: a tracker process of its own (it imports MLflow once), forked from the warm
        # step runner once that has imported it (or started cold without one): started below.
        self._tracking = (
            LocalTracking(home, experiment=experiment, model_name=model_name, python=python, env=step_env,
                          start=False)
            if tracking else None
        )
        self._catalog = Catalog(self.root, data_asset=data_asset, model_name=model_name)
        # This workspace as its jobs' runner: unique to it, so a second workspace of this process
        # (after the first is closed) does not take the first one's jobs for its own.
        self._me = f"{this_runner()}:{uuid.uuid4().hex[:8]}"
        self._runner = JobRunner(
            self._catalog, pipeline=pipeline, contract=contract.resolve(), python=python, warm=warm,
            tracking=self._tracking, events=RunEvents(self._catalog, on_event), step_env=step_env,
            max_parallel_jobs=max_parallel_jobs, warm_up=warm_up,
        )
        if self._tracking is not None:
            self._tracking.start(fork=self._runner.fork_tracker, lazy=not warm_up)

    def pipeline(self) -> PipelineSpec:
        """The pipeline the jobs run, loaded once (the workspace starts loading it when it starts)."""
        return self._runner.pipeline()

    # -- data ----------------------------------------------------------------------------------

    def register_data(
        self, source: BlobRef, key: WorkKey, lineage: Mapping[str, str], content: bytes | None = None
    ) -> DataVersion:
        existing = self._catalog.data_by_key(key)
        if existing is not None:
            return existing
        # Two deliveries of one event may register at once: each downloads to its own folder. Bytes
        # already read (a small file) are written once, by the one that registers the version.
        staging = self.root / "data" / ".staging" / uuid.uuid4().hex / local_file_name(key, source.name)
        if content is not None:
            return self._catalog.add_data(key, source.path, lineage, staging, content)
        self._blobs.download_to(source, staging)
        data = self._catalog.add_data(key, source.path, lineage, staging)
        shutil.rmtree(staging.parent, ignore_errors=True)
        return data

    def register_training_set(self, key: WorkKey, members: Sequence[TrainingMember]) -> DataVersion:
        return self._catalog.register_training_set(key, members)

    def training_set_members(self, training_set: str) -> tuple[str, ...]:
        return self._catalog.training_set_members(training_set)

    # -- jobs ----------------------------------------------------------------------------------

    def submit(
        self, data: DataVersion, key: WorkKey, tags: Mapping[str, str], champion: ModelVersion | None = None,
        train_last: int = 0, new_files: int = 1, mode: JobMode = JobMode.TRAIN,
    ) -> PipelineJob:
        name = key.job_name
        if self._catalog.add_job(
            name, experiment=self.experiment, work_key=key.value, data=f"{data.name}:{data.version}",
            data_path=self._catalog.data_path(data), tags=tags, train_last=train_last, new_files=new_files,
            mode=mode.value,
            champion=self._catalog.model_path(champion) if champion is not None else None, runner=self._me,
        ):
            self._runner.start(name)
        row = self._catalog.job(name)
        assert row is not None
        status = self.job_status(name)
        return PipelineJob(name=name, experiment=self.experiment, status=status.state, tags=json.loads(row["tags"]))

    def resume(self) -> list[str]:
        """Take over and run again the queued or running jobs whose runner is gone: a workspace that
        was closed (a stop, Ctrl-C on a CLI command) or a process that died (SIGKILL, a host worker).
        A job whose runner still runs is left to it. Cheap enough to call every second."""
        taken = []
        for row in self._catalog.jobs(JobState.QUEUED, JobState.RUNNING):
            name, runner = row["name"], row["runner"]
            if runner == self._me or (runner is not None and runner_alive(runner.rsplit(":", 1)[0])):
                continue
            if self._catalog.take_job(name, self._me, was=runner):
                log_event(log, logging.INFO, "job.resumed", job=name, runner_was=runner or "stopped")
                self._runner.start(name)
                taken.append(name)
        return taken

    def job_dir(self, job: str) -> Path:
        return self._runner.job_dir(job)

    def job_status(self, job: str) -> JobStatus:
        row = self._catalog.job(job)
        if row is None:
            raise JobNotFoundError(f"job {job!r} does not exist in the local workspace ({self._catalog.path}).")
        state = JobState(row["status"])
        log_path = self.job_dir(job) / "logs" / f"{row['failed_step']}.log" if row["failed_step"] else None
        error = self._catalog.blob_names(row["error"]) if row["error"] else None
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
        return self._catalog.blob_names(reason) if reason else None

    def jobs(self) -> Iterator[PipelineJob]:
        for row in self._catalog.jobs():
            tags = json.loads(row["tags"])
            if JOB_TAG in tags:
                yield PipelineJob(row["name"], row["experiment"], JobState(row["status"]), tags)

    def wait(self, job: str, timeout: float) -> JobStatus:
        """Block until the job is finished (for the CLI and tests)."""
        wait_until(lambda: self.job_status(job).state.terminal, timeout)
        return self.job_status(job)

    def _output(self, job: str, pipeline_output: str) -> Path:
        """Where the job's pipeline output is: the one rule both adapters follow (job_output_path)."""
        return self.root / job_output_path(job, pipeline_output)

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
        model = self._catalog.model_where("work_key = ?", key.value)
        if model is None:  # else registered already; tracked too, in case the last attempt stopped before it
            source = self._output(job, "model")
            if not (source / "MLmodel").is_file():
                raise WorkspaceError(f"job {job}: {source} holds no MLflow model (no MLmodel file).")
            model = self._catalog.add_model(job, key, source, metrics, lineage)
        if self._tracking is not None:  # the MLflow registry's version too (queued; the tracker skips a known one)
            self._tracking.register_model(model.job, key.value, model.version, Path(self._catalog.model_path(model)),
                                          metrics.as_tags())
        return model

    def record_decision(self, model: ModelVersion, decision: str, *, tag: str = "gate") -> None:
        self._catalog.tag_model(model, tag, decision)
        if self._tracking is not None:
            self._tracking.tag_model(model.version, tag, decision)

    def champion(self) -> ModelVersion | None:
        return self._catalog.model_where("champion = 1")

    def promote(self, model: ModelVersion, *, replacing: ModelVersion | None) -> ModelVersion | None:
        promoted = self._catalog.promote(model, replacing=replacing)
        if promoted is not None and self._tracking is not None:
            self._tracking.set_champion(promoted.version)  # the registered model's `champion` alias
        return promoted

    # -- lifecycle -----------------------------------------------------------------------------

    def drain(self, timeout: float) -> bool:
        """Wait until every job this process started has ended; False on timeout."""
        return self._runner.drain(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop: running steps get SIGTERM (SIGKILL after `timeout`), queued jobs do not start.
        Their jobs stay queued or running in the catalogue, and `resume()` runs them again."""
        self._runner.close(timeout)
        self._catalog.release_jobs(self._me)
        if self._tracking is not None:
            self._tracking.close(timeout)
        self._catalog.close()

    def flush_tracking(self, timeout: float = 30.0) -> bool:
        """Wait until the MLflow store has every run, model and alias sent so far (tests, CLI)."""
        return self._tracking.flush(timeout) if self._tracking is not None else True
