"""The use cases: ingest a new blob version, complete a finished run.

Written against the ports only (`autoretrain.ports`). Each use case returns an outcome that says
what it decided; the trigger logs it. Event Grid delivers at least once and may reorder, so every
step is safe to repeat: the ledger's atomic claim makes a second delivery a no-op, and the
workspace calls are idempotent by the blob version's `WorkKey` when a first try died half-way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from autoretrain.contract import HEAD_BYTES, Contract, check_head, check_name
from autoretrain.domain import (
    RUN_TAG,
    BlobRef,
    LedgerRecord,
    LedgerState,
    ModelVersion,
    PipelineRun,
    RunState,
    RunStatus,
    WorkKey,
)
from autoretrain.errors import BlobChangedError, ContractError, LedgerError, WorkspaceError
from autoretrain.events import COMMITTED_APIS, BlobCreated, RunFinished
from autoretrain.logs import log_event
from autoretrain.ports import BlobStore, Ledger, Workspace
from autoretrain.settings import Settings

__all__ = [
    "CompleteOutcome",
    "Deps",
    "Duplicate",
    "Ignored",
    "InProgress",
    "IngestOutcome",
    "Quarantined",
    "Registered",
    "RunFailed",
    "Skipped",
    "Submitted",
    "complete",
    "ingest",
    "log_outcome",
]

log = logging.getLogger("autoretrain.loop")

PIPELINE_RUN_TYPE = "azureml.PipelineRun"
_GATE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    contract: Contract
    workspace: Workspace
    ledger: Ledger
    blobs: BlobStore


@dataclass(frozen=True, slots=True)
class Submitted:
    record: LedgerRecord
    run: PipelineRun


@dataclass(frozen=True, slots=True)
class Duplicate:
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
class Ignored:
    """Not ours, or not (yet) something to act on. Not retried."""

    reason: str


@dataclass(frozen=True, slots=True)
class InProgress:
    """The run has not finished (a RunStatusChanged to Running, or a reordered event)."""

    record: LedgerRecord
    status: RunStatus


@dataclass(frozen=True, slots=True)
class Registered:
    record: LedgerRecord
    model: ModelVersion
    promoted: bool


@dataclass(frozen=True, slots=True)
class RunFailed:
    record: LedgerRecord
    status: RunStatus


IngestOutcome = Submitted | Duplicate | Quarantined | Skipped | Ignored
CompleteOutcome = Registered | RunFailed | InProgress | Duplicate | Ignored


def _same_topic(a: str, b: str) -> bool:
    # Resource ids are case-insensitive in Azure; Event Grid does not normalise their case.
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


def _authenticate(event: BlobCreated, deps: Deps) -> str | None:
    """Why this event is not ours to act on, or None."""
    settings = deps.settings
    if not _same_topic(event.topic, settings.storage_topic):
        return f"topic {event.topic!r} is not our storage account {settings.storage_topic!r}"
    if event.blob.container != settings.incoming_container:
        return f"container {event.blob.container!r} is not {settings.incoming_container!r}"
    if event.api not in COMMITTED_APIS:
        return f"api {event.api!r} does not mean a committed blob"
    if event.blob.name.endswith("/"):
        return f"blob {event.blob.name!r} is a folder marker"
    return None


def ingest(event: BlobCreated, deps: Deps) -> IngestOutcome:
    """A blob landed in incoming/: check it, register it, submit the pipeline on it, once."""
    why_not = _authenticate(event, deps)
    if why_not is not None:
        return Ignored(why_not)
    blob = event.blob
    key = WorkKey.for_blob(blob)
    record, created = deps.ledger.claim(blob, key, event.event_id)
    if not created and record.state is not LedgerState.CLAIMED:
        return Duplicate(record)
    if not created:
        # An earlier delivery claimed it and did not finish (it raised, so Event Grid retried).
        # Every step below is idempotent by key, so picking it up again is safe.
        log_event(log, logging.INFO, "ingest.resumed", first_event=record.event_id)
    log_event(log, logging.INFO, "ingest.claimed")

    try:
        check_name(blob.name, event.content_length, deps.contract)
        head = deps.blobs.read_head(blob, HEAD_BYTES)
        complete_file = len(head) < HEAD_BYTES or event.content_length == len(head)
        rows = check_head(blob.path, head, deps.contract, complete=complete_file)
    except ContractError as exc:
        return _quarantine(record, str(exc), deps)
    except BlobChangedError as exc:
        return _skip(record, str(exc), deps)
    log_event(log, logging.INFO, "ingest.contract_ok", rows_checked=rows)

    lineage = {"blob": blob.path, "etag": blob.etag, "work_key": key.value, "event_id": event.event_id}
    try:
        snapshot = deps.blobs.copy_to(
            blob, deps.settings.datasets_container, blob.copy_name(key),
            {"source_blob": blob.path, "source_etag": blob.etag, "work_key": key.value},
        )
    except BlobChangedError as exc:
        return _skip(record, str(exc), deps)
    data = deps.workspace.register_data(snapshot, key, lineage)
    log_event(log, logging.INFO, "ingest.data_registered", data=data.name, data_version=data.version)
    run = deps.workspace.submit(data, key, {RUN_TAG: key.value, "blob": blob.path, "etag": blob.etag})
    log_event(log, logging.INFO, "ingest.pipeline_submitted", job=run.name, experiment=run.experiment)
    record = _advance_or_reread(
        deps.ledger, record, LedgerState.SUBMITTED, data_version=f"{data.name}:{data.version}", job=run.name
    )
    return Submitted(record, run)


def _advance_or_reread(ledger: Ledger, record: LedgerRecord, state: LedgerState, **changes: object) -> LedgerRecord:
    """Advance; if a concurrent delivery advanced it first, its result stands."""
    try:
        return ledger.advance(record, state, **changes)  # type: ignore[arg-type]
    except LedgerError:
        latest = ledger.get(record.key)
        if latest is None or latest.state is LedgerState.CLAIMED:
            raise
        log_event(log, logging.INFO, "ledger.already_advanced", state=latest.state.value)
        return latest


def _quarantine(record: LedgerRecord, reason: str, deps: Deps) -> Quarantined:
    copy = deps.blobs.copy_to(
        record.blob, deps.settings.quarantine_container, record.blob.copy_name(record.key),
        {"reason": reason, "source_blob": record.blob.path, "source_etag": record.blob.etag},
    )
    record = _advance_or_reread(deps.ledger, record, LedgerState.QUARANTINED, reason=reason)
    return Quarantined(record, reason, copy)


def _skip(record: LedgerRecord, reason: str, deps: Deps) -> Skipped:
    record = _advance_or_reread(deps.ledger, record, LedgerState.SKIPPED, reason=reason)
    return Skipped(record, reason)


def complete(event: RunFinished, deps: Deps) -> CompleteOutcome:
    """Our pipeline run ended: record a failure, or register its model with metrics and gate it."""
    settings = deps.settings
    if not _same_topic(event.topic, settings.workspace_topic):
        return Ignored(f"topic {event.topic!r} is not our workspace {settings.workspace_topic!r}")
    if event.run_type != PIPELINE_RUN_TYPE:
        return Ignored(f"run {event.run_id} is a {event.run_type or 'untyped'} run, not a pipeline run")
    tag = event.run_tags.get(RUN_TAG)
    if not tag:
        return Ignored(f"run {event.run_id} has no {RUN_TAG!r} tag")
    try:
        key = WorkKey(tag)
    except ValueError:
        return Ignored(f"run {event.run_id} has tag {RUN_TAG}={tag!r}, which is not a work key")
    if event.run_id != key.job_name:
        return Ignored(f"run {event.run_id} is not job {key.job_name} that its tag names")
    record = deps.ledger.get(key)
    if record is None:
        return Ignored(f"run {event.run_id}: no ledger record for work key {key}")
    if record.state.final:
        return Duplicate(record)

    # The event says what happened; the workspace is asked again, since events can be reordered.
    status = deps.workspace.run_status(event.run_id)
    if not status.state.terminal:
        return InProgress(record, status)
    if status.state is not RunState.COMPLETED:
        step = status.failed_step or "pipeline"
        reason = f"{status.state.value} in step {step!r}: {status.error or 'no error message'} (log: {status.log})"
        record = _advance_or_reread(deps.ledger, record, LedgerState.FAILED, job=event.run_id, reason=reason)
        return RunFailed(record, status)

    metrics = deps.workspace.run_metrics(event.run_id)
    log_event(log, logging.INFO, "complete.metrics", **{metrics.primary: metrics.primary_value})
    lineage = {
        "blob": record.blob.path,
        "etag": record.blob.etag,
        "work_key": key.value,
        "job": event.run_id,
        "data_version": record.data_version or "",
    }
    model = deps.workspace.register_model(event.run_id, key, metrics, lineage)
    log_event(log, logging.INFO, "complete.model_registered", model=model.name, model_version=model.version)
    champion, promoted = _champion_gate(deps.workspace, model)
    log_event(
        log, logging.INFO, "complete.champion_gate",
        promoted=promoted,
        champion_version=champion.version if champion else None,
        champion_value=champion.metrics.values.get(metrics.primary) if champion else None,
        value=metrics.primary_value,
    )
    record = _advance_or_reread(
        deps.ledger, record, LedgerState.DONE,
        job=event.run_id, model_version=f"{model.name}:{model.version}", metrics=metrics, promoted=promoted,
    )
    return Registered(record, model, promoted)


def _champion_gate(workspace: Workspace, model: ModelVersion) -> tuple[ModelVersion | None, bool]:
    """Promote `model` if it beats the champion; (the champion it was compared with, promoted?).

    promote() is a compare-and-swap: when another completion changed the champion in between,
    the comparison is made again with the new one.
    """
    for _ in range(_GATE_ATTEMPTS):
        champion = workspace.champion()
        if model.champion or (champion is not None and champion.version == model.version):
            return champion, True  # a retry after promote(): it stays promoted
        if not model.metrics.beats(champion.metrics if champion else None):
            return champion, False
        if workspace.promote(model, replacing=champion) is not None:
            return champion, True
        log_event(log, logging.INFO, "complete.champion_changed", model_version=model.version)
    raise WorkspaceError(
        f"model {model.name}:{model.version}: the champion changed {_GATE_ATTEMPTS} times during the gate; "
        "the event will be retried."
    )


def log_outcome(outcome: IngestOutcome | CompleteOutcome) -> None:
    """One line per decision, at the level ops should see it: the trigger's last word."""
    match outcome:
        case Submitted(record, run):
            log_event(log, logging.INFO, "ingest.submitted", job=run.name, data_version=record.data_version)
        case Quarantined(record, reason, copy):
            log_event(log, logging.ERROR, "ingest.quarantined", reason=reason, copy=copy.path)
        case Skipped(record, reason):
            log_event(log, logging.WARNING, "ingest.skipped", reason=reason)
        case Registered(record, _, promoted):
            log_event(
                log, logging.INFO, "complete.done",
                model_version=record.model_version, promoted=promoted,
                **({record.metrics.primary: record.metrics.primary_value} if record.metrics else {}),
            )
        case RunFailed(record, status):
            log_event(log, logging.ERROR, "complete.run_failed", job=status.name, reason=record.reason)
        case InProgress(record, status):
            log_event(log, logging.INFO, "complete.in_progress", job=status.name, run_state=status.state.value)
        case Duplicate(record):
            log_event(log, logging.INFO, "duplicate", state=record.state.value, job=record.job)
        case Ignored(reason):
            log_event(log, logging.WARNING, "ignored", reason=reason)
