"""The steps every use case shares: leases, ledger moves, the snapshot, quarantine."""

from __future__ import annotations

import logging
from collections.abc import Callable

from autoretrain.domain import (
    BlobRef,
    Fail,
    LedgerRecord,
    Move,
    Quarantine,
    Release,
    Skip,
    TakeOver,
)
from autoretrain.domain.errors import (
    BlobChangedError,
    LedgerError,
    PermanentError,
    one_line,
)
from autoretrain.domain.ports import Ledger
from autoretrain.logs import log_event
from autoretrain.loop.deps import Deps
from autoretrain.loop.outcomes import Duplicate, Failed, Quarantined, Skipped, _Outcome

log = logging.getLogger("autoretrain.loop")


def _same_topic(a: str, b: str) -> bool:
    # Resource ids are case-insensitive in Azure; Event Grid does not normalise their case.
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


def _under_lease(record: LedgerRecord, deps: Deps, work: Callable[[], _Outcome]) -> _Outcome | Failed:
    """Do the work of a record this worker holds the lease on. A permanent error ends it as failed,
    with the reason; anything else gives the lease back (so Event Grid's retry starts at once) and
    raises. So does a Ctrl-C or an exit: the work it leaves half done (a job submitted, not yet
    recorded) is taken over by the job's completion or by reconcile at once, not after the lease."""
    try:
        return work()
    except PermanentError as exc:
        return _fail(record, str(exc), deps)
    except BaseException as exc:
        _release(record, exc, deps)
        raise


def _take_over(record: LedgerRecord, deps: Deps) -> LedgerRecord | Duplicate | Failed:
    """Take over leased work whose holder is gone; one worker wins, the others see a duplicate."""
    if record.takers >= deps.config.max_takers:
        reason = f"gave up after {record.takers} takers; last error: {record.reason or 'the worker died'}"
        return _fail(record, reason, deps)
    try:
        taken = deps.ledger.move(record, TakeOver(deps.clock() + deps.config.lease))
    except LedgerError:
        latest = deps.ledger.get(record.key)
        return Duplicate(latest or record)
    log_event(log, logging.WARNING, "ledger.taken_over", state=taken.state.value, taker=taken.takers,
              previous_error=record.reason)
    return taken


def _release(record: LedgerRecord, exc: BaseException, deps: Deps) -> None:
    latest = deps.ledger.get(record.key)
    if latest is None or latest.etag is None or not latest.state.leased or latest.takers != record.takers:
        return  # moved on, or taken over by another worker: not ours to release
    try:
        deps.ledger.move(latest, Release(f"{type(exc).__name__}: {one_line(exc)}"))
    except Exception:  # best effort: the lease runs out by itself
        log.debug("release of %s failed", record.key, exc_info=True)


def _snapshot(record: LedgerRecord, deps: Deps, whole: bytes | None = None) -> BlobRef:
    """The data version's bytes: the blob version's copy in our datasets container. The copy is
    idempotent, so a second call finds the first copy, even after the customer's blob was replaced."""
    blob, key = record.blob, record.origin  # every attempt of a blob version shares its snapshot
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
