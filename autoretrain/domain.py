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
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = [
    "RUN_TAG",
    "BlobRef",
    "DataVersion",
    "LedgerRecord",
    "LedgerState",
    "Metrics",
    "ModelVersion",
    "PipelineRun",
    "RunState",
    "RunStatus",
    "WorkKey",
]

# The run tag that marks our pipeline runs. Event Grid advanced filters cannot use keys with a
# dot, so it is a plain word: the subscription filters on `data.runTags.autoretrain`.
RUN_TAG = "autoretrain"

_KEY = re.compile(r"^[0-9a-f]{24}$")


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
        return f"{key.value}/{'/'.join(parts)}"

    def __str__(self) -> str:
        return self.path


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

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class DataVersion:
    name: str
    version: str
    uri: str


@dataclass(frozen=True, slots=True)
class PipelineRun:
    name: str
    experiment: str
    status: RunState


class RunState(StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def terminal(self) -> bool:
        return self in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELED)


@dataclass(frozen=True, slots=True)
class RunStatus:
    """A run's state, and for a failed one the step that failed and where its log is."""

    name: str
    state: RunState
    failed_step: str | None = None
    error: str | None = None
    log: str | None = None


@dataclass(frozen=True, slots=True)
class Metrics:
    """What evaluate wrote: the numbers, and which one decides and in which direction."""

    values: Mapping[str, float]
    primary: str
    greater_is_better: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        if self.primary not in self.values:
            raise ValueError(f"primary metric {self.primary!r} is not among {sorted(self.values)}")

    @property
    def primary_value(self) -> float:
        return self.values[self.primary]

    def beats(self, other: Metrics | None) -> bool:
        """True when this is better than `other` on the primary metric (or there is no other)."""
        if other is None or other.primary not in self.values:
            return True
        mine, theirs = self.primary_value, other.values.get(self.primary, other.primary_value)
        return mine > theirs if self.greater_is_better else mine < theirs

    def to_json(self) -> str:
        return json.dumps(
            {"primary": self.primary, "greater_is_better": self.greater_is_better, "values": dict(self.values)},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Metrics:
        raw = json.loads(text)
        return cls(
            values={k: float(v) for k, v in raw["values"].items()},
            primary=raw["primary"],
            greater_is_better=bool(raw.get("greater_is_better", True)),
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
    """Where one blob version stands. claimed → quarantined | skipped | submitted → done | failed."""

    CLAIMED = "claimed"
    QUARANTINED = "quarantined"
    SKIPPED = "skipped"
    SUBMITTED = "submitted"
    DONE = "done"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (LedgerState.QUARANTINED, LedgerState.SKIPPED, LedgerState.DONE, LedgerState.FAILED)


ALLOWED_MOVES: Mapping[LedgerState, frozenset[LedgerState]] = MappingProxyType(
    {
        LedgerState.CLAIMED: frozenset(
            {LedgerState.QUARANTINED, LedgerState.SKIPPED, LedgerState.SUBMITTED, LedgerState.FAILED,
             LedgerState.DONE}
        ),
        LedgerState.SUBMITTED: frozenset({LedgerState.DONE, LedgerState.FAILED}),
        LedgerState.QUARANTINED: frozenset(),
        LedgerState.SKIPPED: frozenset(),
        LedgerState.DONE: frozenset(),
        LedgerState.FAILED: frozenset(),
    }
)


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One blob version's row in the ledger. `etag` is the ledger row's own, for optimistic updates."""

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
    etag: str | None = None

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
            "reason": self.reason,
            "created": self.created.isoformat(),
            "updated": self.updated.isoformat(),
        }
