"""A local Event Grid: webhook delivery with retries and dead-lettering, and a Blob Storage source.

`EventGridDelivery` posts each event to its webhook as Event Grid does (a JSON array of one event,
`aeg-event-type: Notification`): only 200-204 count as delivered; other answers are retried on a
backoff schedule (seconds here, minutes in Azure); 400, 401, 403 and 413 are dead-lettered at once,
as Event Grid does for webhooks when dead-lettering is on; after the last attempt the event is
written to `<home>/deadletter/` with the keys of Event Grid's dead-letter record. Delivery is at
least once, so a receiver may see an event twice.

`BlobWatcher` stands in for Blob Storage's Event Grid integration, which Azurite lacks: it polls a
container and publishes one `Microsoft.Storage.BlobCreated` event, in the real schema, for each blob
version (name + eTag) it has not announced yet. What it announced is kept in a small state file so
a restart does not announce everything again.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob import BlobServiceClient

from autoretrain.domain import ListedBlob
from autoretrain.errors import ConfigError, StorageError
from autoretrain.settings import LOCAL_STORAGE_TOPIC
from autoretrain.storage import AzureBlobStore, client_options

__all__ = [
    "BLOB_CREATED",
    "DEFAULT_RETRY_SCHEDULE",
    "NO_RETRY_STATUSES",
    "BlobWatcher",
    "EventGridDelivery",
    "blob_created_event",
    "deliver_once",
    "eventgrid_webhook_url",
    "publish_to_function",
]

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
# Event Grid waits 10 s, 30 s, 1 min, 5 min, ... between attempts; a laptop loop cannot wait that long.
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)
# Webhook answers Event Grid does not retry (delivery-and-retry.md); with dead-lettering on they
# are dead-lettered at once.
NO_RETRY_STATUSES: frozenset[int] = frozenset({400, 401, 403, 413})
MAX_ATTEMPTS_EXCEEDED = "MaxDeliveryAttemptsExceeded"
CLIENT_ERROR = "UndeliverableDueToClientError"

log = logging.getLogger("autoretrain.eventgrid")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def eventgrid_webhook_url(host_url: str, function_name: str) -> str:
    """The Functions host's Event Grid webhook URL for one function."""
    return f"{host_url.rstrip('/')}/runtime/webhooks/eventgrid?functionName={quote(function_name)}"


def publish_to_function(
    delivery: EventGridDelivery, host_url: str, function_name: str, event: Mapping[str, Any]
) -> None:
    """Publish `event` (Event Grid schema) to one function of a Functions host."""
    delivery.publish(event, eventgrid_webhook_url(host_url, function_name))


@dataclass(order=True, slots=True)
class _Pending:
    due: float
    seq: int
    url: str = field(compare=False)
    event: dict[str, Any] = field(compare=False)
    publish_time: str = field(compare=False)
    attempts: int = field(default=0, compare=False)
    on_settled: Callable[[bool], None] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    status: int  # 0 when no HTTP answer came back
    outcome: str  # Event Grid's words: "NotFound", "InternalServerError", "TimedOut", ...


class EventGridDelivery:
    """Deliver events to webhooks in the background, with Event Grid's retry and dead-letter rules.

    `publish(event, url)` returns at once. A scheduler thread keeps a heap of due attempts and hands
    them to at most `max_in_flight` sender threads, so one failing endpoint waiting out its backoff
    does not hold up other events. `retry_schedule[i]` is the wait before attempt i + 2; after
    `max_attempts` attempts (default: one more than the schedule's length) the event is dead-lettered.
    """

    def __init__(
        self,
        home: Path,
        *,
        retry_schedule: Sequence[float] = DEFAULT_RETRY_SCHEDULE,
        max_attempts: int | None = None,
        timeout: float = 30.0,
        max_in_flight: int = 4,
        no_retry_statuses: frozenset[int] = NO_RETRY_STATUSES,
    ) -> None:
        if not retry_schedule or any(wait < 0 for wait in retry_schedule):
            raise ConfigError(f"retry_schedule={tuple(retry_schedule)!r} must be non-empty and not negative.")
        attempts = len(retry_schedule) + 1 if max_attempts is None else max_attempts
        if attempts < 1:
            raise ConfigError(f"max_attempts={max_attempts} must be at least 1.")
        self.deadletter_dir = Path(home) / "deadletter"
        self._schedule = tuple(retry_schedule)
        self._max_attempts = attempts
        self._timeout = timeout
        self._no_retry = no_retry_statuses
        # Never through a proxy: every endpoint here is local.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._heap: list[_Pending] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._outstanding = 0
        self._closed = False
        self._delivered = 0
        self._dead_lettered: list[Path] = []
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="eventgrid-send")
        self._scheduler = threading.Thread(
            target=self._schedule_loop, name="eventgrid-scheduler", daemon=True
        )
        self._scheduler.start()

    @property
    def delivered(self) -> int:
        """How many events were delivered (acknowledged with 200-204)."""
        with self._cond:
            return self._delivered

    @property
    def dead_lettered(self) -> list[Path]:
        """The dead-letter files written so far."""
        with self._cond:
            return list(self._dead_lettered)

    @property
    def pending(self) -> int:
        """Events published and neither delivered nor dead-lettered yet."""
        with self._cond:
            return self._outstanding

    def publish(
        self, event: Mapping[str, Any], url: str, on_settled: Callable[[bool], None] | None = None
    ) -> None:
        """Queue `event` (Event Grid schema) for delivery to the webhook `url`; returns at once.

        `on_settled(delivered)` is called once the event is delivered (True) or dead-lettered (False).
        """
        item = _Pending(time.monotonic(), next(self._seq), url, dict(event), _now_iso(), on_settled=on_settled)
        with self._cond:
            if self._closed:
                raise RuntimeError("the delivery is closed; create a new EventGridDelivery.")
            self._outstanding += 1
            heapq.heappush(self._heap, item)
            self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every published event is delivered or dead-lettered; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._outstanding == 0, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Drain for up to `timeout` seconds, then stop; undelivered events are logged, not kept."""
        self.drain(timeout)
        with self._cond:
            self._closed = True
            left = self._outstanding
            self._cond.notify_all()
        if left:
            log.warning("Event Grid delivery closed with %d event(s) still undelivered", left)
        self._scheduler.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> EventGridDelivery:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- internals ------------------------------------------------------------------------------

    def _schedule_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0].due > time.monotonic()):
                    wait = self._heap[0].due - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._closed:
                    return
                item = heapq.heappop(self._heap)
            self._pool.submit(self._attempt, item)

    def _attempt(self, item: _Pending) -> None:
        item.attempts += 1
        result = self._post(item)
        attempted_at = _now_iso()
        if result.ok:
            log.info("Delivered event %s to %s (attempt %d)", item.event.get("id"), item.url, item.attempts)
            self._finish(item, delivered=True)
            return
        if result.status in self._no_retry or item.attempts >= self._max_attempts:
            reason = CLIENT_ERROR if result.status in self._no_retry else MAX_ATTEMPTS_EXCEEDED
            path = self._dead_letter(item, result, reason, attempted_at)
            log.error(
                "Dead-lettered event %s after %d attempt(s): %s (HTTP %d); record in %s",
                item.event.get("id"), item.attempts, result.outcome, result.status, path,
            )
            self._finish(item, delivered=False, path=path)
            return
        wait = self._schedule[min(item.attempts - 1, len(self._schedule) - 1)]
        log.warning(
            "Delivery of event %s to %s failed: %s (HTTP %d); retry %d in %.1fs",
            item.event.get("id"), item.url, result.outcome, result.status, item.attempts + 1, wait,
        )
        item.due = time.monotonic() + wait
        with self._cond:
            heapq.heappush(self._heap, item)
            self._cond.notify_all()

    def _post(self, item: _Pending) -> _Outcome:
        request = urllib.request.Request(
            item.url,
            data=json.dumps([item.event]).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "aeg-event-type": "Notification"},
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except TimeoutError:
            return _Outcome(False, 0, "TimedOut")
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(getattr(exc, "reason", None), TimeoutError):
                return _Outcome(False, 0, "TimedOut")
            log.debug("Delivery to %s failed: %s", item.url, exc)
            return _Outcome(False, 0, "Aborted")
        if 200 <= status <= 204:
            return _Outcome(True, status, "Delivered")
        try:
            outcome = HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
        except ValueError:
            outcome = f"Http{status}"
        return _Outcome(False, status, outcome)

    def _dead_letter(self, item: _Pending, result: _Outcome, reason: str, attempted_at: str) -> Path:
        record = {
            **item.event,
            "deadLetterReason": reason,
            "deliveryAttempts": item.attempts,
            "lastDeliveryOutcome": result.outcome,
            "lastHttpStatusCode": result.status,
            "publishTime": item.publish_time,
            "lastDeliveryAttemptTime": attempted_at,
        }
        event_id = _SAFE_NAME.sub("_", str(item.event.get("id") or "event"))[:100]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        path = self.deadletter_dir / f"{stamp}-{event_id}.json"
        _write_atomically(path, json.dumps(record, indent=2))
        return path

    def _finish(self, item: _Pending, *, delivered: bool, path: Path | None = None) -> None:
        if item.on_settled is not None:
            try:
                item.on_settled(delivered)
            except Exception:
                log.exception("Settlement callback for event %s failed", item.event.get("id"))
        with self._cond:
            self._outstanding -= 1
            if delivered:
                self._delivered += 1
            elif path is not None:
                self._dead_lettered.append(path)
            self._cond.notify_all()


class BlobWatcher:
    """Announce new blob versions of one container as BlobCreated events, like Storage's Event Grid.

    Each poll lists the container; every (name, eTag) not announced before is published to
    `target_url` through `delivery`. A version counts as announced once its event is settled
    (delivered, or dead-lettered where it can be found): only then is it written to
    `<home>/eventgrid/watch-<container>.json` (atomically). An event still waiting for a retry when
    the process stops is announced again by the next watcher, so no blob is skipped by a restart.
    """

    def __init__(
        self,
        connection_string: str,
        container: str,
        delivery: EventGridDelivery,
        target_url: str,
        home: Path,
        *,
        topic: str = LOCAL_STORAGE_TOPIC,
        interval: float = 1.0,
    ) -> None:
        # Few SDK retries: a listing that fails backs off here, instead of holding a poll for minutes.
        service = BlobServiceClient.from_connection_string(connection_string, **client_options(retries=1))
        self._client = service.get_container_client(container)
        self._store = AzureBlobStore(service)
        self._failures = 0
        self._container = container
        self._delivery = delivery
        self._target_url = target_url
        self._topic = topic
        self._interval = interval
        self.state_path = Path(home) / "eventgrid" / f"watch-{container}.json"
        # Re-entrant: a delivery may settle an event inside publish(), while a poll holds the lock.
        self._state_lock = threading.RLock()
        self._emitted, self._last_sequence = self._load_state()
        self._in_flight: dict[str, str] = {}
        self._container_ready = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> list[dict[str, Any]]:
        """List the container once and publish an event per unannounced blob version; returns them."""
        with self._state_lock:
            try:
                self._ensure_container()
                blobs = list(self._store.list_blobs(self._container))
            except AzureError as exc:
                raise StorageError(
                    f"listing container {self._container!r} failed: {exc}; is Azurite running?"
                ) from exc
            events: list[tuple[str, dict[str, Any]]] = []
            seen: dict[str, str] = {}
            for blob in sorted(blobs, key=lambda b: (b.last_modified, b.ref.name)):
                # Listings carry the eTag bare (0x8D...), as the docs' delivered events do.
                name, etag = blob.ref.name, blob.ref.etag
                seen[name] = etag
                if etag not in (self._emitted.get(name), self._in_flight.get(name)):
                    events.append((name, self._blob_created(blob)))
            for name, event in events:
                etag = event["data"]["eTag"]
                self._in_flight[name] = etag
                self._delivery.publish(event, self._target_url, functools.partial(self._settled, name, etag))
                log.info("BlobCreated %s (eTag %s) published", event["subject"], etag)
            # Deleted blobs drop out of the state, so it stays as small as the container.
            kept = {name: etag for name, etag in self._emitted.items() if name in seen}
            if kept != self._emitted:
                self._emitted = kept
                self._save_state()
            return [event for _, event in events]

    def _settled(self, name: str, etag: str, delivered: bool) -> None:
        with self._state_lock:
            if self._in_flight.get(name) == etag:
                del self._in_flight[name]
            self._emitted[name] = etag
            self._save_state()

    def start(self) -> BlobWatcher:
        """Poll every `interval` seconds in a background thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"watch-{self._container}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (waits for a poll in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 30)
            self._thread = None

    def __enter__(self) -> BlobWatcher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- internals ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
                self._failures = 0
            except Exception as exc:
                # Back off (up to 30 s) and say so; events already published keep being delivered.
                self._failures += 1
                wait = min(self._interval * 2 ** min(self._failures, 6), 30.0)
                log.warning("Blob watcher on %r failed (%s); polling again in %.1fs",
                            self._container, " ".join(str(exc).split())[:300], wait)
                self._stop.wait(wait)
                continue
            self._stop.wait(self._interval)

    def _ensure_container(self) -> None:
        if not self._container_ready:
            with contextlib.suppress(ResourceExistsError):
                self._client.create_container()
            self._container_ready = True

    def _blob_created(self, blob: ListedBlob) -> dict[str, Any]:
        # The sequencer orders events of one blob by string comparison; nanoseconds keep it increasing
        # across restarts even when the state file is lost.
        self._last_sequence = max(self._last_sequence + 1, time.time_ns())
        return blob_created_event(
            topic=self._topic, container=self._container, name=blob.ref.name, etag=blob.ref.etag, size=blob.size,
            content_type=blob.content_type, last_modified=blob.last_modified,
            url=self._client.get_blob_client(blob.ref.name).url, sequence=self._last_sequence,
        )

    def _load_state(self) -> tuple[dict[str, str], int]:
        try:
            state = json.loads(self.state_path.read_text())
            emitted = {str(k): str(v) for k, v in state["emitted"].items()}
            return emitted, int(state.get("sequence", 0))
        except FileNotFoundError:
            return {}, 0
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Losing the state only means announcing blobs again; the function is idempotent.
            log.warning("Ignoring unreadable watcher state %s (%s); blobs will be announced again",
                        self.state_path, exc)
            return {}, 0

    def _save_state(self) -> None:
        payload = {"container": self._container, "emitted": self._emitted, "sequence": self._last_sequence}
        _write_atomically(self.state_path, json.dumps(payload, indent=2, sort_keys=True))


def blob_created_event(
    *,
    topic: str,
    container: str,
    name: str,
    etag: str,
    size: int,
    content_type: str | None,
    last_modified: datetime,
    url: str,
    sequence: int | None = None,
) -> dict[str, Any]:
    """The event Blob Storage sends for a committed blob, key for key (event-schema-blob-storage.md)."""
    return {
        "topic": topic,
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventType": BLOB_CREATED,
        "eventTime": _iso(last_modified),
        "id": str(uuid.uuid4()),
        "data": {
            # A listing cannot tell PutBlob from PutBlockList; both mean "fully committed".
            "api": "PutBlob",
            "clientRequestId": str(uuid.uuid4()),
            "requestId": str(uuid.uuid4()),
            "eTag": etag,
            "contentType": content_type or "application/octet-stream",
            "contentLength": size,
            "blobType": "BlockBlob",
            "url": url,
            "sequencer": f"{sequence if sequence is not None else time.time_ns():032X}",
            "storageDiagnostics": {"batchId": str(uuid.uuid4())},
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


def deliver_once(url: str, event: Mapping[str, Any], *, timeout: float = 30.0) -> int:
    """POST one event to a webhook as Event Grid does, once; the HTTP status (0: no answer)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        url, data=json.dumps([dict(event)]).encode(), method="POST",
        headers={"Content-Type": "application/json", "aeg-event-type": "Notification"},
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _now_iso() -> str:
    return _iso(datetime.now(UTC))
