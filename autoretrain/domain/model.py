"""The domain's own types: frozen, typed, free of any SDK.

One blob version (container + name + eTag) is one unit of work. Its `WorkKey` is derived from
those three, never random, so the data version, the job name and the model version that follow
from it are the same however often an event is delivered.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = [
    "JOB_OUTPUTS",
    "JOB_TAG",
    "MODE_TAG",
    "NO_CHAMPION_PATH",
    "BlobRef",
    "DataVersion",
    "JobMode",
    "JobState",
    "JobStatus",
    "ListedBlob",
    "Metrics",
    "ModelVersion",
    "PipelineJob",
    "TrainingMember",
    "WorkKey",
    "job_output_path",
]

# The run tag that marks our pipeline runs. Event Grid advanced filters cannot use keys with a
# dot, so it is a plain word: the subscription filters on `data.runTags.autoretrain`.
JOB_TAG = "autoretrain"
# The tag that says what a job of ours does (`JobMode`); a job without it trains (it was made before).
MODE_TAG = "autoretrain-mode"

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


_JOB_PREFIX = "autoretrain-"


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

    @classmethod
    def for_batch(cls, keys: Sequence[WorkKey]) -> WorkKey:
        """The key of one job whose new data is these blob versions: the one key itself for one (a job
        of one file keeps its file's name), else derived from all of them in any order, so the same
        versions always make the same job, and a redelivered or reconciled submission finds it."""
        unique = sorted({key.value for key in keys})
        if not unique:
            raise ValueError("a job needs at least one blob version")
        if len(unique) == 1:
            return cls(unique[0])
        return cls(hashlib.sha256(("batch\n" + "\n".join(unique)).encode()).hexdigest()[:24])

    @classmethod
    def of_job(cls, job: str) -> WorkKey:
        """The key a job was named by (`job_name`); ValueError for a job name that is not ours."""
        return cls(job.removeprefix(_JOB_PREFIX)) if job.startswith(_JOB_PREFIX) else cls(job)

    @property
    def job_name(self) -> str:
        """The pipeline job's name: deterministic, so a second submit finds the first."""
        return f"{_JOB_PREFIX}{self.value}"

    def scoring(self) -> WorkKey:
        """The key of the job that scores the champion on this blob version alone (the contract's
        `retrain_when: champion_slips`), as deterministic as the version's own."""
        return WorkKey(hashlib.sha256(f"{self.value}\nscore".encode()).hexdigest()[:24])

    def attempt(self, number: int) -> WorkKey:
        """The key of attempt `number` of this blob version, this key being attempt 0's: its `number`th
        explicit retrain (`autoretrain retrain`), with its own job and model, and as deterministic as
        the first, so a retried retrain finds itself. (The hashed text says "retrain": existing ledgers
        and job names derive from it.)"""
        if number < 1:
            raise ValueError(f"attempt number {number} must be 1 or more")
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


class JobMode(StrEnum):
    """What a pipeline job does (the pipeline's `mode` input): train a challenger and score the champion
    beside it, or score the champion alone on new data (nothing is trained or registered)."""

    TRAIN = "train"
    SCORE = "score"


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
