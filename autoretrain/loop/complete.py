"""Complete: a finished job's model is registered and gated, or its failure recorded."""

from __future__ import annotations

import logging

from autoretrain.domain import (
    JOB_TAG,
    Fail,
    Finish,
    JobState,
    JobStatus,
    LedgerRecord,
    LedgerState,
    Quarantine,
    StartCompleting,
    WorkKey,
)
from autoretrain.domain.errors import (
    BlobChangedError,
    JobNotFoundError,
    LedgerError,
    NotReadyError,
)
from autoretrain.domain.events import JobFinished
from autoretrain.logs import log_event
from autoretrain.loop.deps import Deps
from autoretrain.loop.gate import _champion_gate
from autoretrain.loop.outcomes import (
    CompleteOutcome,
    Duplicate,
    Ignored,
    InProgress,
    JobFailed,
    Quarantined,
    Registered,
)
from autoretrain.loop.steps import _move, _same_topic, _snapshot, _take_over, _under_lease

log = logging.getLogger("autoretrain.loop")


def complete(event: JobFinished, deps: Deps) -> CompleteOutcome:
    """Our pipeline job ended (Azure ML calls the event a run event): record a failure, or register its
    model with metrics and gate it."""
    config = deps.config
    if not _same_topic(event.topic, config.workspace_topic):
        return Ignored(f"topic {event.topic!r} is not our workspace {config.workspace_topic!r}")
    # Ours: it carries our tag, and it is the very job the tag names (a step run of our job, or
    # any other run that copied the tag, is not). runType is not relied on: Microsoft does not
    # document what v2 pipeline jobs send there.
    tag = event.job_tags.get(JOB_TAG)
    if not tag:
        return Ignored(f"job {event.job} has no {JOB_TAG!r} tag")
    try:
        key = WorkKey(tag)
    except ValueError:
        return Ignored(f"job {event.job} has tag {JOB_TAG}={tag!r}, which is not a work key")
    if event.job != key.job_name:
        return Ignored(f"job {event.job} is not job {key.job_name} that its tag names")
    record = deps.ledger.get(key)
    if record is None:
        # Reconcile adopts a job whose ledger record was lost, if its blob version still exists.
        return Ignored(f"job {event.job}: no ledger record for work key {key}; reconcile will look at it")
    try:
        return complete_record(record, deps)
    except JobNotFoundError as exc:
        return Ignored(f"job {event.job}: {exc}; reconcile submits it again")


def complete_record(record: LedgerRecord, deps: Deps) -> CompleteOutcome:
    """Finish a submitted record whose job ended: the path of a job event, and of reconcile."""
    if record.state is LedgerState.CLAIMED:
        # The job's first events can overtake ingest's own ledger move. While the job runs there is
        # nothing to do (and nothing to retry); once it ended, the event must come back.
        status = deps.workspace.job_status(record.key.job_name)
        if not status.state.terminal:
            return InProgress(record, status)
        raise NotReadyError(
            f"{record.blob.path}: ingest has not recorded job {record.key.job_name} yet; the event will be retried."
        )
    if record.state.final:
        return Duplicate(record)
    now = deps.clock()
    if record.state is LedgerState.COMPLETING and not record.lease_expired(now):
        return Duplicate(record)
    job = record.job or record.key.job_name
    # The event says what happened; the workspace is asked again, since events can be reordered.
    status = deps.workspace.job_status(job)
    if not status.state.terminal:
        return InProgress(record, status)
    log_event(log, logging.INFO, "complete.run_finished", job=status.name, job_state=status.state.value,
              failed_step=status.failed_step, error=status.error)
    if record.state is LedgerState.SUBMITTED:
        try:
            record = deps.ledger.move(record, StartCompleting(now + deps.config.lease))
        except LedgerError:
            return Duplicate(deps.ledger.get(record.key) or record)
    else:
        taken = _take_over(record, deps)
        if not isinstance(taken, LedgerRecord):
            return taken
        record = taken
    leased = record
    return _under_lease(leased, deps, lambda: _complete_leased(leased, status, deps))


def _complete_leased(record: LedgerRecord, status: JobStatus, deps: Deps) -> CompleteOutcome:
    job = status.name
    if status.state is JobState.FAILED and status.rejected:
        return _quarantine_rejected(record, status, deps)
    if status.state is JobState.CANCELED:
        reason = "canceled" + (f": {status.error}" if status.error else "") + f" (log: {status.log})"
        return JobFailed(_move(deps.ledger, record, Fail(reason)), status)
    if status.state is not JobState.COMPLETED:
        step = status.failed_step or "pipeline"
        reason = f"{status.state.value} in step {step!r}: {status.error or 'no error message'} (log: {status.log})"
        return JobFailed(_move(deps.ledger, record, Fail(reason)), status)
    metrics = deps.workspace.job_metrics(job)
    log_event(log, logging.INFO, "complete.metrics", **{metrics.primary: metrics.primary_value})
    lineage = {
        "blob": record.blob.path,
        "etag": record.blob.etag,
        "work_key": record.key.value,
        "job": job,
        "data_version": record.data_version or "",
        # Exactly the files it trained on: the training set names them (its MLTable); the model
        # keeps the counts, which stay small however many files there are.
        "training_set": record.training_set or "",
        "training_files": str(record.members),
        "trained_on_files": str(record.trained_on),
        **({"retrain": str(record.attempt), "retrain_of": record.first_key.value} if record.first_key else {}),
    }
    model = deps.workspace.register_model(job, record.key, metrics, lineage)
    log_event(log, logging.INFO, "complete.model_registered", model_version=f"{model.name}:{model.version}")
    promoted, decision = _champion_gate(deps, model, metrics, evaluated=record.champion)
    deps.workspace.record_decision(model, decision)
    log_event(
        log, logging.INFO, "complete.champion_gate", promoted=promoted, decision=decision,
        metric=metrics.primary, value=metrics.primary_value, champion_value=metrics.champion_value,
        test_rows=metrics.test_rows,
    )
    record = _move(deps.ledger, record, Finish(f"{model.name}:{model.version}", metrics, promoted, decision))
    return Registered(record, model, promoted)


def _quarantine_rejected(record: LedgerRecord, status: JobStatus, deps: Deps) -> Quarantined | JobFailed:
    """A step found that the file breaks the contract deeper than ingest's head check reads: the
    data's fault. The bytes the step read (the data version's snapshot) go to quarantine with the
    step's reason, as ingest does with a bad head; the customer's blob is left as it is."""
    reason = f"{status.rejected} (found by step {status.failed_step or 'prep'!r}; log: {status.log})"
    try:
        copy = deps.blobs.copy_to(
            _snapshot(record, deps), deps.config.quarantine_container, record.blob.copy_name(record.key),
            {"reason": reason, "source_blob": record.blob.path, "blob_etag": record.blob.etag,
             "job": status.name},
        )
    except BlobChangedError as exc:
        reason = f"{reason} It could not be quarantined: {exc}"
        return JobFailed(_move(deps.ledger, record, Fail(reason)), status)
    return Quarantined(_move(deps.ledger, record, Quarantine(reason)), reason, copy)
