"""The ledger on Azure Table Storage (Azurite locally): one entity per attempt of a blob version,
and one for the schedule (partition `schedule`: the jobs in flight and their versions).

Claims are a conditional insert (a second insert of the same key fails with 409), and every
state change is an update matched on the entity's ETag, so two deliveries of one event can never
both advance it. Each change is one typed move (`domain.Move`), applied by `LedgerRecord.after`,
which allows only the moves in `domain.ALLOWED_MOVES`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from autoretrain.domain import BlobRef, LedgerRecord, LedgerState, Metrics, Move, Moved, Schedule, WorkKey
from autoretrain.domain.errors import LedgerError, StorageError

__all__ = ["TableLedger"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


_CLAIM_TRIES = 5
# The schedule's entity: its partition is no work key's (those are two hex digits), so no record is it.
_SCHEDULE = ("schedule", "jobs")


class TableLedger:
    """The Ledger port on one Azure table."""

    def __init__(self, table: TableClient, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._table = table
        self._clock = clock

    @classmethod
    def connect(cls, service: TableServiceClient, table_name: str, *, create: bool = True) -> TableLedger:
        """Open the ledger table, creating it when `create` (local mode; on Azure infra/ creates it
        and the identity's role is scoped to the table alone)."""
        if create:
            try:
                service.create_table_if_not_exists(table_name)
            except AzureError as exc:
                raise StorageError(f"ledger table {table_name!r}: cannot create it ({_msg(exc)}).") from exc
        return cls(service.get_table_client(table_name))

    @staticmethod
    def _keys(key: WorkKey) -> tuple[str, str]:
        # Two hex digits of partition spread the load; the row key is the whole work key.
        return key.value[:2], key.value

    def claim(
        self, blob: BlobRef, key: WorkKey, event_id: str, lease_until: datetime,
        *, attempt: int = 0, first_key: WorkKey | None = None,
    ) -> tuple[LedgerRecord, bool]:
        record = LedgerRecord.claimed(
            blob, key, event_id, self._clock(), lease_until, attempt=attempt, first_key=first_key
        )
        entity = _entity(record)
        # A claim can vanish between our failed insert and our read: another worker forgot it (an event
        # for a blob that does not exist). Then the insert is tried again, a bounded number of times.
        for _ in range(_CLAIM_TRIES):
            try:
                meta = self._table.create_entity(entity)
            except ResourceExistsError:
                existing = self.get(key)
                if existing is not None:
                    return existing, False
                continue
            except AzureError as exc:
                raise StorageError(f"ledger: cannot claim {blob.path} ({_msg(exc)}).") from exc
            return _record({**entity, "etag": meta.get("etag")}), True
        raise LedgerError(f"ledger: {key} exists and vanished {_CLAIM_TRIES} times; the event will be retried.")

    def get(self, key: WorkKey) -> LedgerRecord | None:
        partition, row = self._keys(key)
        try:
            entity = self._table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageError(f"ledger: cannot read {key} ({_msg(exc)}).") from exc
        return _record({**entity, "etag": entity.metadata.get("etag")})

    def move(self, record: LedgerRecord, move: Move) -> LedgerRecord:
        try:
            moved = record.after(move, self._clock())
        except ValueError as exc:
            raise LedgerError(str(exc)) from None
        if record.etag is None:
            raise LedgerError(f"ledger: {record.key} was not read from the ledger; read it before moving it.")
        entity = _entity(moved)
        try:
            # REPLACE, not MERGE: a field the move cleared (a lease, a reason) must go too.
            meta = self._table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=record.etag, match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise LedgerError(
                f"ledger: {record.key} changed since it was read; {type(move).__name__} not written."
            ) from exc
        except AzureError as exc:
            raise StorageError(f"ledger: cannot write {record.key} ({_msg(exc)}).") from exc
        return _record({**entity, "etag": meta.get("etag")})

    def forget(self, record: LedgerRecord) -> None:
        if record.etag is None:
            raise LedgerError(f"ledger: {record.key} was not read from the ledger; read it before deleting it.")
        partition, row = self._keys(record.key)
        try:
            self._table.delete_entity(partition, row, etag=record.etag, match_condition=MatchConditions.IfNotModified)
        except ResourceModifiedError as exc:
            raise LedgerError(f"ledger: {record.key} changed since it was read; not deleted.") from exc
        except ResourceNotFoundError:
            return  # already gone
        except AzureError as exc:
            raise StorageError(f"ledger: cannot delete {record.key} ({_msg(exc)}).") from exc

    def records(self, state: LedgerState | None = None, *, job: str | None = None) -> Iterator[LedgerRecord]:
        clauses = {name: value for name, value in (("state", state.value if state else None), ("job", job)) if value}
        try:
            entities = (
                self._table.query_entities(" and ".join(f"{name} eq @{name}" for name in clauses), parameters=clauses)
                if clauses else self._table.list_entities()
            )
            for entity in entities:
                if entity["PartitionKey"] != _SCHEDULE[0]:
                    yield _record({**entity, "etag": entity.metadata.get("etag")})
        except AzureError as exc:
            raise StorageError(f"ledger: cannot list records ({_msg(exc)}).") from exc

    def schedule(self) -> Schedule:
        try:
            entity = self._table.get_entity(*_SCHEDULE)
        except ResourceNotFoundError:
            return Schedule()
        except AzureError as exc:
            raise StorageError(f"ledger: cannot read the schedule ({_msg(exc)}).") from exc
        jobs = {job: tuple(WorkKey(k) for k in keys) for job, keys in json.loads(entity.get("jobs") or "{}").items()}
        since = {job: _when(when) for job, when in json.loads(entity.get("since") or "{}").items()}
        return Schedule(jobs, entity.metadata.get("etag"), since)

    def save_schedule(self, schedule: Schedule) -> Schedule | None:
        entity = {"PartitionKey": _SCHEDULE[0], "RowKey": _SCHEDULE[1],
                  "jobs": json.dumps({job: [k.value for k in keys] for job, keys in sorted(schedule.jobs.items())}),
                  "since": json.dumps({job: when.isoformat() for job, when in sorted(schedule.since.items())})}
        try:
            if schedule.etag is None:
                meta = self._table.create_entity(entity)
            else:
                meta = self._table.update_entity(entity, mode=UpdateMode.REPLACE, etag=schedule.etag,
                                                 match_condition=MatchConditions.IfNotModified)
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            return None
        except AzureError as exc:
            raise StorageError(f"ledger: cannot write the schedule ({_msg(exc)}).") from exc
        return Schedule(dict(schedule.jobs), meta.get("etag"), dict(schedule.since))


def _msg(exc: AzureError) -> str:
    return (getattr(exc, "message", None) or str(exc)).splitlines()[0]


def _when(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value))


def _entity(record: LedgerRecord) -> dict[str, Any]:
    partition, row = TableLedger._keys(record.key)
    entity: dict[str, Any] = {
        "PartitionKey": partition,
        "RowKey": row,
        "container": record.blob.container,
        "blob": record.blob.name,
        "blob_etag": record.blob.etag,
        "state": record.state.value,
        "event_id": record.event_id,
        "created": record.created,
        "updated": record.updated,
        "takers": record.takers,
    }
    optional: dict[str, Any] = {
        "data_version": record.data_version,
        "job": record.job,
        "model_version": record.model_version,
        "metrics": record.metrics.to_json() if record.metrics else None,
        "promoted": record.promoted,
        "reason": record.reason,
        "lease_until": record.lease_until,
        "champion": record.champion,
        "decision": record.decision,
        "training_set": record.training_set,
        "members": record.members,
        "trained_on": record.trained_on,
        "attempt": record.attempt or None,
        "history": json.dumps([m.as_row() for m in record.history]) if record.history else None,
        "first_key": record.first_key.value if record.first_key else None,
    }
    entity.update({name: value for name, value in optional.items() if value is not None})
    return entity


def _either(entity: dict[str, Any], name: str, legacy: str) -> Any:
    """A property by its name, or by the name records written before it carry (`attempts` for
    `takers`, `retrain` for `attempt`, `retrain_of` for `first_key`); a rewrite uses the new name."""
    value = entity.get(name)
    return entity.get(legacy) if value is None else value


def _legacy_window(entity: dict[str, Any]) -> int:
    return len(json.loads(entity["window"])) if entity.get("window") else 0


def _record(entity: dict[str, Any]) -> LedgerRecord:
    metrics = entity.get("metrics")
    lease = entity.get("lease_until")
    return LedgerRecord(
        key=WorkKey(entity["RowKey"]),
        blob=BlobRef(entity["container"], entity["blob"], entity["blob_etag"]),
        state=LedgerState(entity["state"]),
        event_id=entity.get("event_id", ""),
        created=_when(entity["created"]),
        updated=_when(entity["updated"]),
        data_version=entity.get("data_version"),
        job=entity.get("job"),
        model_version=entity.get("model_version"),
        metrics=Metrics.from_json(metrics) if metrics else None,
        promoted=entity.get("promoted"),
        reason=entity.get("reason"),
        lease_until=_when(lease) if lease else None,
        takers=int(_either(entity, "takers", "attempts") or 1),
        champion=entity.get("champion"),
        decision=entity.get("decision"),
        training_set=entity.get("training_set"),
        # Records written before the counts kept the list of trained-on versions (`window`).
        members=int(entity.get("members") or _legacy_window(entity)),
        trained_on=int(entity.get("trained_on") or _legacy_window(entity)),
        attempt=int(_either(entity, "attempt", "retrain") or 0),
        first_key=WorkKey(first) if (first := _either(entity, "first_key", "retrain_of")) else None,
        history=tuple(Moved.from_row(m) for m in json.loads(entity["history"])) if entity.get("history") else (),
        etag=entity.get("etag"),
    )
