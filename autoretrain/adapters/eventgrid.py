"""Event Grid's delivery to a Functions host: webhook posts with retries and dead-lettering.

`EventGridDelivery` posts each event to its webhook as Event Grid does (a JSON array of one event,
`aeg-event-type: Notification`): only 200-204 count as delivered; other answers are retried on a
backoff schedule (seconds here, minutes in Azure); 400, 401, 403 and 413 are dead-lettered at once,
as Event Grid does for webhooks when dead-lettering is on; after the last attempt the event is
written to `<home>/deadletter/` with the keys of Event Grid's dead-letter record. Delivery is at
least once, so a receiver may see an event twice.

Used by the local workspace (its run events) and by the local Event Grid stand-in
(`autoretrain.local.eventgrid`, its blob events).
"""

from __future__ import annotations

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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from autoretrain.domain.errors import ConfigError

__all__ = [
    "CLIENT_ERROR",
    "DEFAULT_RETRY_SCHEDULE",
    "MAX_ATTEMPTS_EXCEEDED",
    "NO_RETRY_STATUSES",
    "EventGridDelivery",
    "deliver_once",
    "eventgrid_webhook_url",
    "iso_time",
    "publish_to_function",
    "write_atomically",
]

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
        item = _Pending(time.monotonic(), next(self._seq), url, dict(event), _nowiso_time(), on_settled=on_settled)
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
        attempted_at = _nowiso_time()
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
        write_atomically(path, json.dumps(record, indent=2))
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


def write_atomically(path: Path, text: str) -> None:
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


def iso_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _nowiso_time() -> str:
    return iso_time(datetime.now(UTC))
