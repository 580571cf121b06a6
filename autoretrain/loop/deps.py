"""The loop's dependencies: its configuration and its ports."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from autoretrain.contract import Contract
from autoretrain.domain.ports import BlobStore, Clock, Ledger, Workspace
from autoretrain.settings import Settings

log = logging.getLogger("autoretrain.loop")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """The settings the loop reads, and nothing else."""

    storage_topic: str
    workspace_topic: str
    incoming_container: str = "incoming"
    quarantine_container: str = "quarantine"
    datasets_container: str = "datasets"
    # How long a worker may hold a claimed or completing record before another may take it over.
    lease: timedelta = timedelta(minutes=10)
    # Takers of one record (the first included) before it is recorded as failed with the last error.
    max_takers: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> LoopConfig:
        return cls(
            storage_topic=settings.storage_topic,
            workspace_topic=settings.workspace_topic,
            incoming_container=settings.incoming_container,
            quarantine_container=settings.quarantine_container,
            datasets_container=settings.datasets_container,
            lease=timedelta(seconds=settings.lease_seconds),
        )


@dataclass(frozen=True, slots=True)
class Deps:
    config: LoopConfig
    contract: Contract
    workspace: Workspace
    ledger: Ledger
    blobs: BlobStore
    clock: Clock = _utcnow
