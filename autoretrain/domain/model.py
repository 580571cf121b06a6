"""The domain's own types: frozen, typed, free of any SDK.

One blob version (container + name + eTag) is one unit of work. Its `WorkKey` is derived from
those three, never random, so the data version, the job name and the model version that follow
from it are the same however often an event is delivered.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = [
    "ALLOWED_MOVES",
    "JOB_OUTPUTS",
    "JOB_TAG",
    "NO_CHAMPION_PATH",
    "BlobRef",
    "DataVersion",
    "Fail",
    "Finish",
    "JobState",
    "JobStatus",
    "LedgerRecord",
    "LedgerState",
    "ListedBlob",
    "Metrics",
    "ModelVersion",
    "Move",
    "Moved",
    "PipelineJob",
    "Quarantine",
    "Release",
    "Skip",
    "StartCompleting",
    "Submit",
    "TakeOver",
    "TrainingMember",
    "WorkKey",
    "job_output_path",
]

# The run tag that marks our pipeline runs. Event Grid advanced filters cannot use keys with a
# dot, so it is a plain word: the subscription filters on `data.runTags.autoretrain`.
JOB_TAG = "autoretrain"

_KEY = re.compile(r"^[0-9a-f]{24}$")
_COPY_NAME_MAX = 250


@dataclass(frozen=True, slots=True)
class BlobRef:
    """One version of one blob: the eTag pins the content."""

    container: str
    name: str
    etag: str

    def __post_init__(self) -> None:
        # Event Grid sends the eTag quoted in some samples and unquoted in others; the
        # storage SDK quotes it. One spelling keeps keys stable.
        object.__setattr__(self, "etag", self.etag.strip().strip('"'))

    @property
    def path(self) -> str:
        return f"{self.container}/{self.name}"

    @property
    def addressable(self) -> bool:
        """False for a name with a '.' or '..' segment: a URL normalises those away, so the blob
        cannot be read back by this name (Azure answers 404, Azurite a signature error)."""
        return not any(part in (".", "..") for part in self.name.replace("\\", "/").split("/"))

    def copy_name(self, key: WorkKey) -> str:
        """Where copies of this blob go in our containers: `<key>/<name>`, with the name made safe.

        Blob names are the customer's: a `.` or `..` segment could be normalised away in a URL and
        land the copy outside its key's folder, so such segments (and control characters) are
        replaced.
        """
        parts = []
        for part in self.name.replace("\\", "/").split("/"):
            part = "".join(ch if ch.isprintable() else "_" for ch in part)
            parts.append("_" if part in ("", ".", "..") else part)
        name = "/".join(parts)
        if len(name) > _COPY_NAME_MAX:
            # Blob names stop at 1,024 characters; the key already makes the copy unique, so the
            # middle of a long name can go (the end keeps the file's extension).
            name = f"{name[:160]}...{name[-80:]}"
        return f"{key.value}/{name}"

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True, slots=True)
class ListedBlob:
    """One blob version as a container listing shows it: no content is read."""

    ref: BlobRef
    size: int
    last_modified: datetime
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class WorkKey:
    """What makes the work new: the blob's path and eTag, hashed to a short, name-safe token."""

    value: str

    def __post_init__(self) -> None:
        if not _KEY.match(self.value):
            raise ValueError(f"work key {self.value!r} is not 24 lowercase hex digits")

    @classmethod
    def for_blob(cls, ref: BlobRef) -> WorkKey:
        digest = hashlib.sha256(f"{ref.container}/{ref.name}\n{ref.etag}".encode()).hexdigest()
        return cls(digest[:24])

    @property
    def job_name(self) -> str:
        """The pipeline job's name: deterministic, so a second submit finds the first."""
        return f"autoretrain-{self.value}"

    def retrain(self, number: int) -> WorkKey:
        """The key of the `number`th explicit retrain of this blob version (`autoretrain retrain`):
        its own job and model, and as deterministic as the first, so a retried retrain finds itself."""
        if number < 1:
            raise ValueError(f"retrain number {number} must be 1 or more")
        return WorkKey(hashlib.sha256(f"{self.value}\nretrain {number}".encode()).hexdigest()[:24])

    def __str__(self) -> str:
        return self.value


# Where a job's pipeline outputs live, relative to a datastore (Azure ML: bound at submission) or to
# the local workspace's folder: one rule for both adapters, so nothing waits for the service to say.
JOB_OUTPUTS = "autoretrain/jobs"
# The "no champion yet" marker folder (datacontract.NO_CHAMPION_FILES), bound for a first model.
NO_CHAMPION_PATH = "autoretrain/no-champion"


def job_output_path(job: str, output: str) -> str:
    """The folder of pipeline output `output` of job `job`: autoretrain/jobs/<job>/<output>."""
    return f"{JOB_OUTPUTS}/{job}/{output}"


@dataclass(frozen=True, slots=True)
class DataVersion:
    name: str
    version: str
    uri: str


@dataclass(frozen=True, slots=True)
class TrainingMember:
    """One accepted data version of a training set: its "name:version", and its snapshot, the blob in
    the datasets container that holds its bytes (`BlobRef.copy_name` of its blob version). Both are
    known from the ledger, so a training set is registered without asking the workspace about each."""

    data_version: str
    snapshot: str


@dataclass(frozen=True, slots=True)
class PipelineJob:
    name: str
    experiment: str
    status: JobState
    tags: Mapping[str, str] = field(default_factory=dict)


class JobState(StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELED)


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A run's state, and for a failed one the step that failed and where its log is.

    `rejected` is set when the step failed because the new data file breaks the contract (it
    exited with `datacontract.DATA_ERROR_EXIT`): the file's fault, which the loop quarantines;
    it holds the step's one-line reason."""

    name: str
    state: JobState
    failed_step: str | None = None
    error: str | None = None
    log: str | None = None
    rejected: str | None = None


@dataclass(frozen=True, slots=True)
class Metrics:
    """What evaluate wrote: the new model's numbers, which one decides and in which direction, and
    the champion's numbers on the same test rows (None for a first model)."""

    values: Mapping[str, float]
    primary: str
    greater_is_better: bool = True
    champion: Mapping[str, float] | None = None
    champion_error: str | None = None
    test_rows: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        if self.champion is not None:
            object.__setattr__(self, "champion", MappingProxyType(dict(self.champion)))
        if self.primary not in self.values:
            raise ValueError(f"primary metric {self.primary!r} is not among {sorted(self.values)}")

    @property
    def primary_value(self) -> float:
        return self.values[self.primary]

    @property
    def champion_value(self) -> float | None:
        return self.champion.get(self.primary) if self.champion else None

    def gain_over_champion(self) -> float | None:
        """How much better than the champion on the same rows (negative: worse); None without one."""
        theirs = self.champion_value
        if theirs is None:
            return None
        return self.primary_value - theirs if self.greater_is_better else theirs - self.primary_value

    def reaches(self, floor: float) -> bool:
        return self.primary_value >= floor if self.greater_is_better else self.primary_value <= floor

    def beats(self, other: Metrics | None) -> bool:
        """True when this is better than `other` on the primary metric (or there is no other)."""
        if other is None or other.primary not in self.values:
            return True
        mine, theirs = self.primary_value, other.values.get(self.primary, other.primary_value)
        return mine > theirs if self.greater_is_better else mine < theirs

    def as_tags(self) -> dict[str, str]:
        """A model's tags: its metrics, the champion's on the same test rows, and how many rows."""
        tags = {name: repr(value) for name, value in self.values.items()}
        tags.update({f"champion_{name}": repr(value) for name, value in (self.champion or {}).items()})
        if self.test_rows is not None:
            tags["test_rows"] = str(self.test_rows)
        return tags

    def to_json(self) -> str:
        return json.dumps(
            {
                "primary": self.primary, "greater_is_better": self.greater_is_better, "values": dict(self.values),
                "champion": dict(self.champion) if self.champion is not None else None,
                "champion_error": self.champion_error, "test_rows": self.test_rows,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Metrics:
        raw = json.loads(text)
        champion = raw.get("champion")
        return cls(
            values={k: float(v) for k, v in raw["values"].items()},
            primary=raw["primary"],
            greater_is_better=bool(raw.get("greater_is_better", True)),
            champion={k: float(v) for k, v in champion.items()} if champion else None,
            champion_error=raw.get("champion_error"),
            test_rows=raw.get("test_rows"),
        )

    @classmethod
    def from_evaluate(cls, raw: Mapping[str, Any]) -> Metrics:
        """evaluate's metrics.json."""
        champion = raw.get("champion_metrics")
        return cls(
            values={k: float(v) for k, v in raw["metrics"].items()},
            primary=raw["primary_metric"],
            greater_is_better=bool(raw.get("greater_is_better", True)),
            champion={k: float(v) for k, v in champion.items()} if champion else None,
            champion_error=raw.get("champion_error"),
            test_rows=int(raw["test_rows"]) if raw.get("test_rows") is not None else None,
        )


@dataclass(frozen=True, slots=True)
class ModelVersion:
    name: str
    version: str
    job: str
    metrics: Metrics
    properties: Mapping[str, str] = field(default_factory=dict)
    champion: bool = False


class LedgerState(StrEnum):
    """Where one blob version stands.

    claimed → quarantined | skipped | submitted | failed;
    submitted → completing → done | failed | quarantined (prep found the file breaks the contract).
    `claimed` and `completing` are held under a lease: work in progress that another worker may
    take over once the lease has run out (its holder crashed).
    """

    CLAIMED = "claimed"
    QUARANTINED = "quarantined"
    SKIPPED = "skipped"
    SUBMITTED = "submitted"
    COMPLETING = "completing"
    DONE = "done"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (LedgerState.QUARANTINED, LedgerState.SKIPPED, LedgerState.DONE, LedgerState.FAILED)

    @property
    def leased(self) -> bool:
        return self in (LedgerState.CLAIMED, LedgerState.COMPLETING)


ALLOWED_MOVES: Mapping[LedgerState, frozenset[LedgerState]] = MappingProxyType(
    {
        LedgerState.CLAIMED: frozenset(
            {LedgerState.CLAIMED, LedgerState.QUARANTINED, LedgerState.SKIPPED, LedgerState.SUBMITTED,
             LedgerState.FAILED}
        ),
        LedgerState.SUBMITTED: frozenset({LedgerState.COMPLETING}),
        LedgerState.COMPLETING: frozenset(
            {LedgerState.COMPLETING, LedgerState.DONE, LedgerState.FAILED, LedgerState.QUARANTINED}
        ),
        LedgerState.QUARANTINED: frozenset(),
        LedgerState.SKIPPED: frozenset(),
        LedgerState.DONE: frozenset(),
        LedgerState.FAILED: frozenset(),
    }
)


# One frozen object per ledger move: what changes is named, nothing else can.


@dataclass(frozen=True, slots=True)
class TakeOver:
    """A worker takes over leased work whose holder is gone (its lease ran out): one more attempt."""

    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Release:
    """The holder gives its lease back after a transient failure, so a retry may start at once."""

    reason: str


@dataclass(frozen=True, slots=True)
class Quarantine:
    reason: str


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str


@dataclass(frozen=True, slots=True)
class Submit:
    data_version: str
    job: str
    champion: str | None = None  # the champion version the job scores the new model against
    training_set: str | None = None  # the training-set data version the job trains on
    members: int = 0  # how many data versions it holds (the job tests on all of them)
    trained_on: int = 0  # how many of them, the newest, the model trains on (the contract's window)


@dataclass(frozen=True, slots=True)
class StartCompleting:
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Finish:
    model_version: str
    metrics: Metrics
    promoted: bool
    decision: str = ""  # the champion gate's one line: what it compared and what it decided


@dataclass(frozen=True, slots=True)
class Fail:
    reason: str


Move = TakeOver | Release | Quarantine | Skip | Submit | StartCompleting | Finish | Fail


HISTORY_LIMIT = 40  # moves kept per record (a table entity holds 64 KiB)


@dataclass(frozen=True, slots=True)
class Moved:
    """One move in a record's timeline: what it became, when, and a short note."""

    state: str  # the state after the move, or taken_over / released for a lease
    at: datetime
    note: str = ""

    @classmethod
    def of(cls, move: Move, state: LedgerState, now: datetime, attempts: int) -> Moved:
        match move:
            case TakeOver():
                return cls("taken_over", now, f"attempt {attempts + 1}")
            case Release(reason):
                return cls("released", now, reason[:200])
            case Submit(data_version, job, _, _, members, trained_on):
                return cls(state.value, now, f"{data_version}, job {job}, trains on {trained_on} of {members}")
            case Finish(model_version, _, promoted, _):
                return cls(state.value, now, f"{model_version}{', promoted' if promoted else ''}")
            case Quarantine(reason) | Skip(reason) | Fail(reason):
                return cls(state.value, now, reason[:200])
        return cls(state.value, now)

    def as_row(self) -> dict[str, str]:
        return {"state": self.state, "at": self.at.isoformat(), "note": self.note}

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> Moved:
        return cls(row["state"], datetime.fromisoformat(row["at"]), row.get("note", ""))


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One attempt of a blob version, as the ledger keeps it: attempt 0 is its own run (its event), and
    attempt n its nth `autoretrain retrain` (`retrain`, `retrain_of`). `etag` is the ledger row's own,
    for optimistic updates.

    `lease_until` bounds how long the holder of a `claimed` or `completing` record may take before
    another worker takes it over; `attempts` counts the takers, the first included. A retrain is a
    record of its own (key `origin.retrain(n)`), so the ledger keeps every run of a blob version.
    """

    key: WorkKey
    blob: BlobRef
    state: LedgerState
    event_id: str
    created: datetime
    updated: datetime
    data_version: str | None = None
    job: str | None = None
    model_version: str | None = None
    metrics: Metrics | None = None
    promoted: bool | None = None
    reason: str | None = None
    lease_until: datetime | None = None
    attempts: int = 1
    champion: str | None = None
    decision: str | None = None
    # The training set the job reads (its MLTable names the files) and two counts, never the list of
    # its members: a Table property holds 64 KiB, and that list grows with every accepted file.
    training_set: str | None = None
    members: int = 0
    trained_on: int = 0
    retrain: int = 0  # 0: the blob version's own run; n: its nth `autoretrain retrain`
    retrain_of: WorkKey | None = None  # for a retrain: the key of the blob version's own record
    history: tuple[Moved, ...] = ()  # every move, oldest first: the record's timeline
    etag: str | None = None

    @classmethod
    def claimed(
        cls, blob: BlobRef, key: WorkKey, event_id: str, now: datetime, lease_until: datetime,
        *, retrain: int = 0, retrain_of: WorkKey | None = None,
    ) -> LedgerRecord:
        """A new record, as a claim writes it: the first entry of its timeline."""
        note = f"retrain {retrain}" if retrain else f"event {event_id}"
        return cls(
            key=key, blob=blob, state=LedgerState.CLAIMED, event_id=event_id, created=now, updated=now,
            lease_until=lease_until, retrain=retrain, retrain_of=retrain_of,
            history=(Moved(LedgerState.CLAIMED.value, now, note),),
        )

    @property
    def origin(self) -> WorkKey:
        """The blob version's own work key, which every retrain of it shares: its data snapshot's."""
        return self.retrain_of or self.key

    def lease_expired(self, now: datetime) -> bool:
        return self.lease_until is None or self.lease_until <= now

    def after(self, move: Move, now: datetime) -> LedgerRecord:
        """This record once `move` is applied at `now`; ValueError when the move is not allowed."""
        changes: dict[str, Any]
        match move:
            case TakeOver(lease_until):
                state, changes = self.state, {"lease_until": lease_until, "attempts": self.attempts + 1}
            case Release(reason):
                state, changes = self.state, {"lease_until": None, "reason": reason}
            case Quarantine(reason):
                state, changes = LedgerState.QUARANTINED, {"reason": reason}
            case Skip(reason):
                state, changes = LedgerState.SKIPPED, {"reason": reason}
            case Submit(data_version, job, champion, training_set, members, trained_on):
                state, changes = LedgerState.SUBMITTED, {
                    "data_version": data_version, "job": job, "champion": champion, "reason": None,
                    "training_set": training_set, "members": members, "trained_on": trained_on,
                }
            case StartCompleting(lease_until):
                state, changes = LedgerState.COMPLETING, {"lease_until": lease_until, "attempts": 1}
            case Finish(model_version, metrics, promoted, decision):
                state, changes = LedgerState.DONE, {
                    "model_version": model_version, "metrics": metrics, "promoted": promoted,
                    "decision": decision or None, "reason": None,
                }
            case Fail(reason):
                state, changes = LedgerState.FAILED, {"reason": reason}
        if isinstance(move, TakeOver | Release) and not self.state.leased:
            raise ValueError(f"ledger: {self.key} is {self.state.value}, which holds no lease.")
        if state not in ALLOWED_MOVES[self.state]:
            raise ValueError(f"ledger: {self.key} cannot move from {self.state.value} to {state.value}.")
        if state.final:
            changes["lease_until"] = None
        changes["history"] = (*self.history, Moved.of(move, state, now, self.attempts))[-HISTORY_LIMIT:]
        return replace(self, state=state, updated=now, etag=None, **changes)

    def as_row(self) -> dict[str, Any]:
        """A flat, JSON-friendly view: what `autoretrain status --json` prints."""
        return {
            "blob": self.blob.path,
            "etag": self.blob.etag,
            "key": self.key.value,
            "state": self.state.value,
            "data_version": self.data_version,
            "job": self.job,
            "model_version": self.model_version,
            "metrics": dict(self.metrics.values) if self.metrics else None,
            "primary_metric": self.metrics.primary if self.metrics else None,
            "promoted": self.promoted,
            "champion_metrics": dict(self.metrics.champion) if self.metrics and self.metrics.champion else None,
            "test_rows": self.metrics.test_rows if self.metrics else None,
            "decision": self.decision,
            "training_set": self.training_set,
            "members": self.members,
            "trained_on": self.trained_on,
            "reason": self.reason,
            "attempts": self.attempts,
            "retrain": self.retrain,
            "history": [m.as_row() for m in self.history],
            "retrain_of": self.retrain_of.value if self.retrain_of else None,
            "lease_until": self.lease_until.isoformat() if self.lease_until else None,
            "created": self.created.isoformat(),
            "updated": self.updated.isoformat(),
        }
