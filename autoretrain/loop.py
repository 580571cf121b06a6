"""The use cases: ingest a new blob version, complete a finished job, reconcile what was missed.

Written against the ports only (`autoretrain.ports`). Each use case returns an outcome that says
what it decided; the trigger logs it. Event Grid delivers at least once, may reorder and may drop
(a dead-lettered event, a completion sent while the app was down), and a worker may die anywhere,
so every step is safe to repeat:

- the ledger's atomic claim makes a second delivery a no-op, and its ETag-matched moves let one
  worker win each state change;
- work in progress (`claimed`, `completing`) is held under a lease; when the holder dies, a
  redelivery or `reconcile` takes it over after the lease, and gives up (`failed`, with the last
  error) after `max_attempts` takers;
- the workspace and storage calls are idempotent by the blob version's `WorkKey`, so a taker that
  repeats a step the dead worker already did gets the same data version, job and model;
- transient errors raise (Event Grid retries), permanent ones end in a ledger state with a reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from autoretrain.contract import HEAD_BYTES, Contract, check_head, check_name
from autoretrain.datacontract import PromoteRule
from autoretrain.domain import (
    RUN_TAG,
    BlobRef,
    DataVersion,
    Fail,
    Finish,
    JobState,
    JobStatus,
    LedgerRecord,
    LedgerState,
    ListedBlob,
    Metrics,
    ModelVersion,
    Move,
    PipelineJob,
    Quarantine,
    Release,
    Skip,
    StartCompleting,
    Submit,
    TakeOver,
    TrainingMember,
    WorkKey,
)
from autoretrain.errors import (
    BlobChangedError,
    ContractError,
    JobNotFoundError,
    LedgerError,
    NotReadyError,
    PermanentError,
    RetrainRefused,
    WorkspaceError,
    one_line,
)
from autoretrain.events import COMMITTED_APIS, BlobCreated, RunFinished
from autoretrain.logs import invocation, log_event, trace_context
from autoretrain.ports import BlobStore, Clock, Ledger, Workspace
from autoretrain.settings import Settings

__all__ = [
    "CompleteOutcome",
    "Deps",
    "Duplicate",
    "Failed",
    "Found",
    "Ignored",
    "InProgress",
    "IngestOutcome",
    "JobFailed",
    "LoopConfig",
    "Quarantined",
    "ReconcileReport",
    "Registered",
    "Skipped",
    "Submitted",
    "complete",
    "complete_record",
    "ingest",
    "ingest_blob",
    "log_outcome",
    "reconcile",
    "retrain",
]

log = logging.getLogger("autoretrain.loop")

_GATE_ATTEMPTS = 5


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """The settings the loop reads, and nothing else."""

    storage_topic: str
    workspace_topic: str
    incoming_container: str = "incoming"
    quarantine_container: str = "quarantine"
    datasets_container: str = "datasets"
    # How long a worker may hold a claimed or completing record before another may take it over.
    lease: timedelta = timedelta(minutes=10)
    # Takers of one record (the first included) before it is recorded as failed with the last error.
    max_attempts: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> LoopConfig:
        return cls(
            storage_topic=settings.storage_topic,
            workspace_topic=settings.workspace_topic,
            incoming_container=settings.incoming_container,
            quarantine_container=settings.quarantine_container,
            datasets_container=settings.datasets_container,
            lease=timedelta(seconds=settings.lease_seconds),
        )


@dataclass(frozen=True, slots=True)
class Deps:
    config: LoopConfig
    contract: Contract
    workspace: Workspace
    ledger: Ledger
    blobs: BlobStore
    clock: Clock = _utcnow


@dataclass(frozen=True, slots=True)
class Submitted:
    record: LedgerRecord
    job: PipelineJob


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Already handled, or being handled by another worker whose lease still runs."""

    record: LedgerRecord


@dataclass(frozen=True, slots=True)
class Quarantined:
    record: LedgerRecord
    reason: str
    copy: BlobRef


@dataclass(frozen=True, slots=True)
class Skipped:
    record: LedgerRecord
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent error that is not the data's fault, or too many attempts: recorded as failed."""

    record: LedgerRecord
    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """Not ours, or not (yet) something to act on. Not retried."""

    reason: str


@dataclass(frozen=True, slots=True)
class InProgress:
    """The job has not finished (a RunStatusChanged to Running, or a reordered event)."""

    record: LedgerRecord
    status: JobStatus


@dataclass(frozen=True, slots=True)
class Registered:
    record: LedgerRecord
    model: ModelVersion
    promoted: bool


@dataclass(frozen=True, slots=True)
class JobFailed:
    record: LedgerRecord
    status: JobStatus


IngestOutcome = Submitted | Duplicate | Quarantined | Skipped | Failed | Ignored
CompleteOutcome = Registered | JobFailed | Quarantined | InProgress | Duplicate | Failed | Ignored
_Outcome = TypeVar("_Outcome", IngestOutcome, CompleteOutcome)


def _same_topic(a: str, b: str) -> bool:
    # Resource ids are case-insensitive in Azure; Event Grid does not normalise their case.
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


def _authenticate(event: BlobCreated, config: LoopConfig) -> str | None:
    """Why this event is not ours to act on, or None."""
    if not _same_topic(event.topic, config.storage_topic):
        return f"topic {event.topic!r} is not our storage account {config.storage_topic!r}"
    if event.blob.container != config.incoming_container:
        return f"container {event.blob.container!r} is not {config.incoming_container!r}"
    if event.api not in COMMITTED_APIS:
        return f"api {event.api!r} does not mean a committed blob"
    if event.blob.name.endswith("/"):
        return f"blob {event.blob.name!r} is a folder marker"
    return None


def ingest(event: BlobCreated, deps: Deps) -> IngestOutcome:
    """A blob landed in incoming/: check it, register it, submit the pipeline on it, once."""
    why_not = _authenticate(event, deps.config)
    if why_not is not None:
        return Ignored(why_not)
    return ingest_blob(event.blob, deps, event_id=event.event_id, content_length=event.content_length)


def ingest_blob(blob: BlobRef, deps: Deps, *, event_id: str, content_length: int | None) -> IngestOutcome:
    """Ingest one blob version: the path of its BlobCreated event, and of reconcile when it was lost."""
    key = WorkKey.for_blob(blob)
    now = deps.clock()
    record, created = deps.ledger.claim(blob, key, event_id, now + deps.config.lease)
    if not created:
        if record.state is not LedgerState.CLAIMED or not record.lease_expired(now):
            return Duplicate(record)  # done, or another worker holds it and its lease runs
        taken = _take_over(record, deps)
        if not isinstance(taken, LedgerRecord):
            return taken
        record = taken
    log_event(log, logging.INFO, "ingest.claimed", attempt=record.attempts)
    claimed = record
    return _under_lease(claimed, deps, lambda: _ingest_claimed(claimed, content_length, deps))


def retrain(blob: BlobRef, deps: Deps) -> IngestOutcome:
    """Run one blob version again, on an operator's word (`autoretrain retrain`): a new, numbered
    retrain with its own work key, job and model, recorded next to the earlier runs. Nothing else
    ever runs a blob version twice: a redelivery or reconcile finds its record and stops.

    The last run must have ended (done, failed or quarantined). The data version registered for the
    blob version is used again, so its bytes are the ones trained on, even after the customer
    replaced the blob; a version quarantined at ingest has none, and is checked afresh.
    """
    origin = WorkKey.for_blob(blob)
    runs = sorted(_runs_of(origin, deps), key=lambda r: r.retrain)
    if not runs:
        raise RetrainRefused(
            f"{blob.path} (eTag {blob.etag}): the ledger has no record of this blob version; it is ingested "
            "when its event arrives or by `autoretrain reconcile`."
        )
    latest = runs[-1]
    if not latest.state.final:
        raise RetrainRefused(
            f"{blob.path}: its {_run_name(latest)} is still {latest.state.value} (job {latest.job or 'not yet'}); "
            "retrain it once that has ended."
        )
    data_version = _data_version_of(runs)
    if data_version is None and latest.state is LedgerState.SKIPPED:
        raise RetrainRefused(f"{blob.path}: it was skipped, so there is nothing to train on: {latest.reason}")
    number = latest.retrain + 1
    now = deps.clock()
    record, created = deps.ledger.claim(
        blob, origin.retrain(number), f"retrain-{number}", now + deps.config.lease, retrain=number, retrain_of=origin,
    )
    if not created:
        return Duplicate(record)  # another operator's retrain of the same number got there first
    log_event(log, logging.INFO, "retrain.claimed", retrain=number, retrain_of=origin.value, data_version=data_version)
    return _under_lease(record, deps, lambda: _ingest_claimed(record, None, deps, data_version=data_version))


def _runs_of(origin: WorkKey, deps: Deps) -> list[LedgerRecord]:
    return [r for r in deps.ledger.records() if r.origin == origin]


def _data_version_of(runs: Sequence[LedgerRecord]) -> str | None:
    """The data version registered for a blob version by any of its runs (one at most)."""
    return next((r.data_version for r in runs if r.data_version), None)


def _run_name(record: LedgerRecord) -> str:
    return f"retrain {record.retrain}" if record.retrain else "first run"


def _resume_retrain(record: LedgerRecord, deps: Deps) -> Callable[[], IngestOutcome]:
    """A retrain whose worker died while it was claimed: take it over and finish it."""

    def run() -> IngestOutcome:
        taken = _take_over(record, deps)
        if not isinstance(taken, LedgerRecord):
            return taken
        data_version = _data_version_of(_runs_of(record.origin, deps))
        return _under_lease(taken, deps, lambda: _ingest_claimed(taken, None, deps, data_version=data_version))

    return run


def _under_lease(record: LedgerRecord, deps: Deps, work: Callable[[], _Outcome]) -> _Outcome | Failed:
    """Do the work of a record this worker holds the lease on. A permanent error ends it as failed,
    with the reason; anything else gives the lease back (so Event Grid's retry starts at once) and
    raises."""
    try:
        return work()
    except PermanentError as exc:
        return _fail(record, str(exc), deps)
    except Exception as exc:
        _release(record, exc, deps)
        raise


def _take_over(record: LedgerRecord, deps: Deps) -> LedgerRecord | Duplicate | Failed:
    """Take over leased work whose holder is gone; one worker wins, the others see a duplicate."""
    if record.attempts >= deps.config.max_attempts:
        reason = f"gave up after {record.attempts} attempts; last error: {record.reason or 'the worker died'}"
        return _fail(record, reason, deps)
    try:
        taken = deps.ledger.move(record, TakeOver(deps.clock() + deps.config.lease))
    except LedgerError:
        latest = deps.ledger.get(record.key)
        return Duplicate(latest or record)
    log_event(log, logging.WARNING, "ledger.taken_over", state=taken.state.value, attempt=taken.attempts,
              previous_error=record.reason)
    return taken


def _release(record: LedgerRecord, exc: BaseException, deps: Deps) -> None:
    latest = deps.ledger.get(record.key)
    if latest is None or latest.etag is None or not latest.state.leased or latest.attempts != record.attempts:
        return  # moved on, or taken over by another worker: not ours to release
    try:
        deps.ledger.move(latest, Release(f"{type(exc).__name__}: {one_line(exc)}"))
    except Exception:  # best effort: the lease runs out by itself
        log.debug("release of %s failed", record.key, exc_info=True)


def _ingest_claimed(
    record: LedgerRecord, content_length: int | None, deps: Deps, *, data_version: str | None = None
) -> IngestOutcome:
    """Check, register and submit a claimed record. A retrain of a version that already has its
    data version (`data_version`) skips the check and the registration: the same bytes again."""
    blob = record.blob
    whole: bytes | None = None  # the blob's bytes, when the head read was all of it
    if data_version is None:
        try:
            check_name(blob.name, content_length, deps.contract)
            head = deps.blobs.read_head(blob, HEAD_BYTES)
            # Fewer bytes than asked for: the service says that was all of this version. (The event's
            # contentLength is not trusted for that: a wrong one would cut the data version short.)
            whole = head if len(head) < HEAD_BYTES else None
            rows = check_head(blob.path, head, deps.contract, complete=whole is not None)
        except ContractError as exc:
            return _quarantine(record, str(exc), deps, whole)
        except BlobChangedError as exc:
            return _skip(record, str(exc), deps)
        log_event(log, logging.INFO, "ingest.contract_ok", rows_checked=rows)
    try:
        data, job, champion, training_set, members, trained_on = _register_and_submit(
            record, deps, data_version, whole
        )
    except BlobChangedError as exc:
        return _skip(record, str(exc), deps)
    submit = Submit(data, job.name, champion, f"{training_set.name}:{training_set.version}", members, trained_on)
    record = _move(deps.ledger, record, submit)
    return Submitted(record, job)


def _training_window(record: LedgerRecord, data: str, deps: Deps) -> tuple[tuple[TrainingMember, ...], int]:
    """(every accepted data version so far, oldest first, this one last, each with its snapshot; how
    many of the last ones the job trains on, 0 for all). All of it comes from the ledger: the
    workspace is not asked about any member, so ingest makes the same calls for 1 or 500 of them.
    Accepted: done, so its file passed prep and trained a model; never one whose job is still running
    (prep may yet find it bad, and would fail every job it is in), quarantined, skipped or failed.
    Fixed here, at submission: a version registered later does not leak in; one still running joins
    the next window. The window selects what the model learns from; the test rows come from every
    accepted version, so a model that forgot old data is judged on it too."""
    rule = deps.contract.training
    # A retrain's data version was accepted before: it moves to the end, as the newest.
    accepted = sorted(
        (r for r in deps.ledger.records(LedgerState.DONE)
         if r.key != record.key and r.data_version and r.data_version != data),
        key=lambda r: (r.created, r.key.value),
    )
    snapshots = {str(r.data_version): r.blob.copy_name(r.origin) for r in reversed(accepted)}
    snapshots[data] = record.blob.copy_name(record.origin)
    history = tuple(
        TrainingMember(version, snapshots[version])
        for version in dict.fromkeys([*(str(r.data_version) for r in accepted), data])
    )
    if rule.window == "last" and rule.versions is not None:
        return history, min(rule.versions, len(history))
    if rule.window == "days" and rule.days is not None:
        since = deps.clock() - timedelta(days=rule.days)
        recent = {str(r.data_version) for r in accepted if r.created >= since}
        inside = 1  # this version, and the run of recent ones just before it
        for member in reversed(history[:-1]):
            if member.data_version not in recent:
                break
            inside += 1
        return history, inside
    return history, 0


def _register_and_submit(
    record: LedgerRecord, deps: Deps, data_version: str | None = None, whole: bytes | None = None
) -> tuple[str, PipelineJob, str | None, DataVersion, int, int]:
    """Snapshot the blob version, register it and its training set, submit the job: each step
    idempotent by key. A data version already registered for this blob version (a resubmit, a
    retrain) is used again: one blob version, one data version. `whole`: the blob's bytes, read
    pinned to its eTag by the head check: a small file is then written, not read twice more."""
    blob, key = record.blob, record.key
    data = data_version or record.data_version
    if data is None:
        lineage = {"blob": blob.path, "etag": blob.etag, "work_key": key.value, "event_id": record.event_id}
        registered = deps.workspace.register_data(_snapshot(record, deps, whole), key, lineage, whole)
        data = f"{registered.name}:{registered.version}"
        log_event(log, logging.INFO, "ingest.data_registered", data_version=data)
    history, train_last = _training_window(record, data, deps)
    trained_on = train_last or len(history)
    training_set = deps.workspace.register_training_set(key, history)
    log_event(log, logging.INFO, "ingest.training_set", training_set=f"{training_set.name}:{training_set.version}",
              trained_on=trained_on, tested_on=len(history), newest=history[-1].data_version)
    # The job scores the current champion on its own test rows: the gate compares like with like.
    champion = deps.workspace.champion()
    tags = {RUN_TAG: key.value, "blob": blob.path, "etag": blob.etag, "champion": champion.version if champion else "",
            **trace_context()}  # completion continues this trace from the job's tags
    if record.retrain_of is not None:
        tags.update(retrain=str(record.retrain), retrain_of=record.retrain_of.value)
    job = deps.workspace.submit(training_set, key, tags, champion=champion, train_last=train_last)
    # A resubmit finds the first job, which scored the champion named in its tags.
    scored = job.tags.get("champion", champion.version if champion else "") or None
    log_event(log, logging.INFO, "ingest.pipeline_submitted", job=job.name, experiment=job.experiment,
              champion_version=scored)
    return data, job, scored, training_set, len(history), trained_on


def _snapshot(record: LedgerRecord, deps: Deps, whole: bytes | None = None) -> BlobRef:
    """The data version's bytes: the blob version's copy in our datasets container. The copy is
    idempotent, so a second call finds the first copy, even after the customer's blob was replaced."""
    blob, key = record.blob, record.origin  # every retrain of a blob version shares its snapshot
    return deps.blobs.copy_to(
        blob, deps.config.datasets_container, blob.copy_name(key),
        {"source_blob": blob.path, "source_etag": blob.etag, "work_key": key.value}, whole,
    )


def _move(ledger: Ledger, record: LedgerRecord, move: Move) -> LedgerRecord:
    """Move; if a concurrent worker moved it on first, its result stands."""
    try:
        return ledger.move(record, move)
    except LedgerError:
        latest = ledger.get(record.key)
        if latest is None or latest.state is record.state:
            raise
        log_event(log, logging.INFO, "ledger.already_moved", state=latest.state.value)
        return latest


def _quarantine(record: LedgerRecord, reason: str, deps: Deps, whole: bytes | None = None) -> Quarantined | Skipped:
    if not record.blob.addressable:
        return _skip(record, f"{reason} It could not be quarantined: no URL reaches a name with '.' or '..' "
                             "segments, so nothing was copied.", deps)
    try:
        copy = deps.blobs.copy_to(
            record.blob, deps.config.quarantine_container, record.blob.copy_name(record.key),
            {"reason": reason, "source_blob": record.blob.path, "source_etag": record.blob.etag}, whole,
        )
    except BlobChangedError as exc:
        # Nothing is left to quarantine; the reason is kept in the ledger all the same.
        return _skip(record, f"{reason} It could not be quarantined: {exc}", deps)
    record = _move(deps.ledger, record, Quarantine(reason))
    return Quarantined(record, reason, copy)


def _skip(record: LedgerRecord, reason: str, deps: Deps) -> Skipped:
    record = _move(deps.ledger, record, Skip(reason))
    return Skipped(record, reason)


def _fail(record: LedgerRecord, reason: str, deps: Deps) -> Failed:
    record = _move(deps.ledger, record, Fail(reason))
    return Failed(record, reason)


def complete(event: RunFinished, deps: Deps) -> CompleteOutcome:
    """Our pipeline job ended (Azure ML calls the event a run event): record a failure, or register its
    model with metrics and gate it."""
    config = deps.config
    if not _same_topic(event.topic, config.workspace_topic):
        return Ignored(f"topic {event.topic!r} is not our workspace {config.workspace_topic!r}")
    # Ours: it carries our tag, and it is the very job the tag names (a step run of our job, or
    # any other run that copied the tag, is not). runType is not relied on: Microsoft does not
    # document what v2 pipeline jobs send there.
    tag = event.run_tags.get(RUN_TAG)
    if not tag:
        return Ignored(f"job {event.run_id} has no {RUN_TAG!r} tag")
    try:
        key = WorkKey(tag)
    except ValueError:
        return Ignored(f"job {event.run_id} has tag {RUN_TAG}={tag!r}, which is not a work key")
    if event.run_id != key.job_name:
        return Ignored(f"job {event.run_id} is not job {key.job_name} that its tag names")
    record = deps.ledger.get(key)
    if record is None:
        # Reconcile adopts a job whose ledger record was lost, if its blob version still exists.
        return Ignored(f"job {event.run_id}: no ledger record for work key {key}; reconcile will look at it")
    try:
        return complete_record(record, deps)
    except JobNotFoundError as exc:
        return Ignored(f"job {event.run_id}: {exc}; reconcile submits it again")


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
        **({"retrain": str(record.retrain), "retrain_of": record.retrain_of.value} if record.retrain_of else {}),
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


# ---- reconcile ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """One thing a reconcile pass found out of step, and what it did about it."""

    what: str  # unannounced | stale_claim | finished_job | stale_completion | orphan_job
    blob: str
    work_key: str
    result: str


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    blobs_listed: int
    records: int
    jobs: int
    found: tuple[Found, ...] = ()
    errors: tuple[str, ...] = field(default=())


def _result(outcome: IngestOutcome | CompleteOutcome) -> str:
    match outcome:
        case Submitted(record, job):
            return f"submitted {job.name} on {record.data_version}"
        case Registered(record, _, promoted):
            return f"done: model {record.model_version}{', promoted' if promoted else ''}"
        case Quarantined(_, reason, _) | Skipped(_, reason) | Failed(_, reason):
            return f"{type(outcome).__name__.lower()}: {reason}"
        case JobFailed(record, _):
            return f"failed: {record.reason}"
        case InProgress(_, status):
            return f"job {status.name} is {status.state.value.lower()}"
        case Duplicate(record):
            return f"already {record.state.value}"
        case Ignored(reason):
            return f"ignored: {reason}"


def reconcile(deps: Deps, *, grace: timedelta) -> ReconcileReport:
    """One pass that makes the ledger, the container and the workspace agree. Safe to run any time.

    - blob versions in incoming/ with no ledger record, older than `grace` (their event may still
      be on its way): ingested through the same path and work key as their event;
    - `claimed` records whose lease ran out (the worker died): taken over and finished;
    - `submitted`/`completing` records whose job ended: completed; a job the workspace does not
      know is submitted again from the same blob version;
    - jobs of ours with no ledger record (the ledger lost a write): adopted when their blob version
      still exists, reported otherwise.

    Every step is the idempotent one of ingest or complete, so a live event or a second pass at the
    same time changes nothing twice. No blob content is read, except by the ingest of a found blob.
    """
    now = deps.clock()
    found: list[Found] = []
    errors: list[str] = []
    done: set[str] = set()

    def attempt(what: str, blob: BlobRef, key: WorkKey, action: Callable[[], IngestOutcome | CompleteOutcome]) -> None:
        done.add(key.value)
        # Each file found is a trace of its own (linked to the pass's), as if its event had come.
        with invocation("reconcile.attempt", root=True, blob=blob.path, etag=blob.etag, work_key=key.value):
            try:
                outcome = action()
            except Exception as exc:
                message = f"{what} {blob.path} ({key}): {type(exc).__name__}: {one_line(exc)}"
                log_event(log, logging.ERROR, "reconcile.error", what=what, error=one_line(exc))
                errors.append(message)
                return
            if isinstance(outcome, Duplicate | InProgress):
                return  # a live event or another pass has it: nothing was out of step after all
            log_outcome(outcome)
            result = _result(outcome)
            log_event(log, logging.WARNING, "reconcile.found", what=what, result=result)
            found.append(Found(what, blob.path, key.value, result))

    records = {r.key.value: r for r in deps.ledger.records()}
    listed: dict[str, ListedBlob] = {}
    for item in deps.blobs.list_blobs(deps.config.incoming_container):
        key = WorkKey.for_blob(item.ref)
        listed[key.value] = item
        if key.value in records or item.ref.name.endswith("/") or now - item.last_modified < grace:
            continue
        attempt("unannounced", item.ref, key, _ingest_then_complete(item.ref, deps, item.size, now))

    for record in records.values():
        if record.state is LedgerState.CLAIMED and record.lease_expired(now) and record.retrain_of is not None:
            attempt("stale_claim", record.blob, record.key, _resume_retrain(record, deps))
        elif record.state is LedgerState.CLAIMED and record.lease_expired(now):
            seen = listed.get(record.key.value)
            size = seen.size if seen else None
            attempt("stale_claim", record.blob, record.key, _ingest_then_complete(record.blob, deps, size, now))
        elif record.state in (LedgerState.SUBMITTED, LedgerState.COMPLETING):
            what = "finished_job" if record.state is LedgerState.SUBMITTED else "stale_completion"
            attempt(what, record.blob, record.key, _complete_or_resubmit(record, deps))

    jobs = 0
    for job in deps.workspace.jobs():
        if not job.tags.get("blob", "").startswith(f"{deps.config.incoming_container}/"):
            continue  # another deployment's job in a shared workspace: its own reconcile adopts it
        jobs += 1
        tag = job.tags.get(RUN_TAG, "")
        try:
            key = WorkKey(tag)
        except ValueError:
            continue
        if key.value in records or key.value in done:
            continue
        survivor = listed.get(key.value)
        if survivor is not None:
            attempt("orphan_job", survivor.ref, key, _ingest_then_complete(survivor.ref, deps, survivor.size, now))
            continue
        attempt("orphan_job", _job_blob(job), key, _record_orphan(job, key, deps, now))

    report = ReconcileReport(len(listed), len(records), jobs, tuple(found), tuple(errors))
    log_event(
        log, logging.ERROR if errors else logging.INFO, "reconcile.done",
        blobs=report.blobs_listed, records=report.records, jobs=report.jobs, found=len(found), errors=len(errors),
    )
    return report


def _job_blob(job: PipelineJob) -> BlobRef:
    container, _, name = job.tags.get("blob", "?/?").partition("/")
    return BlobRef(container, name, job.tags.get("etag", "?"))


def _record_orphan(job: PipelineJob, key: WorkKey, deps: Deps, now: datetime) -> Callable[[], IngestOutcome]:
    """A job whose blob version and ledger record are both gone: record it as skipped, once, so the
    next pass knows it and ops see why it has no model."""

    def record() -> IngestOutcome:
        blob = _job_blob(job)
        claimed, created = deps.ledger.claim(blob, key, f"reconcile-{now:%Y%m%dT%H%M%SZ}", now + deps.config.lease)
        if not created:
            return Duplicate(claimed)
        reason = (
            f"{blob.path}: the blob version is gone and its ledger record was lost (a storage emulator crash); "
            f"job {job.name} is kept, not trained on again. Upload the file again to train on it."
        )
        return _skip(claimed, reason, deps)

    return record


def _ingest_then_complete(
    blob: BlobRef, deps: Deps, size: int | None, now: datetime
) -> Callable[[], IngestOutcome | CompleteOutcome]:
    def run() -> IngestOutcome | CompleteOutcome:
        outcome = ingest_blob(blob, deps, event_id=f"reconcile-{now:%Y%m%dT%H%M%SZ}", content_length=size)
        if isinstance(outcome, Submitted) and outcome.job.status.terminal:
            # The job already ran (an adopted job, or one whose record was lost): finish it now.
            return complete_record(outcome.record, deps)
        return outcome

    return run


def _complete_or_resubmit(record: LedgerRecord, deps: Deps) -> Callable[[], IngestOutcome | CompleteOutcome]:
    def run() -> IngestOutcome | CompleteOutcome:
        try:
            return complete_record(record, deps)
        except JobNotFoundError:
            pass
        # The workspace lost the job (or never got it): submit it again, from the same blob version.
        log_event(log, logging.WARNING, "reconcile.job_lost", job=record.job)
        try:
            _, submitted, *_ = _register_and_submit(record, deps)
        except BlobChangedError as exc:
            latest = deps.ledger.get(record.key) or record
            completing = _move(deps.ledger, latest, StartCompleting(deps.clock() + deps.config.lease))
            return _fail(completing, f"the workspace lost job {record.job} and the blob version is gone: {exc}", deps)
        return Submitted(record, submitted)

    return run


def _decide(
    metrics: Metrics, champion: ModelVersion | None, evaluated: str | None, rule: PromoteRule
) -> tuple[bool, str]:
    """The champion gate: (promote?, one line saying why). Both numbers come from the same test rows."""
    name, mine = metrics.primary, metrics.primary_value
    rows = f"{metrics.test_rows} test rows" if metrics.test_rows is not None else "the test rows"
    if rule.min_value is not None and not metrics.reaches(rule.min_value):
        return False, f"kept: {name} {mine:.4f} does not reach the contract's min_value {rule.min_value:g}"
    if champion is None:
        return True, f"promoted: first model, {name} {mine:.4f} on {rows}"
    if champion.version != evaluated:
        # Its numbers are not on this job's rows: comparing them would be unfair either way.
        return False, (
            f"kept v{champion.version}: it became champion after this job was submitted "
            f"(the job scored {'v' + evaluated if evaluated else 'no champion'}), so the two were not "
            "scored on the same rows; retrain this file to compare them"
        )
    theirs, gain = metrics.champion_value, metrics.gain_over_champion()
    if (theirs is None or gain is None) and metrics.champion_error:
        # The champion cannot score today's data (another contract): it cannot serve it either.
        return True, f"promoted over v{champion.version}: it could not be scored ({metrics.champion_error})"
    if theirs is None or gain is None:
        return False, f"kept v{champion.version}: the job did not score it on the same rows, so no fair comparison"
    versus = f"{name} {mine:.4f} vs v{champion.version}'s {theirs:.4f} on the same {rows}"
    if gain > rule.min_delta:
        return True, f"promoted: {versus}"
    need = f"more than {rule.min_delta:g} better" if rule.min_delta else "better (a tie keeps the champion)"
    return False, f"kept v{champion.version}: {versus}; needs {need}"


def _champion_gate(
    deps: Deps, model: ModelVersion, metrics: Metrics, *, evaluated: str | None
) -> tuple[bool, str]:
    """Decide, then promote with a compare-and-swap: when another completion changed the champion in
    between, decide again against the new one (which this job did not score, so it is kept)."""
    for _ in range(_GATE_ATTEMPTS):
        champion = deps.workspace.champion()
        if model.champion or (champion is not None and champion.version == model.version):
            return True, "promoted"  # a retry after promote(): it stays promoted
        promote, decision = _decide(metrics, champion, evaluated, deps.contract.promote)
        if not promote:
            return False, decision
        if deps.workspace.promote(model, replacing=champion) is not None:
            return True, decision
        log_event(log, logging.INFO, "complete.champion_changed", model_version=f"{model.name}:{model.version}")
    raise WorkspaceError(
        f"model {model.name}:{model.version}: the champion changed {_GATE_ATTEMPTS} times during the gate; "
        "the event will be retried."
    )


def log_outcome(outcome: IngestOutcome | CompleteOutcome) -> None:
    """One line per decision, at the level ops should see it: the trigger's last word."""
    match outcome:
        case Submitted(record, job):
            log_event(log, logging.INFO, "ingest.submitted", job=job.name, data_version=record.data_version)
        case Quarantined(record, reason, copy):
            # Quarantined by ingest's head check, or after its job, when prep found the fault deeper.
            # The customer's data, not our fault: a warning.
            event = "complete.quarantined" if record.job else "ingest.quarantined"
            log_event(log, logging.WARNING, event, reason=reason, copy=copy.path, job=record.job)
        case Failed(record, reason):
            log_event(log, logging.ERROR, "failed", state=record.state.value, reason=reason)
        case Skipped(record, reason):
            log_event(log, logging.WARNING, "ingest.skipped", reason=reason)
        case Registered(record, _, promoted):
            log_event(
                log, logging.INFO, "complete.done",
                model_version=record.model_version, promoted=promoted,
                metric=record.metrics.primary if record.metrics else None,
                value=record.metrics.primary_value if record.metrics else None,
            )
        case JobFailed(record, status):
            log_event(log, logging.ERROR, "complete.job_failed", job=status.name, reason=record.reason)
        case InProgress(record, status):
            log_event(log, logging.INFO, "complete.in_progress", job=status.name, job_state=status.state.value)
        case Duplicate(record):
            log_event(log, logging.INFO, "duplicate", state=record.state.value, job=record.job)
        case Ignored(reason):
            log_event(log, logging.WARNING, "ignored", reason=reason)
