"""The local host's HTTP surface: the real host's URLs, routed to function invocations.

    POST /runtime/webhooks/eventgrid?functionName=NAME   Event Grid / CloudEvents deliveries
    OPTIONS (same URL)                                    CloudEvents webhook validation
    POST /admin/functions/NAME  {"input": ""}            run a non-HTTP function once (202)
    GET  /admin/host/status                               {"state": "Running"}
    GET  /admin/functions                                 the indexed functions

`Routes` answers a request without HTTP (tests call it directly); `handler_class` is the thin
adapter the HTTP server runs, and `SharedServer` the server on a socket worker processes may share.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum
from azure.functions.timer import TimerRequest

from autoretrain.local.appindex import EVENT_GRID_TRIGGER, TIMER_TRIGGER, FunctionInfo
from autoretrain.local.hostlog import log, now_iso

__all__ = ["MAX_BODY", "Execute", "Response", "Routes", "SharedServer", "handler_class"]

_VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
_WEBHOOK_PATH = "/runtime/webhooks/eventgrid"
# Event Grid never delivers a body over 1 MB (its limit per event and per batch): a larger one is not
# Event Grid's, and is refused before it is read.
MAX_BODY = 1024 * 1024

# Run one invocation (function, its argument, the trigger's reason); True when it succeeded.
Execute = Callable[[FunctionInfo, Any, str], bool]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()


class _RequestError(Exception):
    """A request the host refuses; carries the HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Routes:
    """Answer the host's URLs for `functions`, running each invocation with `execute`."""

    def __init__(
        self, functions: Mapping[str, FunctionInfo], execute: Execute, *, ready: Callable[[], str | None] | None = None
    ) -> None:
        """`ready`: why the app cannot run now (its storage is down), or None; deliveries are answered
        503 meanwhile, which Event Grid retries."""
        self._functions = functions
        self._execute = execute
        self._ready = ready or (lambda: None)

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Answer one request; every failure is a status with a one-line JSON error."""
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        try:
            return self._route(method, path, parse_qs(parts.query), headers, body)
        except _RequestError as exc:
            # One line per refused request (a malformed or foreign body): it was answered, not lost. A 503
            # (storage down) is the sender's to tell, as it retries: the stack has said why, once.
            log.log(logging.DEBUG if exc.status == 503 else logging.WARNING,
                    "host.refused method=%s path=%s status=%d reason=%r", method, path, exc.status, str(exc))
            return Response(exc.status, {"error": str(exc)})

    def _route(
        self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> Response:
        if path == _WEBHOOK_PATH and method == "OPTIONS":
            return self._cloudevents_validation(headers)
        if path == _WEBHOOK_PATH and method == "POST":
            return self._eventgrid((query.get("functionName") or [""])[0], headers, body)
        if path == "/admin/host/status" and method == "GET":
            return Response(200, {"state": "Running"})
        if path == "/admin/functions" and method == "GET":
            return Response(200, [{"name": i.name, "trigger": i.trigger_type} for i in self._functions.values()])
        if path.startswith("/admin/functions/") and method == "POST":
            return self._admin_invoke(unquote(path.removeprefix("/admin/functions/")), body)
        raise _RequestError(404, f"no route for {method} {path}")

    def _function(self, name: str, trigger_type: str | None = None) -> FunctionInfo:
        if not name:
            raise _RequestError(400, "functionName is missing from the query string")
        info = self._functions.get(name)
        if info is None:
            raise _RequestError(404, f"function {name!r} is not in this app")
        if trigger_type is not None and info.trigger_type != trigger_type:
            raise _RequestError(
                400, f"function {name!r} has a {info.trigger_type}, not an {trigger_type}"
            )
        return info

    def _cloudevents_validation(self, headers: Mapping[str, str]) -> Response:
        origin = headers.get("webhook-request-origin")
        if not origin:
            raise _RequestError(400, "OPTIONS needs a WebHook-Request-Origin header")
        return Response(200, None, (("WebHook-Allowed-Origin", origin), ("Allow", "POST")))

    def _eventgrid(self, name: str, headers: Mapping[str, str], body: bytes) -> Response:
        info = self._function(name, EVENT_GRID_TRIGGER)
        events = _parse_events(body)
        kind = headers.get("aeg-event-type", "Notification")
        if kind == "SubscriptionValidation":
            return _validation_answer(name, events)
        if kind == "Unsubscribe":
            return Response(202)
        if kind != "Notification":
            raise _RequestError(400, f"aeg-event-type {kind!r} is not Notification or SubscriptionValidation")
        if (down := self._ready()) is not None:
            raise _RequestError(503, f"{down}; Event Grid delivers it again later")
        # The runtime invokes the function once per array element; the first failure fails the request.
        for event in events:
            decoded = EventGridEventInConverter.decode(
                data=Datum(json.dumps(event), "json"), trigger_metadata=None
            )
            if not self._execute(info, decoded, f"EventGrid trigger fired at {now_iso()}"):
                return Response(500, {"error": f"function {name!r} failed on event {event.get('id')!r}"})
        return Response(200)

    def _admin_invoke(self, name: str, body: bytes) -> Response:
        info = self._function(name)
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            raise _RequestError(400, "the body is not JSON; send {\"input\": \"\"}") from None
        raw_input = payload.get("input", "") if isinstance(payload, dict) else ""
        reason = "This function was programmatically called via the host APIs."
        if info.trigger_type == TIMER_TRIGGER:
            argument: Any = TimerRequest(past_due=False, schedule={"AdjustForDST": True})
        elif info.trigger_type == EVENT_GRID_TRIGGER:
            events = _parse_events(raw_input.encode() if isinstance(raw_input, str) else b"")
            argument = EventGridEventInConverter.decode(
                data=Datum(json.dumps(events[0]), "json"), trigger_metadata=None
            )
        else:
            raise _RequestError(
                400, f"function {name!r} has a {info.trigger_type}, which this host cannot run"
            )
        threading.Thread(
            target=self._execute, args=(info, argument, reason), name=f"admin-{name}", daemon=True
        ).start()
        return Response(202)


def _validation_answer(name: str, events: list[dict[str, Any]]) -> Response:
    """A SubscriptionValidation delivery: echo its validation code, as the real host does."""
    for event in events:
        if event.get("eventType") == _VALIDATION_EVENT or event.get("type") == _VALIDATION_EVENT:
            code = (event.get("data") or {}).get("validationCode")
            if code:
                log.info("Subscription validation for '%s' answered", name)
                return Response(200, {"validationResponse": code})
    raise _RequestError(400, f"SubscriptionValidation without a {_VALIDATION_EVENT} event")


def _parse_events(body: bytes) -> list[dict[str, Any]]:
    """An Event Grid array, a single event, or a CloudEvents batch, as a list of event objects."""
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise _RequestError(400, f"the body is not JSON: {exc}") from None
    events = parsed if isinstance(parsed, list) else [parsed]
    if not events or not all(isinstance(e, dict) for e in events):
        raise _RequestError(400, "the body must be an event object or a non-empty array of them")
    return events


def handler_class(handle: Callable[[str, str, Mapping[str, str], bytes], Response]) -> type[BaseHTTPRequestHandler]:
    """The HTTP adapter: read the request, answer with `handle(method, target, headers, body)`."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "autoretrain-local-host"
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                reason = f"body of {length} bytes is over {MAX_BODY}, the most Event Grid sends"
                log.warning("host.refused method=%s path=%s status=413 reason=%r", self.command, self.path, reason)
                response = Response(413, {"error": reason})
                self.close_connection = True
                _discard(self.rfile, length)  # so the sender, still sending, reads the answer
            else:
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    response = handle(self.command, self.path, headers, body)
                except Exception as exc:  # a bug in the host itself: answer, and keep serving
                    log.exception("Host error on %s %s", self.command, self.path)
                    response = Response(500, {"error": f"{type(exc).__name__}: {exc}"})
            payload = b"" if response.body is None else json.dumps(response.body).encode()
            self.send_response(response.status)
            for key, value in response.headers:
                self.send_header(key, value)
            if payload:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_OPTIONS = _serve

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


# A refused body is read and dropped up to this much (never kept), so its sender gets the 413 instead of
# a reset; beyond it the connection is closed on the sender.
_DISCARD_LIMIT = 16 * MAX_BODY


def _discard(stream: Any, length: int) -> None:
    left = min(length, _DISCARD_LIMIT)
    while left > 0:
        chunk = stream.read(min(left, 64 * 1024))
        if not chunk:
            return
        left -= len(chunk)


class SharedServer(ThreadingHTTPServer):
    """The HTTP server, on a listening socket that worker processes may share (non-blocking then:
    a process that loses the race to accept() goes back to waiting); each connection blocks."""

    daemon_threads = True
    # The listen backlog, as a real server's: a burst of deliveries (Event Grid's retries, a replay)
    # waits to be accepted instead of being reset (socketserver's default is 5).
    request_queue_size = 128

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.setblocking(True)
        return connection, address
