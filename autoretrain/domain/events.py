"""The two events the loop reacts to, parsed from Event Grid or CloudEvents 1.0 JSON.

- `BlobCreated`: Microsoft.Storage.BlobCreated (a customer file landed).
- `JobFinished`: Microsoft.MachineLearningServices.RunCompleted or RunStatusChanged (our pipeline job
  ended; Azure ML calls a job a run in its events, and its keys keep Azure's spelling: runId, runTags).

Keys are matched case-insensitively (the docs' own samples spell some keys two ways) and the eTag
is accepted quoted or unquoted. Anything else raises `EventError` with a one-line message.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from autoretrain.domain import BlobRef
from autoretrain.domain.errors import EventError

__all__ = [
    "BLOB_CREATED",
    "COMMITTED_APIS",
    "RUN_COMPLETED",
    "RUN_STATUS_CHANGED",
    "BlobCreated",
    "JobFinished",
    "parse_blob_created",
    "parse_event",
    "parse_job_finished",
]

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"

# Only these storage operations mean "the blob is fully committed" (docs: event-schema-blob-storage).
COMMITTED_APIS = frozenset({"PutBlob", "PutBlockList", "FlushWithClose", "CopyBlob", "SftpCommit"})

_BLOB_SUBJECT_PREFIX = "/blobservices/default/containers/"


@dataclass(frozen=True, slots=True)
class BlobCreated:
    event_id: str
    topic: str
    subject: str
    event_time: datetime | None
    api: str
    blob: BlobRef
    url: str
    content_length: int | None
    content_type: str | None
    blob_type: str | None
    sequencer: str | None


@dataclass(frozen=True, slots=True)
class JobFinished:
    """A pipeline job ended: `job` is the event's runId, `job_tags` its runTags."""

    event_id: str
    event_type: str
    topic: str
    subject: str
    event_time: datetime | None
    experiment_id: str
    experiment_name: str
    job: str
    job_type: str
    job_status: str
    job_tags: Mapping[str, str] = field(default_factory=dict)
    job_properties: Mapping[str, str] = field(default_factory=dict)


class _Keys:
    """A read-only view of a JSON object whose keys match whatever their case."""

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self._raw = {str(k).lower(): v for k, v in raw.items()}
        self._where = where

    def opt(self, key: str) -> Any:
        return self._raw.get(key.lower())

    def text(self, key: str) -> str:
        value = self.opt(key)
        if not isinstance(value, str) or not value:
            raise EventError(f"{self._where}: '{key}' is missing or not a non-empty string.")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self.opt(key)
        return value if isinstance(value, str) and value else None


def _envelope(raw: Mapping[str, Any] | str | bytes) -> tuple[_Keys, _Keys]:
    """Both schemas' envelopes, read into one shape: (envelope with our key names, data)."""
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise EventError(f"event is not JSON: {exc.msg} at position {exc.pos}.") from None
    if isinstance(raw, list):
        if len(raw) != 1:
            raise EventError(f"expected one event, got an array of {len(raw)}; parse them one at a time.")
        raw = raw[0]
    if not isinstance(raw, Mapping):
        raise EventError(f"event is a JSON {type(raw).__name__}, not an object.")
    env = _Keys(raw, "event")
    event_id = env.opt_text("id") or "?"
    env = _Keys(raw, f"event {event_id}")
    if env.opt("specversion") is not None:
        # CloudEvents 1.0: source is the topic, type the event type, time the event time.
        mapped = {
            "id": env.opt("id"),
            "topic": env.opt("source"),
            "subject": env.opt("subject"),
            "eventType": env.opt("type"),
            "eventTime": env.opt("time"),
        }
        env = _Keys(mapped, f"event {event_id}")
    data = env.opt("data") if env.opt("data") is not None else _Keys(raw, "").opt("data")
    if not isinstance(data, Mapping):
        raise EventError(f"event {event_id}: 'data' is missing or not an object.")
    return env, _Keys(data, f"event {event_id} data")


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    # Event Grid writes up to 7 fractional digits; fromisoformat takes at most 6.
    if "." in text:
        head, _, tail = text.partition(".")
        digits = "".join(itertools.takewhile(str.isdigit, tail))
        zone = tail[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def parse_blob_created(raw: Mapping[str, Any] | str | bytes) -> BlobCreated:
    """A Microsoft.Storage.BlobCreated event, from either schema."""
    env, data = _envelope(raw)
    event_id, event_type = env.text("id"), env.text("eventType")
    if event_type != BLOB_CREATED:
        raise EventError(f"event {event_id}: type {event_type!r} is not {BLOB_CREATED}.")
    subject = env.text("subject")
    if not subject.lower().startswith(_BLOB_SUBJECT_PREFIX) or "/blobs/" not in subject:
        raise EventError(
            f"event {event_id}: subject {subject!r} is not "
            "/blobServices/default/containers/{container}/blobs/{path}."
        )
    container, _, name = subject[len(_BLOB_SUBJECT_PREFIX):].partition("/blobs/")
    if not container or not name:
        raise EventError(f"event {event_id}: subject {subject!r} names no container or no blob.")
    etag = data.text("eTag")
    length = data.opt("contentLength")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 0):
        raise EventError(f"event {event_id}: contentLength {length!r} is not a non-negative integer.")
    return BlobCreated(
        event_id=event_id,
        topic=env.text("topic"),
        subject=subject,
        event_time=_time(env.opt("eventTime")),
        api=data.text("api"),
        blob=BlobRef(container=container, name=name, etag=etag),
        url=data.opt_text("url") or "",
        content_length=length,
        content_type=data.opt_text("contentType"),
        blob_type=data.opt_text("blobType"),
        sequencer=data.opt_text("sequencer"),
    )


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise EventError(f"{where} is not an object.")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def parse_job_finished(raw: Mapping[str, Any] | str | bytes) -> JobFinished:
    """A RunCompleted or RunStatusChanged event of an Azure ML workspace, from either schema."""
    env, data = _envelope(raw)
    event_id, event_type = env.text("id"), env.text("eventType")
    if event_type not in (RUN_COMPLETED, RUN_STATUS_CHANGED):
        raise EventError(f"event {event_id}: type {event_type!r} is not {RUN_COMPLETED} or {RUN_STATUS_CHANGED}.")
    status = data.opt_text("runStatus")
    if event_type == RUN_STATUS_CHANGED and status is None:
        raise EventError(f"event {event_id}: RunStatusChanged without 'runStatus'.")
    return JobFinished(
        event_id=event_id,
        event_type=event_type,
        topic=env.text("topic"),
        subject=env.text("subject"),
        event_time=_time(env.opt("eventTime")),
        experiment_id=data.opt_text("experimentId") or "",
        experiment_name=data.opt_text("experimentName") or "",
        job=data.text("runId"),
        job_type=data.opt_text("runType") or "",
        job_status=status or "Completed",
        job_tags=_str_map(data.opt("runTags"), f"event {event_id} data.runTags"),
        job_properties=_str_map(data.opt("runProperties"), f"event {event_id} data.runProperties"),
    )


def parse_event(raw: Mapping[str, Any] | str | bytes) -> BlobCreated | JobFinished:
    """Either event, chosen by its type."""
    env, _ = _envelope(raw)
    event_type = env.opt_text("eventType")
    if event_type == BLOB_CREATED:
        return parse_blob_created(raw)
    if event_type in (RUN_COMPLETED, RUN_STATUS_CHANGED):
        return parse_job_finished(raw)
    raise EventError(f"event {env.opt_text('id') or '?'}: type {event_type!r} is not one autoretrain handles.")
