"""Reconcile: one pass that makes the ledger, the container and the workspace agree."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from autoretrain.domain import (
    JOB_TAG,
    MODE_TAG,
    BlobRef,
    JobMode,
    LedgerRecord,
    LedgerState,
    ListedBlob,
    PipelineJob,
    StartCompleting,
    WorkKey,
    oldest_first,
)
from autoretrain.domain.errors import (
    BlobChangedError,
    JobNotFoundError,
    one_line,
)
from autoretrain.logs import invocation, log_event
from autoretrain.loop.complete import JobFacts, complete_record, finish_claim
from autoretrain.loop.deps import Deps
from autoretrain.loop.dispatch import dispatch, release, resubmit, unmoved
from autoretrain.loop.ingest import _register_and_submit, ingest_blob
from autoretrain.loop.outcomes import (
    CompleteOutcome,
    Duplicate,
    Failed,
    Held,
    Ignored,
    IngestOutcome,
    InProgress,
    JobFailed,
    Quarantined,
    Registered,
    Several,
    Skipped,
    Submitted,
    Waiting,
    log_outcome,
)
from autoretrain.loop.score import is_scoring, rescore
from autoretrain.loop.steps import _fail, _move, _skip

log = logging.getLogger("autoretrain.loop")


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
        case Held(record):
            return f"held: {record.decision}"
        case Waiting(record, limit):
            return f"waiting for a job ({limit} in flight at most) on {record.data_version}"
        case Several(outcomes):
            return "; ".join(_result(one) for one in outcomes)


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
    return _Pass(deps, deps.clock(), grace).run()


Action = Callable[[], IngestOutcome | CompleteOutcome]


@dataclass
class _Pass:
    """One reconcile pass: what it has listed, what it found and what went wrong."""

    deps: Deps
    now: datetime
    grace: timedelta
    found: list[Found] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    records: dict[str, LedgerRecord] = field(default_factory=dict)
    listed: dict[str, ListedBlob] = field(default_factory=dict)

    def run(self) -> ReconcileReport:
        self.records = {r.key.value: r for r in self.deps.ledger.records()}
        self._unannounced_blobs()
        self._unfinished_records()
        self._scheduled_jobs()
        jobs = self._orphan_jobs()
        report = ReconcileReport(len(self.listed), len(self.records), jobs, tuple(self.found), tuple(self.errors))
        log_event(
            log, logging.ERROR if self.errors else logging.INFO, "reconcile.done", blobs=report.blobs_listed,
            records=report.records, jobs=report.jobs, found=len(self.found), errors=len(self.errors),
        )
        return report

    def _attempt(self, what: str, blob: BlobRef, key: WorkKey, action: Action) -> None:
        self.done.add(key.value)
        # Each file found is a trace of its own (linked to the pass's), as if its event had come.
        with invocation("reconcile.attempt", root=True, blob=blob.path, etag=blob.etag, work_key=key.value):
            try:
                outcome = action()
            except Exception as exc:
                message = f"{what} {blob.path} ({key}): {type(exc).__name__}: {one_line(exc)}"
                log_event(log, logging.ERROR, "reconcile.error", what=what, error=one_line(exc))
                self.errors.append(message)
                return
            if isinstance(outcome, Duplicate | InProgress):
                return  # a live event or another pass has it: nothing was out of step after all
            log_outcome(outcome)
            result = _result(outcome)
            log_event(log, logging.WARNING, "reconcile.found", what=what, result=result)
            self.found.append(Found(what, blob.path, key.value, result))

    def _ingest(self, blob: BlobRef, size: int | None) -> Action:
        return _ingest_then_complete(blob, self.deps, size, self.now)

    def _unannounced_blobs(self) -> None:
        """Blob versions with no ledger record, past the grace period (their event is not coming)."""
        for item in self.deps.blobs.list_blobs(self.deps.config.incoming_container):
            key = WorkKey.for_blob(item.ref)
            self.listed[key.value] = item
            fresh = self.now - item.last_modified < self.grace
            if key.value not in self.records and not item.ref.name.endswith("/") and not fresh:
                self._attempt("unannounced", item.ref, key, self._ingest(item.ref, item.size))

    def _unfinished_records(self) -> None:
        """Claims whose holder is gone, and records whose job ended without a completion: a job's
        versions together, oldest first, the workspace asked about the job once, not once a version."""
        jobs: dict[str, list[LedgerRecord]] = {}
        for record in self.records.values():
            if record.state is LedgerState.CLAIMED and record.lease_expired(self.now):
                seen = self.listed.get(record.key.value)
                action = functools.partial(finish_claim, record, self.deps, event_id=_event_id(self.now),
                                           content_length=seen.size if seen else None)
                self._attempt("stale_claim", record.blob, record.key, action)
            elif record.state in (LedgerState.SUBMITTED, LedgerState.COMPLETING):
                jobs.setdefault(record.job or record.key.job_name, []).append(record)
        for members in jobs.values():
            facts = JobFacts(new_versions=0)  # 0: the model's lineage counts the job's records, once
            for record in oldest_first(members):
                what = "finished_job" if record.state is LedgerState.SUBMITTED else "stale_completion"
                self._attempt(what, record.blob, record.key, _complete_or_resubmit(record, self.deps, facts))

    def _scheduled_jobs(self) -> None:
        """Jobs in the schedule: one whose worker died before moving its versions is started again; one
        whose versions are all settled leaves it. Then versions waiting with a slot free get a job:
        nothing waits forever."""
        schedule = self.deps.ledger.schedule()
        for job, keys in schedule.jobs.items():
            # A job whose worker may still be starting it (moving its versions) is left to that worker.
            starting = schedule.starting(job, self.now, self.deps.config.lease)
            stuck = [] if starting else unmoved(job, schedule, self.deps)
            if stuck:
                self._attempt("unstarted_job", stuck[-1].blob, stuck[-1].key, _restart(job, keys, self.deps))
            else:
                self._try(functools.partial(release, job, self.deps))
        first = next(iter(self.deps.ledger.records(LedgerState.WAITING)), None)
        if first is not None:
            self._attempt("waiting", first.blob, first.key, lambda: _dispatched(first, self.deps))

    def _try(self, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:
            log_event(log, logging.ERROR, "reconcile.error", what="schedule", error=one_line(exc))
            self.errors.append(f"schedule: {type(exc).__name__}: {one_line(exc)}")

    def _orphan_jobs(self) -> int:
        """Jobs of ours that no ledger record names: adopted, or recorded as skipped. Returns how many
        jobs of this deployment the workspace has."""
        jobs = 0
        named = {r.job for r in self.records.values() if r.job} | set(self.deps.ledger.schedule().jobs)
        for job in self.deps.workspace.jobs():
            if not job.tags.get("blob", "").startswith(f"{self.deps.config.incoming_container}/"):
                continue  # another deployment's job in a shared workspace: its own reconcile adopts it
            jobs += 1
            key = _version_of(job)
            if key is None:
                continue
            if key.value in self.records or key.value in self.done or job.name in named:
                continue  # a job of one version has its key; one of several is named by their records
            survivor = self.listed.get(key.value)
            if survivor is not None:
                self._attempt("orphan_job", survivor.ref, key, self._ingest(survivor.ref, survivor.size))
            else:
                self._attempt("orphan_job", _job_blob(job), key, _record_orphan(job, key, self.deps, self.now))
        return jobs


def _version_of(job: PipelineJob) -> WorkKey | None:
    """The work key of the version a job of ours is for: its tag; for a scoring job (named by the
    version key's `scoring()`), the key of the blob version its tags name."""
    if job.tags.get(MODE_TAG) == JobMode.SCORE.value:
        return WorkKey.for_blob(_job_blob(job))
    try:
        return WorkKey(job.tags.get(JOB_TAG, ""))
    except ValueError:
        return None


def _restart(job: str, keys: tuple[WorkKey, ...], deps: Deps) -> Action:
    return lambda: _started(*resubmit(job, keys, deps))


def _started(job: PipelineJob, records: tuple[LedgerRecord, ...]) -> IngestOutcome:
    return Submitted(records[-1], job)


def _dispatched(first: LedgerRecord, deps: Deps) -> IngestOutcome:
    """Start a job for the waiting versions, if a slot is free; Duplicate when none is (nothing out of step)."""
    started = dispatch(deps)
    return _started(*started) if started is not None else Duplicate(first)


def _job_blob(job: PipelineJob) -> BlobRef:
    container, _, name = job.tags.get("blob", "?/?").partition("/")
    return BlobRef(container, name, job.tags.get("etag", "?"))


def _record_orphan(job: PipelineJob, key: WorkKey, deps: Deps, now: datetime) -> Callable[[], IngestOutcome]:
    """A job whose blob version and ledger record are both gone: record it as skipped, once, so the
    next pass knows it and ops see why it has no model."""

    def record() -> IngestOutcome:
        blob = _job_blob(job)
        claimed, created = deps.ledger.claim(blob, key, _event_id(now), now + deps.config.lease)
        if not created:
            return Duplicate(claimed)
        reason = (
            f"{blob.path}: the blob version is gone and its ledger record was lost (a storage emulator crash); "
            f"job {job.name} is kept, not trained on again. Upload the file again to train on it."
        )
        return _skip(claimed, reason, deps)

    return record


def _event_id(now: datetime) -> str:
    """The name of a reconcile pass, in place of an event's id, in what it claims."""
    return f"reconcile-{now:%Y%m%dT%H%M%SZ}"


def _ingest_then_complete(
    blob: BlobRef, deps: Deps, size: int | None, now: datetime
) -> Callable[[], IngestOutcome | CompleteOutcome]:
    def run() -> IngestOutcome | CompleteOutcome:
        outcome = ingest_blob(blob, deps, event_id=_event_id(now), content_length=size)
        if isinstance(outcome, Submitted) and outcome.job.status.terminal:
            # The job already ran (an adopted job, or one whose record was lost): finish it now.
            return complete_record(outcome.record, deps)
        return outcome

    return run


def _complete_or_resubmit(
    record: LedgerRecord, deps: Deps, facts: JobFacts
) -> Callable[[], IngestOutcome | CompleteOutcome]:
    def run() -> IngestOutcome | CompleteOutcome:
        try:
            return complete_record(record, deps, facts=facts)
        except JobNotFoundError:
            pass
        # The workspace lost the job (or never got it): submit it again, from the same blob version(s).
        log_event(log, logging.WARNING, "reconcile.job_lost", job=record.job)
        if is_scoring(record, record.job):
            return rescore(record, deps)
        if record.job and WorkKey.of_job(record.job) != record.key:  # a job of several versions
            scheduled = deps.ledger.schedule().jobs.get(record.job, ())
            keys = {*scheduled, *(r.key for r in deps.ledger.records(job=record.job))}
            job, _ = resubmit(record.job, sorted(keys, key=lambda k: k.value), deps)
            return Submitted(record, job)
        try:
            _, submitted, *_ = _register_and_submit(record, deps)
        except BlobChangedError as exc:
            latest = deps.ledger.get(record.key) or record
            completing = _move(deps.ledger, latest, StartCompleting(deps.clock() + deps.config.lease))
            return _fail(completing, f"the workspace lost job {record.job} and the blob version is gone: {exc}", deps)
        return Submitted(record, submitted)

    return run
