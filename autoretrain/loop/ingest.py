"""Ingest: a new blob version is checked, registered, and submitted as a job or left waiting for one."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from autoretrain.contract import HEAD_BYTES, check_head, check_name
from autoretrain.domain import (
    JOB_TAG,
    BlobRef,
    DataVersion,
    LedgerRecord,
    LedgerState,
    PipelineJob,
    Submit,
    TrainingMember,
    Wait,
    WorkKey,
    oldest_first,
)
from autoretrain.domain.errors import BlobChangedError, BlobMissingError, ContractError, LedgerError
from autoretrain.domain.events import COMMITTED_APIS, BlobCreated
from autoretrain.logs import log_event, trace_context
from autoretrain.loop.deps import Deps, LoopConfig
from autoretrain.loop.outcomes import Duplicate, Ignored, IngestOutcome, Submitted, Waiting
from autoretrain.loop.score import score_first
from autoretrain.loop.steps import _move, _quarantine, _same_topic, _skip, _snapshot, _take_over, _under_lease

log = logging.getLogger("autoretrain.loop")


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
        if record.state is LedgerState.WAITING:
            return _push_waiting(record, deps)
        if record.state is not LedgerState.CLAIMED or not record.lease_expired(now):
            return Duplicate(record)  # done, or another worker holds it and its lease runs
        taken = _take_over(record, deps)
        if not isinstance(taken, LedgerRecord):
            return taken
        record = taken
    log_event(log, logging.INFO, "ingest.claimed", taker=record.takers)
    claimed = record
    return _under_lease(claimed, deps, lambda: _ingest_claimed(claimed, content_length, deps))


def _ingest_claimed(
    record: LedgerRecord, content_length: int | None, deps: Deps, *, data_version: str | None = None
) -> IngestOutcome:
    """Check, register and submit a claimed record. A retrain of a version that already has its
    data version (`data_version`) skips the check and the registration: the same bytes again."""
    blob = record.blob
    whole: bytes | None = None  # the blob's bytes, when the head read was all of it
    if data_version is None:
        try:
            # Read before judging the name: an event for a blob that does not exist leaves no record.
            # (No URL reaches a name with '.' or '..' segments: that one is judged by its name first.)
            if not blob.addressable:
                check_name(blob.name, content_length, deps.contract)
            head = deps.blobs.read_head(blob, HEAD_BYTES)
            if blob.addressable:
                check_name(blob.name, content_length, deps.contract)
            # Fewer bytes than asked for: the service says that was all of this version. (The event's
            # contentLength is not trusted for that: a wrong one would cut the data version short.)
            whole = head if len(head) < HEAD_BYTES else None
            rows = check_head(blob.path, head, deps.contract, complete=whole is not None)
        except ContractError as exc:
            return _quarantine(record, str(exc), deps, whole)
        except BlobMissingError as exc:
            return _forget(record, str(exc), deps)
        except BlobChangedError as exc:
            return _skip(record, str(exc), deps)
        log_event(log, logging.INFO, "ingest.contract_ok", rows_checked=rows)
    if record.first_key is None and deps.contract.training.retrain_when == "champion_slips":
        first = _score_first(record, deps, whole)
        if not isinstance(first, LedgerRecord):
            return first
        record, data_version = first, first.data_version
    # A retrain is an operator's word: it runs at once. Every other version waits its turn when the
    # contract limits the jobs in flight, and joins the next job with the versions waiting then.
    if record.first_key is None and deps.contract.training.jobs_in_flight:
        return _wait_for_job(record, deps, whole)
    try:
        data, job, champion, training_set, members, trained_on = _register_and_submit(
            record, deps, data_version, whole
        )
    except BlobChangedError as exc:
        return _skip(record, str(exc), deps)
    submit = Submit(data, job.name, champion, f"{training_set.name}:{training_set.version}", members, trained_on)
    record = _move(deps.ledger, record, submit)
    return Submitted(record, job)


def _score_first(record: LedgerRecord, deps: Deps, whole: bytes | None) -> IngestOutcome | LedgerRecord:
    """Register the version and submit the job that scores the champion on it (`retrain_when:
    champion_slips`); with no champion yet, the record with its data version: it trains."""
    try:
        data = _register_data(record, deps, whole)
    except BlobChangedError as exc:
        return _skip(record, str(exc), deps)
    return score_first(record, data, deps) or _with_data(record, data)


def _wait_for_job(record: LedgerRecord, deps: Deps, whole: bytes | None) -> IngestOutcome:
    """Register the version and leave it waiting; then start the next job if a slot is free (this
    version and every other one waiting are its new data)."""
    from autoretrain.loop.dispatch import dispatch  # dispatch submits through this module

    try:
        data = _register_data(record, deps, whole)
    except BlobChangedError as exc:
        return _skip(record, str(exc), deps)
    record = _move(deps.ledger, record, Wait(data))
    dispatched = dispatch(deps)
    if dispatched is not None:
        job, records = dispatched
        mine = next((r for r in records if r.key == record.key), None)
        if mine is not None:
            return Submitted(mine, job)
    return Waiting(record, deps.contract.training.jobs_in_flight)


def _push_waiting(record: LedgerRecord, deps: Deps) -> IngestOutcome:
    """A redelivery for a version that waits: finish the start of its job if the worker that started
    it died half-way, or start one if a slot is free now; else it is a duplicate."""
    from autoretrain.loop.dispatch import dispatch, resubmit, unmoved

    schedule = deps.ledger.schedule()
    job = next((name for name, keys in schedule.jobs.items() if record.key in keys), None)
    if job is None:
        started = dispatch(deps, schedule)
    elif schedule.starting(job, deps.clock(), deps.config.lease):
        return Duplicate(record)  # the worker that took the slot is still starting the job
    elif any(r.key == record.key for r in unmoved(job, schedule, deps)):
        started = resubmit(job, schedule.jobs[job], deps)
    else:
        return Duplicate(record)
    if started is None:
        return Duplicate(record)
    mine = next((r for r in started[1] if r.key == record.key), None)
    return Submitted(mine, started[0]) if mine is not None else Duplicate(record)


def _forget(record: LedgerRecord, reason: str, deps: Deps) -> Ignored | Duplicate:
    """No blob of that name exists: the event named a version the store does not have (deleted, or
    never there: a forged or mistaken event). Its claim is deleted, so it leaves no permanent record;
    the next event for a real blob of that name is new work as usual."""
    try:
        deps.ledger.forget(record)
    except LedgerError:
        return Duplicate(deps.ledger.get(record.key) or record)  # another worker moved it meanwhile
    return Ignored(f"{record.blob.path} (eTag {record.blob.etag}): {reason} Nothing was recorded.",
                   event="ingest.ignored")


def _training_window(
    new: Sequence[LedgerRecord], deps: Deps
) -> tuple[tuple[TrainingMember, ...], int]:
    """(every accepted data version so far, oldest first, then the job's new ones, each with its
    snapshot; how many of the last ones the job trains on, 0 for all). `new`: the records whose
    versions are the job's new data, each with its data version. All of it comes from the ledger:
    the workspace is not asked about any member, so a job costs the same calls for 1 or 500 of them.
    Accepted: done, so its file passed prep and trained a model, or held (passed prep, and the champion
    held on it: it was never trained on, so it is now); never one whose job is still running
    (prep may yet find it bad, and would fail every job it is in), quarantined, skipped or failed.
    Fixed here, at submission: a version registered later does not leak in; one still running joins
    the next window. The window selects what the model learns from; the test rows come from every
    accepted version, so a model that forgot old data is judged on it too."""
    fresh = {str(r.data_version) for r in new}
    keys = {r.key for r in new}
    # A retrain's data version was accepted before: it moves to the end, as the newest.
    accepted = oldest_first(
        r for state in LedgerState if state.accepted for r in deps.ledger.records(state)
        if r.key not in keys and r.data_version and r.data_version not in fresh
    )
    snapshots = {str(r.data_version): r.blob.copy_name(r.origin) for r in reversed(accepted)}
    snapshots.update({str(r.data_version): r.blob.copy_name(r.origin) for r in new})
    history = tuple(
        TrainingMember(version, snapshots[version])
        for version in dict.fromkeys([*(str(r.data_version) for r in accepted), *(str(r.data_version) for r in new)])
    )
    return history, _train_last(history, accepted, fresh, deps)


def _train_last(history: tuple[TrainingMember, ...], accepted: Sequence[LedgerRecord], fresh: set[str],
                deps: Deps) -> int:
    """How many of the newest members the contract's window trains on (0: all)."""
    rule = deps.contract.training
    if rule.window == "last" and rule.versions is not None:
        return min(rule.versions, len(history))
    if rule.window == "days" and rule.days is not None:
        since = deps.clock() - timedelta(days=rule.days)
        return _newest_run(history, {str(r.data_version) for r in accepted if r.created >= since} | fresh)
    return 0


def _newest_run(history: tuple[TrainingMember, ...], recent: set[str]) -> int:
    """How many of the newest members are recent: the job's new versions, and the unbroken run just
    before them (at least the newest one)."""
    inside = 0
    for member in reversed(history):
        if member.data_version not in recent:
            break
        inside += 1
    return max(inside, 1)


def _register_data(record: LedgerRecord, deps: Deps, whole: bytes | None = None) -> str:
    """Snapshot the blob version and register it as a data version ("name:version"), idempotent by key:
    a version already registered for this record is used again (one blob version, one data version).
    `whole`: the blob's bytes, read pinned to its eTag by the head check: a small file is then written,
    not read twice more."""
    if record.data_version is not None:
        return record.data_version
    blob, key = record.blob, record.key
    lineage = {"blob": blob.path, "etag": blob.etag, "work_key": key.value, "event_id": record.event_id}
    registered = deps.workspace.register_data(_snapshot(record, deps, whole), key, lineage, whole)
    data = f"{registered.name}:{registered.version}"
    log_event(log, logging.INFO, "ingest.data_registered", data_version=data)
    return data


def _register_and_submit(
    record: LedgerRecord, deps: Deps, data_version: str | None = None, whole: bytes | None = None
) -> tuple[str, PipelineJob, str | None, DataVersion, int, int]:
    """Register the blob version and submit its own job (a retrain, or no limit on jobs in flight):
    each step idempotent by key. `data_version`: the one registered for it before (a retrain)."""
    data = data_version or _register_data(record, deps, whole)
    job, scored, training_set, members, trained_on = submit_job(record.key, [_with_data(record, data)], deps)
    return data, job, scored, training_set, members, trained_on


def _with_data(record: LedgerRecord, data: str) -> LedgerRecord:
    return record if record.data_version == data else replace(record, data_version=data)


def submit_job(
    key: WorkKey, new: Sequence[LedgerRecord], deps: Deps
) -> tuple[PipelineJob, str | None, DataVersion, int, int]:
    """Register the training set of a job whose new data is the versions of `new` (each record with
    its data version; the newest last), and submit the job `key.job_name` on it: (the job, the
    champion version it scores, the training set, how many versions it holds, how many it trains on).
    Idempotent by `key`: a second call finds the first training set and job."""
    history, train_last = _training_window(new, deps)
    trained_on = train_last or len(history)
    training_set = deps.workspace.register_training_set(key, history)
    log_event(log, logging.INFO, "ingest.training_set", training_set=f"{training_set.name}:{training_set.version}",
              trained_on=trained_on, tested_on=len(history), newest=history[-1].data_version, new_data=len(new))
    # The job scores the current champion on its own test rows: the gate compares like with like.
    champion = deps.workspace.champion()
    newest = new[-1]
    tags = {JOB_TAG: key.value, "blob": newest.blob.path, "etag": newest.blob.etag,
            "champion": champion.version if champion else "", **trace_context()}  # completion continues the trace
    if len(new) > 1:
        tags["new_versions"] = str(len(new))
    if newest.first_key is not None:
        tags.update(retrain=str(newest.attempt), retrain_of=newest.first_key.value)
    job = deps.workspace.submit(training_set, key, tags, champion=champion, train_last=train_last, new_files=len(new))
    # A resubmit finds the first job, which scored the champion named in its tags.
    scored = job.tags.get("champion", champion.version if champion else "") or None
    log_event(log, logging.INFO, "ingest.pipeline_submitted", job=job.name, experiment=job.experiment,
              champion_version=scored)
    return job, scored, training_set, len(history), trained_on
