"""Retrain: an operator's explicit, numbered re-run of a blob version (`autoretrain retrain`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from autoretrain.domain import (
    BlobRef,
    LedgerRecord,
    LedgerState,
    WorkKey,
)
from autoretrain.domain.errors import (
    RetrainRefused,
)
from autoretrain.logs import log_event
from autoretrain.loop.deps import Deps
from autoretrain.loop.ingest import _ingest_claimed, ingest_blob
from autoretrain.loop.outcomes import Duplicate, IngestOutcome
from autoretrain.loop.steps import _take_over, _under_lease

log = logging.getLogger("autoretrain.loop")


def retrain(blob: BlobRef, deps: Deps) -> IngestOutcome:
    """Run one blob version again, on an operator's word (`autoretrain retrain`): a new, numbered
    retrain with its own work key, job and model, recorded next to the earlier runs. Nothing else
    ever runs a blob version twice: a redelivery or reconcile finds its record and stops.

    The last run must have ended (done, failed or quarantined). The data version registered for the
    blob version is used again, so its bytes are the ones trained on, even after the customer
    replaced the blob; a version quarantined at ingest has none, and is checked afresh.
    """
    origin = WorkKey.for_blob(blob)
    attempts = sorted(_attempts_of(origin, deps), key=lambda r: r.attempt)
    if not attempts:
        raise RetrainRefused(
            f"{blob.path} (eTag {blob.etag}): the ledger has no record of this blob version; it is ingested "
            "when its event arrives or by `autoretrain reconcile`."
        )
    latest = attempts[-1]
    if not latest.state.final:
        raise RetrainRefused(
            f"{blob.path}: its {_attempt_name(latest)} is still {latest.state.value} (job {latest.job or 'not yet'}); "
            "retrain it once that has ended."
        )
    data_version = _data_version_of(attempts)
    if data_version is None and latest.state is LedgerState.SKIPPED:
        raise RetrainRefused(f"{blob.path}: it was skipped, so there is nothing to train on: {latest.reason}")
    number = latest.attempt + 1
    now = deps.clock()
    record, created = deps.ledger.claim(
        blob, origin.attempt(number), f"retrain-{number}", now + deps.config.lease, attempt=number, first_key=origin,
    )
    if not created:
        return Duplicate(record)  # another operator's retrain of the same number got there first
    log_event(log, logging.INFO, "retrain.claimed", attempt=number, first_key=origin.value, data_version=data_version)
    return _under_lease(record, deps, lambda: _ingest_claimed(record, None, deps, data_version=data_version))


def _attempts_of(origin: WorkKey, deps: Deps) -> list[LedgerRecord]:
    return [r for r in deps.ledger.records() if r.origin == origin]


def _data_version_of(attempts: Sequence[LedgerRecord]) -> str | None:
    """The data version registered for a blob version by any of its attempts (one at most)."""
    return next((r.data_version for r in attempts if r.data_version), None)


def _attempt_name(record: LedgerRecord) -> str:
    return f"retrain {record.attempt}" if record.attempt else "first run"


def resume_claim(
    record: LedgerRecord, deps: Deps, *, event_id: str, content_length: int | None = None
) -> IngestOutcome:
    """Finish the ingest of a `claimed` record whose worker is gone (its lease ran out, or it gave the
    lease back when it was stopped): taken over, checked, registered and submitted again; each step
    is idempotent by key, so a job it had submitted is found, not started twice. `event_id` names
    who resumes it."""
    if record.first_key is None:
        return ingest_blob(record.blob, deps, event_id=event_id, content_length=content_length)
    taken = _take_over(record, deps)
    if not isinstance(taken, LedgerRecord):
        return taken
    data_version = _data_version_of(_attempts_of(record.origin, deps))
    return _under_lease(taken, deps, lambda: _ingest_claimed(taken, None, deps, data_version=data_version))
