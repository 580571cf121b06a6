"""Hand-written fakes of our own ports, for unit tests of the loop. They record what they were asked."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from autoretrain.domain import (
    JOB_TAG,
    BlobRef,
    DataVersion,
    JobMode,
    JobState,
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
from autoretrain.domain.errors import BlobChangedError, BlobMissingError, JobNotFoundError, LedgerError

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@dataclass
class FakeBlobStore:
    """Blobs as {(container, name): (etag, bytes, metadata)}; eTags change on every write."""

    blobs: dict[tuple[str, str], tuple[str, bytes, dict[str, str]]] = field(default_factory=dict)
    modified: dict[tuple[str, str], datetime] = field(default_factory=dict)
    reads: list[BlobRef] = field(default_factory=list)  # every read of a blob version's bytes
    _etags: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def put(self, container: str, name: str, data: bytes, metadata: Mapping[str, str] | None = None) -> BlobRef:
        etag = f"0x8D{next(self._etags):012X}"
        self.blobs[(container, name)] = (etag, data, dict(metadata or {}))
        return BlobRef(container, name, etag)

    def _pinned(self, ref: BlobRef) -> bytes:
        self.reads.append(ref)
        current = self.blobs.get((ref.container, ref.name))
        if current is None:
            raise BlobMissingError(f"{ref.path}: no such blob (deleted, or never there).")
        if current[0] != ref.etag:
            raise BlobChangedError(f"{ref.path}: version {ref.etag} was replaced or deleted.")
        return current[1]

    def read_head(self, ref: BlobRef, max_bytes: int) -> bytes:
        return self._pinned(ref)[:max_bytes]

    def copy_to(
        self, ref: BlobRef, container: str, name: str, metadata: Mapping[str, str], content: bytes | None = None
    ) -> BlobRef:
        existing = self.blobs.get((container, name))
        if existing is not None and existing[2].get("source_etag") == ref.etag:
            return BlobRef(container, name, existing[0])
        data = self._pinned(ref) if content is None else content
        return self.put(container, name, data, {**metadata, "source_etag": ref.etag})

    def download_to(self, ref: BlobRef, path: Path) -> None:
        path.write_bytes(self._pinned(ref))

    def describe(self, container: str, name: str) -> ListedBlob | None:
        current = self.blobs.get((container, name))
        if current is None:
            return None
        modified = self.modified.get((container, name), T0)
        return ListedBlob(BlobRef(container, name, current[0]), len(current[1]), modified)

    def read(self, container: str, name: str, max_bytes: int) -> bytes | None:
        current = self.blobs.get((container, name))
        return None if current is None else current[1][:max_bytes]

    def upload(self, container: str, name: str, data: bytes) -> BlobRef:
        return self.put(container, name, data)

    def list_blobs(self, container: str) -> Iterator[ListedBlob]:
        for (where, name), (etag, data, _) in sorted(self.blobs.items()):
            if where == container:
                yield ListedBlob(BlobRef(container, name, etag), len(data), self.modified.get((container, name), T0))


@dataclass
class FakeLedger:
    """The ledger's contract: atomic claim, etag-matched moves, allowed moves only."""

    rows: dict[str, LedgerRecord] = field(default_factory=dict)
    scheduled: Schedule = field(default_factory=Schedule)
    now: datetime = T0
    _etags: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def claim(
        self, blob: BlobRef, key: WorkKey, event_id: str, lease_until: datetime,
        *, attempt: int = 0, first_key: WorkKey | None = None,
    ) -> tuple[LedgerRecord, bool]:
        if key.value in self.rows:
            return self.rows[key.value], False
        record = replace(
            LedgerRecord.claimed(blob, key, event_id, self.now, lease_until, attempt=attempt, first_key=first_key),
            etag=str(next(self._etags)),
        )
        self.rows[key.value] = record
        return record, True

    def get(self, key: WorkKey) -> LedgerRecord | None:
        return self.rows.get(key.value)

    def move(self, record: LedgerRecord, move: Move) -> LedgerRecord:
        current = self.rows[record.key.value]
        if current.etag != record.etag:
            raise LedgerError(f"{record.key} changed since it was read")
        try:
            moved = current.after(move, self.now)
        except ValueError as exc:
            raise LedgerError(str(exc)) from None
        updated = replace(moved, etag=str(next(self._etags)))
        self.rows[record.key.value] = updated
        return updated

    def records(self, state: LedgerState | None = None, *, job: str | None = None) -> Iterator[LedgerRecord]:
        return iter([r for r in self.rows.values()
                     if (state is None or r.state is state) and (job is None or r.job == job)])

    def schedule(self) -> Schedule:
        return self.scheduled

    def save_schedule(self, schedule: Schedule) -> Schedule | None:
        if schedule.etag != self.scheduled.etag:
            return None
        self.scheduled = Schedule(dict(schedule.jobs), str(next(self._etags)), dict(schedule.since))
        return self.scheduled

    def forget(self, record: LedgerRecord) -> None:
        current = self.rows.get(record.key.value)
        if current is None or current.etag != record.etag:
            raise LedgerError(f"{record.key} changed since it was read")
        del self.rows[record.key.value]


@dataclass
class FakeWorkspace:
    """Records every call; jobs finish when the test says so."""

    registered_data: list[tuple[BlobRef, WorkKey]] = field(default_factory=list)
    submitted: list[tuple[DataVersion, WorkKey, dict[str, str]]] = field(default_factory=list)
    statuses: dict[str, JobStatus] = field(default_factory=dict)
    metrics: dict[str, Metrics] = field(default_factory=dict)
    models: dict[str, ModelVersion] = field(default_factory=dict)
    promoted: list[str] = field(default_factory=list)
    data_contents: list[bytes | None] = field(default_factory=list)  # the bytes register_data was handed
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    champions: dict[str, str | None] = field(default_factory=dict)  # job -> the champion it scores
    training_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # work key -> its versions
    snapshots: dict[str, tuple[str, ...]] = field(default_factory=dict)  # work key -> its members' snapshots
    train_last: dict[str, int] = field(default_factory=dict)  # job -> how many of them it trains on
    new_files: dict[str, int] = field(default_factory=dict)  # job -> how many of them are its new data
    modes: dict[str, JobMode] = field(default_factory=dict)  # job -> what it does
    model_tags: dict[str, dict[str, str]] = field(default_factory=dict)  # model version -> other decisions
    decisions: dict[str, str] = field(default_factory=dict)  # model version -> the gate's decision
    closed: bool = False

    def register_data(
        self, source: BlobRef, key: WorkKey, lineage: Mapping[str, str], content: bytes | None = None
    ) -> DataVersion:
        self.registered_data.append((source, key))
        self.data_contents.append(content)
        versions: dict[str, int] = {}  # the same key gives the same version, as the port says
        for _, registered in self.registered_data:
            versions.setdefault(registered.value, len(versions) + 1)
        return DataVersion("autoretrain-data", str(versions[key.value]), f"blob://{source.path}")

    def register_training_set(self, key: WorkKey, members: Sequence[TrainingMember]) -> DataVersion:
        self.training_sets.setdefault(key.value, tuple(m.data_version for m in members))
        self.snapshots.setdefault(key.value, tuple(m.snapshot for m in members))
        version = list(self.training_sets).index(key.value) + 1
        return DataVersion("autoretrain-data-trainset", str(version), f"trainset://{key}")

    def submit(
        self, data: DataVersion, key: WorkKey, tags: Mapping[str, str], champion: ModelVersion | None = None,
        train_last: int = 0, new_files: int = 1, mode: JobMode = JobMode.TRAIN,
    ) -> PipelineJob:
        if mode is JobMode.SCORE and champion is None:
            raise AssertionError("a scoring job needs the champion it scores")
        self.submitted.append((data, key, dict(tags)))
        self.modes.setdefault(key.job_name, mode)
        self.new_files.setdefault(key.job_name, new_files)
        self.champions.setdefault(key.job_name, champion.version if champion else None)
        self.train_last.setdefault(key.job_name, train_last)
        self.statuses.setdefault(key.job_name, JobStatus(key.job_name, JobState.QUEUED))
        self.tags.setdefault(key.job_name, dict(tags))
        return PipelineJob(key.job_name, "autoretrain", self.statuses[key.job_name].state, self.tags[key.job_name])

    def finish(self, job: str, state: JobState, metrics: Metrics | None = None, **status: str) -> None:
        self.statuses[job] = JobStatus(job, state, **status)
        if metrics is not None:
            self.metrics[job] = metrics

    def drain(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def training_set_members(self, training_set: str) -> tuple[str, ...]:
        _, _, version = training_set.rpartition(":")
        return list(self.training_sets.values())[int(version) - 1]

    def job_status(self, job: str) -> JobStatus:
        if job not in self.statuses:
            raise JobNotFoundError(f"job {job!r} does not exist")
        return self.statuses[job]

    def jobs(self) -> Iterator[PipelineJob]:
        for name, status in list(self.statuses.items()):
            tags = self.tags.get(name, {})
            if JOB_TAG in tags:
                yield PipelineJob(name, "autoretrain", status.state, tags)

    def job_metrics(self, job: str) -> Metrics:
        return self.metrics[job]

    def register_model(self, job: str, key: WorkKey, metrics: Metrics, lineage: Mapping[str, str]) -> ModelVersion:
        if key.value not in self.models:
            self.models[key.value] = ModelVersion(
                "autoretrain-model", str(len(self.models) + 1), job, metrics, dict(lineage)
            )
        return self.models[key.value]

    def record_decision(self, model: ModelVersion, decision: str, *, tag: str = "gate") -> None:
        if tag == "gate":
            self.decisions[model.version] = decision
        else:
            self.model_tags.setdefault(model.version, {})[tag] = decision

    def champion(self) -> ModelVersion | None:
        return next((m for m in self.models.values() if m.champion), None)

    def promote(self, model: ModelVersion, *, replacing: ModelVersion | None) -> ModelVersion | None:
        current = self.champion()
        if (current.version if current else None) != (replacing.version if replacing else None):
            return None
        for key, other in self.models.items():
            self.models[key] = replace(other, champion=other.version == model.version)
        self.promoted.append(model.version)
        return next(m for m in self.models.values() if m.version == model.version)
