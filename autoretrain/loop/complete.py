"""Complete: a finished job's model is registered and gated, or its failure recorded."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from autoretrain.domain import (
    JOB_TAG,
    MODE_TAG,
    Fail,
    Finish,
    JobMode,
    JobState,
    JobStatus,
    LedgerRecord,
    LedgerState,
    Metrics,
    ModelVersion,
    Quarantine,
    Requeue,
    StartCompleting,
    WorkKey,
    oldest_first,
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
from autoretrain.loop.dispatch import dispatch, release, resubmit
from autoretrain.loop.gate import _champion_gate
from autoretrain.loop.outcomes import (
    CompleteOutcome,
    Duplicate,
    Ignored,
    InProgress,
    JobFailed,
    Quarantined,
    Registered,
    Several,
    Skipped,
    Submitted,
    Waiting,
)
from autoretrain.loop.score import is_scoring, scored
from autoretrain.loop.steps import _move, _same_topic, _snapshot, _take_over, _under_lease

log = logging.getLogger("autoretrain.loop")


def complete(event: JobFinished, deps: Deps) -> CompleteOutcome:
    """Our pipeline job ended (Azure ML calls the event a run event): record a failure, or register its
    model with metrics and gate it."""
    key = _our_key(event, deps)
    if isinstance(key, Ignored):
        return key
    members = _members(event.job, key, deps)
    if any(m.state is LedgerState.WAITING and m.job != event.job for m in members):
        # Its starter died after submitting it, before moving its versions (or is moving them now):
        # once the job has ended, move them here (the same job, found again by key).
        members = _moved(event.job, members, deps)
    if not members and event.job_tags.get(MODE_TAG) == JobMode.SCORE.value:
        return Ignored(f"scoring job {event.job}: no version waits for it (it has moved on)", event="duplicate")
    if not members:
        # Reconcile adopts a job whose ledger record was lost, if its blob version still exists.
        return Ignored(f"job {event.job}: no ledger record for work key {key}; reconcile will look at it")
    try:
        outcomes = _complete_members(event.job, members, deps)
    except JobNotFoundError as exc:
        return Ignored(f"job {event.job}: {exc}; reconcile submits it again")
    # A job's end frees its slot; a scoring job holds none, but the version it left waiting may train.
    freed = release(event.job, deps) or any(is_scoring(m, event.job) for m in members)
    if freed and (started := dispatch(deps)) is not None:
        job, records = started
        return Several((*outcomes, Submitted(records[-1], job)))
    return outcomes[0] if len(outcomes) == 1 else Several(tuple(outcomes))


def _not_recorded_yet(record: LedgerRecord, job: str, deps: Deps) -> CompleteOutcome:
    """The job's first events can overtake ingest's (or dispatch's) own ledger move. While the job
    runs there is nothing to do (and nothing to retry); once it ended, the event must come back,
    unless the worker that claimed the version is gone: then its ingest is finished here."""
    status = deps.workspace.job_status(job)
    if not status.state.terminal:
        return InProgress(record, status)
    if record.state is LedgerState.CLAIMED and record.lease_expired(deps.clock()):
        return finish_claim(record, deps, event_id=f"completion of {job}")
    raise NotReadyError(f"{record.blob.path}: ingest has not recorded job {job} yet; the event will be retried.")


def finish_claim(
    record: LedgerRecord, deps: Deps, *, event_id: str, content_length: int | None = None
) -> CompleteOutcome:
    """A `claimed` record whose worker is gone (it may have submitted the job, then died or been
    stopped before recording it): its ingest is finished, which finds that job, and then, if the job
    has ended, the job too. The path of the job's completion event, and of reconcile."""
    from autoretrain.loop.retrain import resume_claim  # retrain ingests through ingest, as dispatch does

    outcome = resume_claim(record, deps, event_id=event_id, content_length=content_length)
    if isinstance(outcome, Submitted) and outcome.job.status.terminal:
        return complete_record(outcome.record, deps)
    if isinstance(outcome, Submitted | Skipped):
        return Several((outcome,))  # logged as the ingest it was
    return outcome


def _our_key(event: JobFinished, deps: Deps) -> WorkKey | Ignored:
    """The work key of the job, if the event is ours: from our workspace, it carries our tag, and it is
    the very job the tag names (a step run of our job, or any other run that copied the tag, is not).
    runType is not relied on: Microsoft does not document what v2 pipeline jobs send there."""
    config = deps.config
    if not _same_topic(event.topic, config.workspace_topic):
        return Ignored(f"topic {event.topic!r} is not our workspace {config.workspace_topic!r}")
    tag = event.job_tags.get(JOB_TAG)
    if not tag:
        return Ignored(f"job {event.job} has no {JOB_TAG!r} tag")
    try:
        key = WorkKey(tag)
    except ValueError:
        return Ignored(f"job {event.job} has tag {JOB_TAG}={tag!r}, which is not a work key")
    if event.job != key.job_name:
        return Ignored(f"job {event.job} is not job {key.job_name} that its tag names")
    return key


@dataclass(slots=True)
class JobFacts:
    """What completing one version of a job learned of the job, for its other versions in the same
    event (or reconcile pass): the workspace and the ledger are asked once a job, not once a version."""

    new_versions: int
    status: JobStatus | None = None
    metrics: Metrics | None = None
    model: ModelVersion | None = None
    gate: tuple[bool, str] | None = None  # (promoted, decision): the job's gate, decided once


def _complete_members(job: str, members: list[LedgerRecord], deps: Deps) -> list[CompleteOutcome]:
    """Complete each version of the job; NotReadyError after all of them if one is not recorded for it
    yet (the others are finished all the same; the retried event finds them done)."""
    outcomes: list[CompleteOutcome] = []
    not_ready: NotReadyError | None = None
    facts = JobFacts(new_versions=len(members))
    for record in members:
        try:
            outcomes.append(complete_record(record, deps, job=job, facts=facts))
        except NotReadyError as exc:
            not_ready = exc
    if not_ready is not None:
        raise not_ready
    return outcomes


def _members(job: str, key: WorkKey, deps: Deps) -> list[LedgerRecord]:
    """The records of the job's versions, oldest first. A job of one version is named by its key; one
    of several by theirs together: its versions are those that name it, and those the schedule gives
    it (a version its worker has not moved to `submitted` yet)."""
    own = deps.ledger.get(key)
    if own is not None:
        return [own]
    found = {r.key: r for r in deps.ledger.records(job=job)}
    for member in deps.ledger.schedule().jobs.get(job, ()):
        if member not in found and (record := deps.ledger.get(member)) is not None:
            found[member] = record
    return oldest_first(found.values())


def _moved(job: str, members: list[LedgerRecord], deps: Deps) -> list[LedgerRecord]:
    schedule = deps.ledger.schedule()
    try:
        if job not in schedule.jobs or not deps.workspace.job_status(job).state.terminal:
            return members
    except JobNotFoundError:
        return members  # not submitted yet: each member says so below
    # A job of many versions can end before its starter has moved them all: then it is no fault.
    resubmit(job, schedule.jobs[job], deps, starter_alive=schedule.starting(job, deps.clock(), deps.config.lease))
    return _members(job, WorkKey.of_job(job), deps)


def complete_record(
    record: LedgerRecord, deps: Deps, *, job: str | None = None, facts: JobFacts | None = None
) -> CompleteOutcome:
    """Finish a submitted record whose job (`job`, by default the one it names) ended: the path of a
    job event, and of reconcile. `facts`: what this event learned of the job from its other versions."""
    job = job or record.job or record.key.job_name
    if record.state is LedgerState.WAITING and record.job == job:
        return Duplicate(record)  # prep rejected another file of this job: it waits for the next one
    if record.state in (LedgerState.CLAIMED, LedgerState.WAITING):
        return _not_recorded_yet(record, job, deps)
    if record.state.final:
        return Duplicate(record)
    now = deps.clock()
    if record.state is LedgerState.COMPLETING and not record.lease_expired(now):
        return Duplicate(record)
    status = _job_status(job, facts, deps)
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
    return _under_lease(leased, deps, lambda: _complete_leased(leased, status, deps, facts))


def _job_status(job: str, facts: JobFacts | None, deps: Deps) -> JobStatus:
    """The event says what happened; the workspace is asked again (once an event or a reconcile pass,
    for all the job's versions), since events can be reordered. A job still running is running for
    all its versions: the event of its end comes later, and the next pass asks again."""
    if facts is not None and facts.status is not None:
        return facts.status
    status = deps.workspace.job_status(job)
    if facts is not None:
        facts.status = status
    return status


def _complete_leased(record: LedgerRecord, status: JobStatus, deps: Deps, facts: JobFacts | None) -> CompleteOutcome:
    job = status.name
    if status.state is JobState.FAILED and status.rejected:
        return _rejected(record, status, deps)
    if is_scoring(record, job):
        return scored(record, status, deps)
    if status.state is JobState.CANCELED:
        reason = "canceled" + (f": {status.error}" if status.error else "") + f" (log: {status.log})"
        return JobFailed(_move(deps.ledger, record, Fail(reason)), status)
    if status.state is not JobState.COMPLETED:
        step = status.failed_step or "pipeline"
        reason = f"{status.state.value} in step {step!r}: {status.error or 'no error message'} (log: {status.log})"
        return JobFailed(_move(deps.ledger, record, Fail(reason)), status)
    facts = facts or JobFacts(new_versions=0)
    metrics = facts.metrics = facts.metrics or deps.workspace.job_metrics(job)
    log_event(log, logging.INFO, "complete.metrics", **{metrics.primary: metrics.primary_value})
    # One model per job, however many versions it has as new data: registered and gated once, under
    # the job's key (its one version's, or that of its several versions together).
    model_key = WorkKey.of_job(job)
    model = facts.model = facts.model or deps.workspace.register_model(
        job, model_key, metrics, _lineage(record, job, model_key, deps, facts.new_versions)
    )
    log_event(log, logging.INFO, "complete.model_registered", model_version=f"{model.name}:{model.version}")
    promoted, decision = facts.gate = facts.gate or _gate(record, job, model, metrics, deps)
    record = _move(deps.ledger, record, Finish(f"{model.name}:{model.version}", metrics, promoted, decision))
    return Registered(record, model, promoted)


def _gate(record: LedgerRecord, job: str, model: ModelVersion, metrics: Metrics, deps: Deps) -> tuple[bool, str]:
    """The job's gate: decided by the first of its versions to finish (in this event or an earlier
    one), and the same for the others."""
    several = WorkKey.of_job(job) != record.key
    sibling = next(deps.ledger.records(LedgerState.DONE, job=job), None) if several else None
    if sibling is not None and sibling.promoted is not None:
        return sibling.promoted, sibling.decision or ""
    promoted, decision = _champion_gate(deps, model, metrics, evaluated=record.champion)
    deps.workspace.record_decision(model, decision)
    log_event(
        log, logging.INFO, "complete.champion_gate", promoted=promoted, decision=decision,
        metric=metrics.primary, value=metrics.primary_value, champion_value=metrics.champion_value,
        test_rows=metrics.test_rows,
    )
    return promoted, decision


def _lineage(record: LedgerRecord, job: str, model_key: WorkKey, deps: Deps, new_versions: int) -> dict[str, str]:
    lineage = {
        "blob": record.blob.path,
        "etag": record.blob.etag,
        "work_key": model_key.value,
        "job": job,
        "data_version": record.data_version or "",
        # Exactly the files it trained on: the training set names them (its MLTable); the model
        # keeps the counts, which stay small however many files there are.
        "training_set": record.training_set or "",
        "training_files": str(record.members),
        "trained_on_files": str(record.trained_on),
        **({"retrain": str(record.attempt), "retrain_of": record.first_key.value} if record.first_key else {}),
    }
    if model_key != record.key:
        lineage["new_versions"] = str(new_versions or len(list(deps.ledger.records(job=job))))
    return lineage


def _rejected(record: LedgerRecord, status: JobStatus, deps: Deps) -> CompleteOutcome:
    """prep rejected the job's data: a file of the job breaks the contract deep inside. The file it
    names is quarantined; in a job of several versions the others wait for the next job, without it."""
    job, rejected = status.name, str(status.rejected)
    # A job of one version (its own, or the one scoring the champion on it): the fault is that version's.
    if WorkKey.of_job(job) == record.key or is_scoring(record, job) or _at_fault(record, rejected):
        return _quarantine_rejected(record, status, deps)
    if not any(_at_fault(other, rejected) for other in deps.ledger.records(job=job)):
        reason = f"prep rejected job {job}'s data, naming no file of it: {rejected} (log: {status.log})"
        return JobFailed(_move(deps.ledger, record, Fail(reason)), status)
    reason = f"job {job}'s prep rejected another of its files ({rejected}); this one waits for the next job"
    return Waiting(_move(deps.ledger, record, Requeue(reason)), deps.contract.training.jobs_in_flight)


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


def _at_fault(record: LedgerRecord, rejected: str) -> bool:
    """Whether prep's rejection ("FILE: line N: ...") names this version's file: its blob (the local
    workspace names it so), or its snapshot (on Azure ML: the snapshot's folder is its work key)."""
    named = re.search(rf"(?:^|[\s'\"(]){re.escape(record.blob.path)}:", rejected) is not None
    return named or record.origin.value in rejected
