"""What a use case decided: frozen values the trigger logs (`log_outcome`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TypeVar

from autoretrain.domain import (
    BlobRef,
    JobStatus,
    LedgerRecord,
    ModelVersion,
    PipelineJob,
)
from autoretrain.logs import bound, log_event

log = logging.getLogger("autoretrain.loop")


@dataclass(frozen=True, slots=True)
class Submitted:
    record: LedgerRecord
    job: PipelineJob


@dataclass(frozen=True, slots=True)
class Waiting:
    """Registered, and waiting for a job: the contract's `jobs_in_flight` jobs are running."""

    record: LedgerRecord
    jobs_in_flight: int


@dataclass(frozen=True, slots=True)
class Several:
    """What one event did to each version of its job (a job whose new data is several versions), and
    the next job it started, if any."""

    outcomes: tuple[IngestOutcome | CompleteOutcome, ...]


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
    event: str = "ignored"  # the log line's event name


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
class Held:
    """The champion still holds on the version (`retrain_when: champion_slips`): nothing is trained."""

    record: LedgerRecord


@dataclass(frozen=True, slots=True)
class JobFailed:
    record: LedgerRecord
    status: JobStatus


IngestOutcome = Submitted | Waiting | Duplicate | Quarantined | Skipped | Failed | Ignored


CompleteOutcome = (
    Registered | Held | JobFailed | Quarantined | InProgress | Duplicate | Failed | Ignored | Waiting | Several
)


_Outcome = TypeVar("_Outcome", IngestOutcome, CompleteOutcome)


def _log_each(outcomes: tuple[IngestOutcome | CompleteOutcome, ...]) -> None:
    for one in outcomes:
        record = getattr(one, "record", None)
        fields = ({"work_key": record.key.value, "blob": record.blob.path, "etag": record.blob.etag,
                   "job": record.job} if isinstance(record, LedgerRecord) else {})
        with bound(**fields):  # each version's line names its own file
            log_outcome(one)


def _log_held(record: LedgerRecord) -> None:
    numbers = record.metrics
    fields = ({"metric": numbers.primary, "value": numbers.primary_value, "promoted_value": numbers.champion_value,
               "rows": numbers.test_rows} if numbers else {})
    log_event(log, logging.INFO, "complete.champion_held", champion_version=record.champion, **fields,
              decision=record.decision)


def log_outcome(outcome: IngestOutcome | CompleteOutcome) -> None:
    """One line per decision, at the level ops should see it: the trigger's last word."""
    match outcome:
        case Several(outcomes):
            _log_each(outcomes)
        case Submitted(record, job):
            log_event(log, logging.INFO, "ingest.submitted", job=job.name, data_version=record.data_version)
        case Waiting(record, limit):
            log_event(log, logging.INFO, "ingest.waiting", data_version=record.data_version, jobs_in_flight=limit)
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
            numbers = record.metrics
            fields = {"metric": numbers.primary, "value": numbers.primary_value} if numbers else {}
            log_event(log, logging.INFO, "complete.done", model_version=record.model_version, promoted=promoted,
                      **fields)
        case Held(record):
            _log_held(record)
        case JobFailed(record, status):
            log_event(log, logging.ERROR, "complete.job_failed", job=status.name, reason=record.reason)
        case InProgress(record, status):
            log_event(log, logging.INFO, "complete.in_progress", job=status.name, job_state=status.state.value)
        case Duplicate(record):
            log_event(log, logging.INFO, "duplicate", state=record.state.value, job=record.job)
        case Ignored(reason, event):
            log_event(log, logging.WARNING, event, reason=reason)
