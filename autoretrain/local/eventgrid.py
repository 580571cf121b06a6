"""A local Event Grid: a Blob Storage source for the local stack, delivering through `EventGridDelivery`.

`BlobWatcher` stands in for Blob Storage's Event Grid integration, which Azurite lacks: it polls a
container and publishes one `Microsoft.Storage.BlobCreated` event, in the real schema, for each blob
version (name + eTag) it has not announced yet. What it announced is kept in a small state file so
a restart does not announce everything again.

Delivery itself (retries, dead letters) is `autoretrain.adapters.eventgrid`, re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob import BlobServiceClient

from autoretrain.adapters.eventgrid import (
    DEFAULT_RETRY_SCHEDULE,
    NO_RETRY_STATUSES,
    EventGridDelivery,
    deliver_once,
    eventgrid_webhook_url,
    iso_time,
    publish_to_function,
    write_atomically,
)
from autoretrain.adapters.storage import AzureBlobStore, client_options
from autoretrain.domain import ListedBlob
from autoretrain.domain.errors import StorageError
from autoretrain.logs import printable
from autoretrain.settings import LOCAL_STORAGE_TOPIC

__all__ = [
    "BLOB_CREATED",
    "DEADLETTER_KEYS",
    "DEFAULT_RETRY_SCHEDULE",
    "NO_RETRY_STATUSES",
    "BlobWatcher",
    "EventGridDelivery",
    "blob_created_event",
    "deliver_once",
    "eventgrid_webhook_url",
    "function_for",
    "poke",
    "publish_to_function",
    "redeliver_deadletters",
    "redeliver_record",
]

# How often the watcher looks at its poke file between polls: a stat, microseconds each.
_POKE_CHECK = 0.05


def _poke_path(home: Path, container: str) -> Path:
    return Path(home) / "eventgrid" / f"poke-{container}"


def poke(home: Path, container: str) -> None:
    """Tell the stack's watcher of `container` (in any process, on this home) that a blob was just
    uploaded, so it looks now instead of at its next poll: what `autoretrain drop` and the demo do.
    Event Grid pushes a real upload's event within about a second; uploads by other tools are
    still found by the poll. Best effort: a home that cannot be written to only waits for the poll."""
    path = _poke_path(home, container)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(uuid.uuid4().hex, encoding="utf-8")
    except OSError as exc:
        log.debug("eventgrid.poke_failed path=%s error=%s", path, exc)

log = logging.getLogger("autoretrain.eventgrid")


BLOB_CREATED = "Microsoft.Storage.BlobCreated"

# The keys Event Grid adds to an event when it dead-letters it; the event is the rest.
DEADLETTER_KEYS = (
    "deadLetterReason", "deliveryAttempts", "lastDeliveryOutcome", "lastHttpStatusCode", "publishTime",
    "lastDeliveryAttemptTime",
)


def function_for(event: Mapping[str, Any]) -> str | None:
    """The function of this app an event is delivered to (as the app's subscriptions route it), or None."""
    kind = str(event.get("eventType") or event.get("type") or "")
    if kind == BLOB_CREATED:
        return "ingest"
    if kind.startswith("Microsoft.MachineLearningServices."):
        return "completion"
    return None


def redeliver_record(record: Any, host_url: str) -> tuple[str | None, int]:
    """Deliver a dead-letter record's event again to its function: (the function or None, HTTP status;
    0 when nothing answered or there was no function to deliver to)."""
    if not isinstance(record, dict):
        return None, 0
    event = {k: v for k, v in record.items() if k not in DEADLETTER_KEYS}
    function = function_for(event)
    if function is None:
        return None, 0
    return function, deliver_once(eventgrid_webhook_url(host_url, function), event)


def redeliver_deadletters(home: Path, host_url: str, *, since: float = 0.0) -> tuple[int, int]:
    """Deliver again each dead-letter file of `<home>/deadletter/` written at or after `since` (epoch
    seconds); a file all of whose events are delivered moves to `replayed/`. Returns (replayed, failed)."""
    folder = Path(home) / "deadletter"
    replayed = failed = 0
    for path in sorted(folder.glob("*.json")):
        try:
            if path.stat().st_mtime < since:
                continue
            parsed = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("deadletter.unreadable file=%s: %s; left where it is", path.name, exc)
            failed += 1
            continue
        records = parsed if isinstance(parsed, list) else [parsed]
        if all(200 <= redeliver_record(one, host_url)[1] <= 204 for one in records):
            (folder / "replayed").mkdir(parents=True, exist_ok=True)
            path.replace(folder / "replayed" / path.name)
            replayed += 1
        else:
            failed += 1
    return replayed, failed


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
        self._poke = _poke_path(home, container)
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
                log.info("BlobCreated %s (eTag %s) published", printable(event["subject"]), etag)
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
            self._wait_for_poll()

    def _poked(self) -> float | None:
        try:
            return self._poke.stat().st_mtime_ns
        except OSError:
            return None

    def _wait_for_poll(self) -> None:
        """Until the next poll: `interval` seconds, or less when someone pokes (`poke`)."""
        before = self._poked()
        deadline = time.monotonic() + self._interval
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self._stop.wait(min(_POKE_CHECK, left)) or self._poked() != before:
                return

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
        write_atomically(self.state_path, json.dumps(payload, indent=2, sort_keys=True))


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
        "eventTime": iso_time(last_modified),
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
