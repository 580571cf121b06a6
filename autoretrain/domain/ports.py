"""The ports the loop is written against: small Protocols in the domain's own words.

No SDK type crosses a port. Adapters: `storage.AzureBlobStore`, `ledger.TableLedger`,
`workspace.local.LocalWorkspace` (and the Azure ML adapter), each chosen in `bootstrap`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

from autoretrain.domain import (
    BlobRef,
    DataVersion,
    JobMode,
    JobStatus,
    LedgerRecord,
    LedgerState,
    ListedBlob,
    Metrics,
    ModelVersion,
    Move,
    PipelineJob,
    Schedule,
    TrainingMember,
    WorkKey,
)

__all__ = ["BlobStore", "Clock", "Ledger", "Workspace"]


class Clock(Protocol):
    def __call__(self) -> datetime: ...


class BlobStore(Protocol):
    def read_head(self, ref: BlobRef, max_bytes: int) -> bytes:
        """The first `max_bytes` of exactly this blob version; BlobChangedError if it was replaced."""
        ...

    def copy_to(
        self, ref: BlobRef, container: str, name: str, metadata: Mapping[str, str], content: bytes | None = None
    ) -> BlobRef:
        """Copy exactly this blob version to container/name. A copy of the same version that is
        already there is kept and returned, so concurrent copies never overwrite each other. The
        source is never changed. `content`: this version's whole bytes, when the caller read them
        (pinned to its eTag): written as they are, without reading the source again."""
        ...

    def download_to(self, ref: BlobRef, path: Path) -> None:
        """Write exactly this blob version to a local file."""
        ...

    def read(self, container: str, name: str, max_bytes: int) -> bytes | None:
        """The first `max_bytes` of the blob's current version (one we wrote, or a job wrote at a
        path we chose); None when there is no such blob."""
        ...

    def upload(self, container: str, name: str, data: bytes) -> BlobRef: ...

    def describe(self, container: str, name: str) -> ListedBlob | None:
        """The blob's current version as a listing shows it (no content read); None if there is none."""
        ...

    def list_blobs(self, container: str) -> Iterator[ListedBlob]:
        """Every blob version in the container, page by page, from the listing alone (no content).
        A name the service cannot list is logged and left out, never a reason to list nothing."""
        ...


class Ledger(Protocol):
    def claim(
        self, blob: BlobRef, key: WorkKey, event_id: str, lease_until: datetime,
        *, attempt: int = 0, first_key: WorkKey | None = None,
    ) -> tuple[LedgerRecord, bool]:
        """Insert the record for this blob version, `claimed` under a lease, if none exists (atomic).
        Returns the record and whether this call created it."""
        ...

    def get(self, key: WorkKey) -> LedgerRecord | None: ...

    def move(self, record: LedgerRecord, move: Move) -> LedgerRecord:
        """Apply one move if the record is still as read (its etag); LedgerError otherwise, or when
        the move is not allowed from the record's state."""
        ...

    def records(self, state: LedgerState | None = None, *, job: str | None = None) -> Iterator[LedgerRecord]:
        """Every record, or those in `state`, or those naming `job` (filtered by the store, not after
        reading them all)."""
        ...

    def schedule(self) -> Schedule:
        """The jobs in flight and the versions each has as its new data (empty if none yet), with the
        etag `save_schedule` checks."""
        ...

    def save_schedule(self, schedule: Schedule) -> Schedule | None:
        """Write the schedule if it is still as read (its etag; None: the first write); the schedule as
        written, or None when another worker changed it first (read it again and decide again)."""
        ...

    def forget(self, record: LedgerRecord) -> None:
        """Delete a claim that should never have been made (its blob does not exist), if it is still
        as read (its etag); LedgerError otherwise."""
        ...


class Workspace(Protocol):
    def register_data(
        self, source: BlobRef, key: WorkKey, lineage: Mapping[str, str], content: bytes | None = None
    ) -> DataVersion:
        """Register the blob as a data asset version. The same key gives the same version.
        `content`: the blob's whole bytes, when the caller holds them (a workspace that keeps its
        own copy need not download it)."""
        ...

    def register_training_set(self, key: WorkKey, members: Sequence[TrainingMember]) -> DataVersion:
        """Register the exact, immutable data versions (oldest first, each with its snapshot) a job
        trains on as one training-set data asset version, named by `key`. The same key gives the same
        version. No call per member: what a member is comes with it."""
        ...

    def training_set_members(self, training_set: str) -> tuple[str, ...]:
        """The data versions ("name:version", oldest first) of a registered training set
        ("name:version"), read from the training set itself: which files trained a model."""
        ...

    def submit(
        self, data: DataVersion, key: WorkKey, tags: Mapping[str, str], champion: ModelVersion | None = None,
        train_last: int = 0, new_files: int = 1, mode: JobMode = JobMode.TRAIN,
    ) -> PipelineJob:
        """Submit the training pipeline on the training set `data` as job `key.job_name`, with the
        current `champion` to score on the same test rows, training on the last `train_last` files
        (0: all), the last `new_files` of them this job's new data; a second call returns the first.
        `mode` SCORE: the job trains nothing and scores `champion` alone on every row of `data`."""
        ...

    def job_status(self, job: str) -> JobStatus:
        """The job's state; JobNotFoundError when the workspace does not know it."""
        ...

    def jobs(self) -> Iterator[PipelineJob]:
        """Every pipeline run that carries our run tag, with its tags (for reconcile)."""
        ...

    def job_metrics(self, job: str) -> Metrics: ...

    def register_model(
        self, job: str, key: WorkKey, metrics: Metrics, lineage: Mapping[str, str]
    ) -> ModelVersion:
        """Register the job's model output, metrics as tags, lineage as properties. Idempotent per key."""
        ...

    def record_decision(self, model: ModelVersion, decision: str, *, tag: str = "gate") -> None:
        """Tag the model with a one-line decision: the champion gate's (tag `gate`), or, on the champion,
        the last time it held on new data and nothing was trained (tag `held`)."""
        ...

    def champion(self) -> ModelVersion | None: ...

    def promote(self, model: ModelVersion, *, replacing: ModelVersion | None) -> ModelVersion | None:
        """Make `model` the champion if `replacing` still is (None: if there is none); the promoted
        model, or None when the champion changed since it was read (the caller reads it again)."""
        ...

    # Lifecycle: a workspace that runs jobs in this process (the local one) waits for them or stops
    # them; one whose jobs run elsewhere (Azure ML) has nothing to wait for.
    def drain(self, timeout: float) -> bool:
        """Wait until the jobs this process runs have ended; False on timeout."""
        ...

    def close(self) -> None:
        """Stop what this process runs (its jobs are left to resume) and release the workspace."""
        ...
