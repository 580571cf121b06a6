"""Dispatch: the versions waiting for a job become the new data of one job, when a slot is free.

With `training: {jobs_in_flight: N}` an accepted version does not start a job of its own while N
jobs run: it waits (`waiting`). When a job ends, or an ingest finds a free slot, one job is
submitted for every version waiting then, so a burst of files costs one job, not one per file.

The ledger's schedule (`Schedule`, one row written only if unchanged since read) names the jobs in
flight and the versions each has as its new data. Taking a slot and choosing the versions is one
write, so two workers never give a version to two jobs, nor start more jobs than allowed. Then the
training set is registered, the job submitted and each version moved to `submitted`: each step
idempotent by the job's key (`WorkKey.for_batch`), so a worker that dies half-way leaves work that
the next completion, ingest or reconcile pass finishes (`resubmit`). A job leaves the schedule once
each of its versions is final, or waiting again (`release`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from autoretrain.domain import Fail, LedgerRecord, LedgerState, PipelineJob, Schedule, Submit, WorkKey, oldest_first
from autoretrain.domain.errors import NotReadyError, PermanentError
from autoretrain.logs import log_event
from autoretrain.loop.deps import Deps
from autoretrain.loop.ingest import submit_job
from autoretrain.loop.steps import _move

__all__ = ["dispatch", "release", "resubmit", "settled", "unmoved"]

log = logging.getLogger("autoretrain.loop")

# Schedule writes lost to another worker before this one gives up (the event is retried).
_TRIES = 8


def dispatch(deps: Deps, schedule: Schedule | None = None) -> tuple[PipelineJob, tuple[LedgerRecord, ...]] | None:
    """Submit one job for every version waiting and in no job yet, if fewer than the contract's jobs
    are in flight and the newest has waited `quiet_seconds`: (the job, its versions as submitted),
    or None when nothing was started. Safe to call at any time, from any worker. `schedule`: the
    schedule the caller has just read (saves reading it again; a stale one only costs a retry)."""
    rule = deps.contract.training
    for _ in range(_TRIES):
        schedule = schedule or deps.ledger.schedule()
        if rule.jobs_in_flight and len(schedule.jobs) >= rule.jobs_in_flight:
            return None
        taken = schedule.assigned
        waiting = oldest_first(r for r in deps.ledger.records(LedgerState.WAITING) if r.key not in taken)
        if not waiting:
            return None
        quiet = timedelta(seconds=rule.quiet_seconds)
        if quiet and deps.clock() - max(r.updated for r in waiting) < quiet:
            return None  # the burst is still arriving: a later ingest or reconcile pass starts the job
        batch = WorkKey.for_batch([r.key for r in waiting])
        keys = tuple(r.key for r in waiting)
        saved = deps.ledger.save_schedule(schedule.with_job(batch.job_name, keys, deps.clock()))
        if saved is not None:
            log_event(log, logging.INFO, "dispatch.job", job=batch.job_name, new_versions=len(waiting),
                      in_flight=len(saved.jobs))
            return _submit(batch, waiting, deps)
        schedule = None  # changed since it was read: read it again
    raise NotReadyError(f"the schedule changed {_TRIES} times while a job was being started; "
                        "the event will be retried.")


def _submit(
    batch: WorkKey, members: Sequence[LedgerRecord], deps: Deps
) -> tuple[PipelineJob, tuple[LedgerRecord, ...]]:
    """Submit the job of `members` (its training set, the job, each waiting member moved to submitted).
    A permanent error (the workspace refuses the job) fails every waiting member with the reason and
    frees the slot before it is raised: no version waits for a job that cannot start."""
    try:
        job, champion, training_set, held, trained_on = submit_job(batch, members, deps)
    except PermanentError as exc:
        reason = f"job {batch.job_name} could not be submitted: {exc}"
        for member in members:
            latest = deps.ledger.get(member.key)
            if latest is not None and latest.state is LedgerState.WAITING and latest.job != batch.job_name:
                _move(deps.ledger, latest, Fail(reason))
        release(batch.job_name, deps)
        raise
    moved = []
    for member in members:
        latest = deps.ledger.get(member.key) or member
        if latest.state is LedgerState.WAITING and latest.job != job.name:
            submit = Submit(str(latest.data_version), job.name, champion,
                            f"{training_set.name}:{training_set.version}", held, trained_on)
            latest = _move(deps.ledger, latest, submit)
        moved.append(latest)
    return job, tuple(moved)


def unmoved(job: str, schedule: Schedule, deps: Deps) -> list[LedgerRecord]:
    """The versions of a scheduled job not yet moved to `submitted` (their worker died between
    taking the slot and moving them, or is moving them now)."""
    records = [deps.ledger.get(key) for key in schedule.jobs.get(job, ())]
    return [r for r in records if r is not None and r.state is LedgerState.WAITING and r.job != job]


def resubmit(
    job: str, keys: Sequence[WorkKey], deps: Deps, *, starter_alive: bool = False
) -> tuple[PipelineJob, tuple[LedgerRecord, ...]]:
    """Submit again the job of the versions `keys` (its worker died half-way, or the workspace lost
    it): the same training set and job, found again by key, and each version still waiting moved to
    submitted. `starter_alive`: the worker that started it may still be moving them (the job ended
    first): nothing went wrong, so no warning."""
    records = [r for key in keys if (r := deps.ledger.get(key)) is not None]
    if starter_alive:
        log_event(log, logging.INFO, "dispatch.finishing_start", job=job, new_versions=len(records))
    else:
        log_event(log, logging.WARNING, "dispatch.resubmitted", job=job, new_versions=len(records))
    return _submit(WorkKey.for_batch(list(keys)), oldest_first(records), deps)


def settled(job: str, record: LedgerRecord | None) -> bool:
    """Whether a version is done with `job`: final, or waiting again after it (prep rejected another
    file of the job), or gone."""
    if record is None or record.state.final:
        return True
    return record.state is LedgerState.WAITING and record.job == job


def release(job: str, deps: Deps) -> bool:
    """Take `job` out of the schedule once every version of it is settled, freeing its slot; True if
    it was taken out now."""
    for _ in range(_TRIES):
        schedule = deps.ledger.schedule()
        keys = schedule.jobs.get(job)
        if keys is None:
            return False
        if not all(settled(job, deps.ledger.get(key)) for key in keys):
            return False
        if deps.ledger.save_schedule(schedule.without(job)) is not None:
            log_event(log, logging.INFO, "dispatch.released", job=job, in_flight=len(schedule.jobs) - 1)
            return True
    raise NotReadyError(f"the schedule changed {_TRIES} times while job {job} was being released; "
                        "the event will be retried.")
