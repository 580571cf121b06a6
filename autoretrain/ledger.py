"""The ledger on Azure Table Storage (Azurite locally): one entity per blob version.

Claims are a conditional insert (a second insert of the same key fails with 409), and every
state change is an update matched on the entity's ETag, so two deliveries of one event can never
both advance it. Moves follow `domain.ALLOWED_MOVES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
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

from autoretrain.domain import ALLOWED_MOVES, BlobRef, LedgerRecord, LedgerState, Metrics, WorkKey
from autoretrain.errors import LedgerError, StorageError

__all__ = ["TableLedger"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


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

    def claim(self, blob: BlobRef, key: WorkKey, event_id: str) -> tuple[LedgerRecord, bool]:
        now = self._clock()
        partition, row = self._keys(key)
        entity = {
            "PartitionKey": partition,
            "RowKey": row,
            "container": blob.container,
            "blob": blob.name,
            "blob_etag": blob.etag,
            "state": LedgerState.CLAIMED.value,
            "event_id": event_id,
            "created": now,
            "updated": now,
        }
        try:
            meta = self._table.create_entity(entity)
        except ResourceExistsError:
            existing = self.get(key)
            if existing is None:
                raise LedgerError(f"ledger: {key} exists and vanished at once; the event will be retried.") from None
            return existing, False
        except AzureError as exc:
            raise StorageError(f"ledger: cannot claim {blob.path} ({_msg(exc)}).") from exc
        return _record({**entity, "etag": meta.get("etag")}), True

    def get(self, key: WorkKey) -> LedgerRecord | None:
        partition, row = self._keys(key)
        try:
            entity = self._table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageError(f"ledger: cannot read {key} ({_msg(exc)}).") from exc
        return _record({**entity, "etag": entity.metadata.get("etag")})

    def advance(
        self,
        record: LedgerRecord,
        state: LedgerState,
        *,
        data_version: str | None = None,
        job: str | None = None,
        model_version: str | None = None,
        metrics: Metrics | None = None,
        promoted: bool | None = None,
        reason: str | None = None,
    ) -> LedgerRecord:
        if state not in ALLOWED_MOVES[record.state]:
            raise LedgerError(f"ledger: {record.key} cannot move from {record.state.value} to {state.value}.")
        if record.etag is None:
            raise LedgerError(f"ledger: {record.key} was not read from the ledger; read it before advancing.")
        partition, row = self._keys(record.key)
        changes: dict[str, Any] = {"state": state.value, "updated": self._clock()}
        for name, value in (
            ("data_version", data_version), ("job", job), ("model_version", model_version),
            ("reason", reason), ("promoted", promoted),
        ):
            if value is not None:
                changes[name] = value
        if metrics is not None:
            changes["metrics"] = metrics.to_json()
        try:
            meta = self._table.update_entity(
                {"PartitionKey": partition, "RowKey": row, **changes},
                mode=UpdateMode.MERGE,
                etag=record.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise LedgerError(
                f"ledger: {record.key} changed since it was read; {state.value} not written."
            ) from exc
        except AzureError as exc:
            raise StorageError(f"ledger: cannot write {record.key} ({_msg(exc)}).") from exc
        return replace(
            record,
            state=state,
            updated=changes["updated"],
            data_version=data_version or record.data_version,
            job=job or record.job,
            model_version=model_version or record.model_version,
            metrics=metrics or record.metrics,
            promoted=record.promoted if promoted is None else promoted,
            reason=reason or record.reason,
            etag=meta.get("etag"),
        )

    def records(self) -> Iterator[LedgerRecord]:
        try:
            for entity in self._table.list_entities():
                yield _record({**entity, "etag": entity.metadata.get("etag")})
        except AzureError as exc:
            raise StorageError(f"ledger: cannot list records ({_msg(exc)}).") from exc


def _msg(exc: AzureError) -> str:
    return (getattr(exc, "message", None) or str(exc)).splitlines()[0]


def _when(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value))


def _record(entity: dict[str, Any]) -> LedgerRecord:
    metrics = entity.get("metrics")
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
        etag=entity.get("etag"),
    )
