"""The local MLflow tracker: the process that makes the MLflow calls of the local workspace.

`LocalTracking` (tracking.py) starts it and sends it one call at a time over its connection
(channel.py); here the calls are made on one MlflowClient of the local store, so only this process
imports the full MLflow and SQLAlchemy. What each call does to the store is in tracking.py's
docstring: a run per job, a child run per step, a registered model version per local model version,
the champion as the registered model's alias. A failed call is logged to `mlflow/tracker.log` and
answered with its one-line error: tracking never fails a job.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from autoretrain.adapters.localworkspace.channel import to_parent
from autoretrain.adapters.localworkspace.pipeline import cache_root
from autoretrain.domain.errors import one_line

__all__ = ["CHAMPION_ALIAS", "serve"]

log = logging.getLogger("autoretrain.adapters.localworkspace.tracker")

CHAMPION_ALIAS = "champion"
# Tags on our runs and model versions (besides the job's own tags).
JOB_TAG = "autoretrain.job"
KIND_TAG = "autoretrain.kind"
STEP_TAG = "autoretrain.step"
VERSION_TAG = "autoretrain.local_version"
WORK_KEY_TAG = "autoretrain.work_key"
_PARENT_TAG = "mlflow.parentRunId"


def serve(parent: Connection | None = None) -> None:
    """The tracker's loop (in its own process): its configuration, then one call after another, each
    answered `{"ok": result}` or `{"error": one line}`, until the workspace closes the connection
    (`parent`: by default the one the workspace's Helper started it with)."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parent = parent or to_parent()
    try:
        tracker = _Tracker(**parent.recv())
    except Exception as exc:  # the workspace runs its jobs untracked, and says why
        log.exception("tracker.start_failed")
        parent.send({"error": one_line(exc, 500)})
        return
    # MLflow's and SQLAlchemy's objects live as long as the tracker: out of the collector's sight,
    # so a full collection does not pause a call for ~150 ms walking them.
    gc.collect()
    gc.freeze()
    parent.send({"ready": True})
    while True:
        try:
            request = parent.recv()
        except EOFError:  # the workspace closed its end: it is done
            return
        try:
            parent.send({"ok": tracker.handle(request)})
        except Exception as exc:  # one failed call: logged here, reported, the next one goes on
            log.exception("tracker.call_failed op=%s", request.get("op"))
            parent.send({"error": one_line(exc, 500)})


def _new_store_from_template(uri: str) -> None:
    """A store that does not exist yet starts as a copy of MLflow's empty schema, built once per
    version of MLflow, SQLAlchemy and Alembic and kept in the user's cache folder: MLflow builds a
    new store by running every migration since its first (about 0.9 s of CPU at each new home; the
    copy takes 3 ms). The copy is linked into place only if no store is there (another process may
    have begun one). On any failure MLflow builds the store itself, as without the template."""
    path = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or path.exists():
        return
    try:
        template = _store_template()
        fd, copy = tempfile.mkstemp(dir=path.parent, prefix=".mlflow-", suffix=".db")
        os.close(fd)
        try:
            shutil.copyfile(template, copy)
            with contextlib.suppress(FileExistsError):
                os.link(copy, path)
        finally:
            os.unlink(copy)
    except Exception as exc:  # only slower: MLflow builds the store
        log.warning("tracker.template_unused error=%s", one_line(exc))


def _store_template() -> Path:
    """MLflow's empty store for the installed versions, built by MLflow's own table initialisation
    (what it runs on an empty database) the first time, then found in the cache folder."""
    import alembic
    import mlflow
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables  # MLflow's, private: a failure is only slower

    folder = cache_root() / "mlflow"
    template = folder / f"empty-store-{mlflow.__version__}-{sqlalchemy.__version__}-{alembic.__version__}.db"
    if template.is_file():
        return template
    folder.mkdir(parents=True, exist_ok=True)
    fd, building = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        engine = sqlalchemy.create_engine(f"sqlite:///{building}")
        try:
            _initialize_tables(engine)  # type: ignore[no-untyped-call]
        finally:
            engine.dispose()
        os.replace(building, template)  # two trackers at once: one whole file wins
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(building)
    return template


class _Tracker:
    """The MLflow calls, on one client of the local store."""

    def __init__(self, uri: str, artifacts: str, experiment: str, model_name: str) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        _new_store_from_template(uri)
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
        fields = {k: v for k, v in request.items() if k not in ("op", "again")}
        if op == "ping":
            return True
        if request.get("again"):
            done, answer = self._done_already(op, fields)
            if done:
                return answer
        handler = getattr(self, f"_{op}", None)
        if handler is None:
            raise ValueError(f"unknown tracker call {op!r}")
        return handler(**fields)

    def _done_already(self, op: str, fields: Mapping[str, Any]) -> tuple[bool, Any]:
        """A call made again because the tracker before this one died under it: (True, its answer)
        when that attempt got it done. The other calls find their own work (a job's run, a model's
        version) or are the same when made twice (an end, a tag, the alias)."""
        if op == "start_step":
            parent = self._job_run_id(fields["job"])
            runs = self._client.search_runs(
                [self._experiment_id], max_results=1,
                filter_string=f"tags.`{_PARENT_TAG}` = '{parent}' and tags.`{STEP_TAG}` = '{_quoted(fields['step'])}'"
                " and attributes.status = 'RUNNING'",
            )
            if runs:
                run_id = str(runs[0].info.run_id)
                return True, {"run_id": run_id, "parent": parent, "experiment_id": self._experiment_id}
        elif op == "end_job":
            run = self._job_run(fields["job"])
            if run is not None and run.info.status != "RUNNING":
                return True, None
        return False, None

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
            # Stamped when evaluate wrote them: made again after a tracker died between this and the
            # run's end, the same points are logged, which MLflow keeps once.
            written = int(Path(metrics_file).stat().st_mtime * 1000)
            self._client.log_batch(
                run_id,
                metrics=[Metric(name, value, written, 0) for name, value in values.items()],
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
            log.warning(
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

