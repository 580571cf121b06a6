"""A small local Functions host: the URLs and behaviour of the real one, for offline runs.

Azure Functions Core Tools cannot be installed everywhere, so `autoretrain host` serves the app with
this instead. It indexes the FunctionApp with the azure-functions library's own indexing, decodes
events with the library's own converter, and serves what the real host serves:

    POST /runtime/webhooks/eventgrid?functionName=NAME   Event Grid / CloudEvents deliveries
    OPTIONS (same URL)                                    CloudEvents webhook validation
    POST /admin/functions/NAME  {"input": ""}            run a non-HTTP function once (202)
    GET  /admin/host/status                               {"state": "Running"}
    GET  /admin/functions                                 the indexed functions

An exception in a function answers 500, so the sender retries, as Event Grid does with the real host.
Timer functions run on their NCRONTAB schedule.

With `processes=N` (the app setting FUNCTIONS_WORKER_PROCESS_COUNT), N-1 worker processes
(`autoretrain.local.hostworker`) serve requests from the same listening socket, whichever is free
accepting the next connection, as the real host dispatches invocations to its language workers.
Timers run in this process only; a worker that dies is started again. Log lines have the real host's shape
(`Executing 'Functions.NAME' (Reason=..., Id=...)`); `configure_logging()` prints them to stdout.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import inspect
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

import azure.functions as func
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum
from azure.functions.timer import TimerRequest

from autoretrain.domain.errors import ConfigError
from autoretrain.logs import RedactingFilter
from autoretrain.schedule import TimerSchedule

__all__ = [
    "EVENT_GRID_TRIGGER",
    "TIMER_TRIGGER",
    "FunctionInfo",
    "LocalHost",
    "configure_logging",
    "index_functions",
    "resolve_setting",
]

EVENT_GRID_TRIGGER = "eventGridTrigger"
TIMER_TRIGGER = "timerTrigger"
_VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
_WEBHOOK_PATH = "/runtime/webhooks/eventgrid"
_MAX_BODY = 64 * 1024 * 1024  # Event Grid's own limit is 1 MB per event; this only stops runaway bodies.

log = logging.getLogger("autoretrain.host")


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """One indexed function: its name, trigger binding and the Python callable behind it."""

    name: str
    trigger_type: str
    arg_name: str
    user_function: Callable[..., Any]
    schedule: str | None = None
    run_on_startup: bool = False


# FunctionApp.get_functions() registers the functions as it indexes them, so a second call on the
# same app raises; every host built from one app shares the first result.
_INDEX_LOCK = threading.Lock()
_INDEX: weakref.WeakKeyDictionary[Any, tuple[FunctionInfo, ...]] = weakref.WeakKeyDictionary()


def index_functions(app: Any) -> tuple[FunctionInfo, ...]:
    """Index `app` (a func.FunctionApp) with the library's own indexing, once per app object."""
    with _INDEX_LOCK:
        cached = _INDEX.get(app)
        if cached is not None:
            return cached
        infos: list[FunctionInfo] = []
        for function in app.get_functions():
            trigger = function.get_trigger()
            if trigger is None:
                raise ConfigError(
                    f"function {function.get_function_name()!r} has no trigger; give it one decorator "
                    "such as @app.event_grid_trigger(arg_name=...)."
                )
            binding = trigger.get_binding_name()
            infos.append(
                FunctionInfo(
                    name=function.get_function_name(),
                    trigger_type=binding,
                    arg_name=trigger.name,
                    user_function=function.get_user_function(),
                    schedule=getattr(trigger, "schedule", None) if binding == TIMER_TRIGGER else None,
                    run_on_startup=bool(getattr(trigger, "run_on_startup", False)),
                )
            )
        result = tuple(infos)
        _INDEX[app] = result
        return result


def resolve_setting(value: str) -> str:
    """`%NAME%` in a binding expression is the app setting NAME, as the real host resolves it."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"%{name}% names the app setting {name}, which is not set; set it and start again.")
        return os.environ[name]

    return re.sub(r"%([A-Za-z0-9_.:-]+)%", one, value)


class _HostFormatter(logging.Formatter):
    """`[2026-11-25T15:04:23.123Z] message`, the Functions host's console shape."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        text = f"[{stamp}Z] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(stream: IO[str] | None = None, level: int = logging.INFO) -> logging.Handler:
    """Send every log line (the host's and the functions' own) to `stream` in the host's shape."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_HostFormatter())
    # The library warns about auth levels on the root logger for every non-HTTP app, and the
    # Azure SDKs log each HTTP call at INFO; the real host's console shows neither.
    handler.addFilter(lambda record: not record.getMessage().startswith("Auth level is not applied"))
    handler.addFilter(RedactingFilter())  # no secret, token, SAS or connection string reaches the console
    logging.getLogger("azure").setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()


class _RequestError(Exception):
    """A request the host refuses; carries the HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LocalHost:
    """Serve a FunctionApp's Event Grid and timer functions over the real host's URLs.

    `app` is a func.FunctionApp, or a module path ("function_app") imported on first use, with
    `attribute` naming the app in it, imported from `app_root` (default: the current folder, as
    `func start` does). Port 0 picks a free port; `.url` and `.port` say which.
    `max_concurrency` bounds simultaneous function executions; `timers=False` leaves timer
    functions to the admin endpoint only (tests).
    """

    def __init__(
        self,
        app: Any,
        *,
        attribute: str = "app",
        app_root: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 7071,
        max_concurrency: int = 4,
        timers: bool = True,
        processes: int = 1,
        worker_command: Sequence[str] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency={max_concurrency} must be at least 1.")
        if not 1 <= processes <= 10:
            raise ConfigError(f"processes={processes} must be from 1 to 10 (FUNCTIONS_WORKER_PROCESS_COUNT).")
        self._processes = processes
        # A worker process: this command and the listening socket's descriptor (tests, benchmarks).
        self._worker_command = list(worker_command or [sys.executable, "-m", "autoretrain.local.hostworker"])
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._workers_thread: threading.Thread | None = None
        self._app_ref = app
        self._attribute = attribute
        self._app_root = app_root
        self._host = host
        self._requested_port = port
        self._timers_enabled = timers
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._max_concurrency = max_concurrency
        self._functions: dict[str, FunctionInfo] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self._timer_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._running_timers: set[str] = set()
        self._running_lock = threading.Lock()

    # ---- indexing -------------------------------------------------------------------------------

    @property
    def functions(self) -> Mapping[str, FunctionInfo]:
        """The app's functions by name (indexed on first use)."""
        if self._functions is None:
            app = self._app_ref
            if isinstance(app, str):
                # Like `func start`, import the app from its folder, whatever put us on sys.path.
                root = str(Path(self._app_root or Path.cwd()).resolve())
                if root not in sys.path:
                    sys.path.insert(0, root)
                try:
                    module = importlib.import_module(app)
                except ModuleNotFoundError as exc:
                    if exc.name != app:
                        raise
                    raise ConfigError(
                        f"cannot import the function app module {app!r} from {root}; run the host from "
                        "the project folder (where function_app.py is)."
                    ) from None
                try:
                    app = getattr(module, self._attribute)
                except AttributeError:
                    raise ConfigError(
                        f"module {self._app_ref!r} has no attribute {self._attribute!r}; point the host "
                        "at the module that defines the FunctionApp."
                    ) from None
            if not isinstance(app, func.FunctionApp):
                raise ConfigError(f"{app!r} is not an azure.functions.FunctionApp.")
            self._functions = {info.name: info for info in index_functions(app)}
        return self._functions

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the host listens on (the chosen one when constructed with port 0)."""
        if self._server is None:
            raise RuntimeError("the host is not started; call start() first.")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:7071."""
        return f"http://{self._host}:{self.port}"

    def start(self, listening: int | None = None) -> LocalHost:
        """Index the app, listen, start the timers and the worker processes; returns once requests
        are accepted. `listening`: serve on that inherited socket instead (a worker process)."""
        if self._server is not None:
            return self
        functions = self.functions
        self._stopping.clear()
        try:
            if listening is None:
                self._server = _SharedServer((self._host, self._requested_port), self._handler_class())
            else:
                self._server = _SharedServer((self._host, 0), self._handler_class(), bind_and_activate=False)
                self._server.socket.close()
                self._server.socket = socket.socket(fileno=listening)
                self._server.server_address = self._server.socket.getsockname()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigError(
                f"{self._host}:{self._requested_port} is in use: another `autoretrain up` or host is running; "
                "stop it, or set AUTORETRAIN_HOST_URL to another port."
            ) from None
        self._server.daemon_threads = True
        # A short poll interval makes stop() quick; the idle cost is negligible.
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="local-host-http", daemon=True
        )
        self._server_thread.start()
        if listening is not None:
            return self  # a worker process: no timers, and the main process said the rest
        log.info("Functions:")
        for info in functions.values():
            log.info("        %s: %s", info.name, info.trigger_type)
        log.info("Host started, listening on %s", self.url)
        timers = [i for i in functions.values() if i.trigger_type == TIMER_TRIGGER]
        if self._timers_enabled and timers:
            # Like the real host, a schedule may name an app setting: %NAME%.
            schedules = {info.name: TimerSchedule.parse(resolve_setting(info.schedule or "")) for info in timers}
            timers = [replace(info, schedule=schedules[info.name].expression) for info in timers]
            self._timer_thread = threading.Thread(
                target=self._run_timers, args=(timers,), name="local-host-timers", daemon=True
            )
            self._timer_thread.start()
        if self._processes > 1:  # last: a bad setting above has stopped the start before any exists
            # Whoever is free accepts: the socket must not block a process that lost the race.
            self._server.socket.setblocking(False)
            self._workers_thread = threading.Thread(
                target=self._keep_workers, name="local-host-workers", daemon=True
            )
            self._workers_thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker processes (each finishes its running functions first), stop listening,
        stop the timers, and wait up to `timeout` for this process's running functions to finish
        (Event Grid's own wait for an answer is 30 s)."""
        self._stopping.set()
        self._stop_workers(timeout)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._wait_for_functions(timeout)
        for thread in (self._server_thread, self._timer_thread, self._workers_thread):
            if thread is not None:
                thread.join(timeout=5)
        self._server = self._server_thread = self._timer_thread = self._workers_thread = None

    def _wait_for_functions(self, timeout: float) -> None:
        """Take every execution slot (each running function holds one), then give them back."""
        deadline = time.monotonic() + timeout
        taken = 0
        try:
            for _ in range(self._max_concurrency):
                if not self._slots.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                    log.warning("Host stopped with functions still running after %.0f s", timeout)
                    return
                taken += 1
        finally:
            for _ in range(taken):
                self._slots.release()

    # ---- worker processes -----------------------------------------------------------------------

    def _keep_workers(self) -> None:
        """Start the worker processes and start again any that dies, until stop(). Runs on its own
        thread for as long as they do: they die with it (PR_SET_PDEATHSIG), even on SIGKILL."""
        from autoretrain.adapters.localworkspace.warm import die_with_parent

        assert self._server is not None
        listening = self._server.socket.fileno()
        root = str(Path(self._app_root or Path.cwd()).resolve())
        while not self._stopping.is_set():
            for index in range(1, self._processes):
                process = self._workers.get(index)
                if process is not None and process.poll() is None:
                    continue
                if process is not None:
                    log.error("Worker process %d (pid %d) exited with %s; starting it again",
                              index, process.pid, process.returncode)
                self._workers[index] = subprocess.Popen(
                    [*self._worker_command, str(listening)], pass_fds=(listening,), cwd=root,
                    env={**os.environ, "AUTORETRAIN_HOST_WORKER": str(index)}, stdin=subprocess.DEVNULL,
                    # Its own session: Ctrl-C reaches this process, which stops the workers in order.
                    start_new_session=True, preexec_fn=die_with_parent,
                )
                log.info("Worker process %d started (pid %d)", index, self._workers[index].pid)
            self._stopping.wait(1.0)

    def _stop_workers(self, timeout: float = 30.0) -> None:
        """SIGTERM each worker, which stops taking requests and finishes those it has; SIGKILL after
        `timeout`."""
        if self._workers_thread is not None:
            self._workers_thread.join(timeout=5)
        for process in self._workers.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for index, process in self._workers.items():
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("Worker process %d (pid %d) did not stop in %.0f s; killing it", index, process.pid,
                            timeout)
                process.kill()
                process.wait()
        self._workers.clear()

    def serve_forever(self) -> None:
        """Run until interrupted (Ctrl+C), then stop cleanly: the CLI's `autoretrain host`."""
        self.start()
        try:
            while not self._stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            log.info("Host shutting down")
        finally:
            self.stop()

    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- request handling (HTTP-free, so the handler stays a thin adapter) ----------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> _Response:
        """Answer one request; every failure is a status with a one-line JSON error."""
        path = urlsplit(target).path.rstrip("/") or "/"
        query = parse_qs(urlsplit(target).query)
        try:
            if path == _WEBHOOK_PATH:
                name = (query.get("functionName") or [""])[0]
                if method == "OPTIONS":
                    return self._cloudevents_validation(headers)
                if method == "POST":
                    return self._eventgrid(name, headers, body)
            elif path == "/admin/host/status" and method == "GET":
                return _Response(200, {"state": "Running"})
            elif path == "/admin/functions" and method == "GET":
                return _Response(
                    200, [{"name": i.name, "trigger": i.trigger_type} for i in self.functions.values()]
                )
            elif path.startswith("/admin/functions/") and method == "POST":
                return self._admin_invoke(unquote(path.removeprefix("/admin/functions/")), body)
            raise _RequestError(404, f"no route for {method} {path}")
        except _RequestError as exc:
            return _Response(exc.status, {"error": str(exc)})

    def _function(self, name: str, trigger_type: str | None = None) -> FunctionInfo:
        if not name:
            raise _RequestError(400, "functionName is missing from the query string")
        info = self.functions.get(name)
        if info is None:
            raise _RequestError(404, f"function {name!r} is not in this app")
        if trigger_type is not None and info.trigger_type != trigger_type:
            raise _RequestError(
                400, f"function {name!r} has a {info.trigger_type}, not an {trigger_type}"
            )
        return info

    def _cloudevents_validation(self, headers: Mapping[str, str]) -> _Response:
        origin = headers.get("webhook-request-origin")
        if not origin:
            raise _RequestError(400, "OPTIONS needs a WebHook-Request-Origin header")
        return _Response(200, None, (("WebHook-Allowed-Origin", origin), ("Allow", "POST")))

    def _eventgrid(self, name: str, headers: Mapping[str, str], body: bytes) -> _Response:
        info = self._function(name, EVENT_GRID_TRIGGER)
        events = _parse_events(body)
        kind = headers.get("aeg-event-type", "Notification")
        if kind == "SubscriptionValidation":
            for event in events:
                if event.get("eventType") == _VALIDATION_EVENT or event.get("type") == _VALIDATION_EVENT:
                    code = (event.get("data") or {}).get("validationCode")
                    if code:
                        log.info("Subscription validation for '%s' answered", name)
                        return _Response(200, {"validationResponse": code})
            raise _RequestError(400, f"SubscriptionValidation without a {_VALIDATION_EVENT} event")
        if kind == "Unsubscribe":
            return _Response(202)
        if kind != "Notification":
            raise _RequestError(400, f"aeg-event-type {kind!r} is not Notification or SubscriptionValidation")
        # The runtime invokes the function once per array element; the first failure fails the request.
        for event in events:
            decoded = EventGridEventInConverter.decode(
                data=Datum(json.dumps(event), "json"), trigger_metadata=None
            )
            reason = f"EventGrid trigger fired at {_now_iso()}"
            if not self._execute(info, decoded, reason):
                return _Response(500, {"error": f"function {name!r} failed on event {event.get('id')!r}"})
        return _Response(200)

    def _admin_invoke(self, name: str, body: bytes) -> _Response:
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
        return _Response(202)

    def _execute(self, info: FunctionInfo, argument: Any, reason: str) -> bool:
        """Run one invocation with the host's log lines; True when it succeeded."""
        invocation = uuid.uuid4()
        with self._slots:
            log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", info.name, reason, invocation)
            started = time.perf_counter()
            try:
                result = info.user_function(**{info.arg_name: argument})
                if inspect.isawaitable(result):
                    asyncio.run(_awaited(result))
            except Exception as exc:
                elapsed = round((time.perf_counter() - started) * 1000)
                log.error(
                    "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)", info.name, invocation, elapsed
                )
                log.error(
                    "Exception while executing function: Functions.%s. %s: %s",
                    info.name, type(exc).__name__, exc, exc_info=True,
                )
                return False
            elapsed = round((time.perf_counter() - started) * 1000)
            log.info(
                "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", info.name, invocation, elapsed
            )
            return True

    # ---- timers -------------------------------------------------------------------------------

    def _run_timers(self, timers: list[FunctionInfo]) -> None:
        now = datetime.now(UTC)
        schedules = {info.name: TimerSchedule.parse(info.schedule or "") for info in timers}
        due: dict[str, datetime] = {}
        last: dict[str, datetime | None] = {}
        for info in timers:
            due[info.name] = schedules[info.name].next_after(now)
            last[info.name] = None
            if info.run_on_startup:
                self._fire(info, schedules[info.name], None, due[info.name], past_due=False)
        while not self._stopping.is_set():
            name = min(due, key=lambda n: due[n])
            wait = (due[name] - datetime.now(UTC)).total_seconds()
            if wait > 0 and self._stopping.wait(min(wait, 1.0)):
                return
            if wait > 0:
                continue
            info = next(i for i in timers if i.name == name)
            fired_at = due[name]
            due[name] = schedules[name].next_after(datetime.now(UTC))
            # Late by more than a few seconds means the host was busy or asleep: the runtime's IsPastDue.
            late = (datetime.now(UTC) - fired_at).total_seconds() > 5
            self._fire(info, schedules[name], last[name], due[name], past_due=late)
            last[name] = fired_at

    def _fire(
        self,
        info: FunctionInfo,
        schedule: TimerSchedule,
        last: datetime | None,
        next_due: datetime,
        *,
        past_due: bool,
    ) -> None:
        with self._running_lock:
            if info.name in self._running_timers:
                log.warning("Timer '%s' is still running; skipping this occurrence", info.name)
                return
            self._running_timers.add(info.name)
        status = {
            "Last": last.isoformat() if last else "0001-01-01T00:00:00",
            "Next": next_due.isoformat(),
            "LastUpdated": _now_iso(),
        }
        request = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})

        def run() -> None:
            try:
                self._execute(info, request, f"Timer fired at {_now_iso()}")
            finally:
                with self._running_lock:
                    self._running_timers.discard(info.name)

        threading.Thread(target=run, name=f"timer-{info.name}", daemon=True).start()

    # ---- HTTP adapter ---------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "autoretrain-local-host"
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > _MAX_BODY:
                    response = _Response(413, {"error": f"body of {length} bytes is over {_MAX_BODY}"})
                    self.close_connection = True
                else:
                    body = self.rfile.read(length) if length else b""
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    try:
                        response = host.handle(self.command, self.path, headers, body)
                    except Exception as exc:  # a bug in the host itself: answer, and keep serving
                        log.exception("Host error on %s %s", self.command, self.path)
                        response = _Response(500, {"error": f"{type(exc).__name__}: {exc}"})
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


class _SharedServer(ThreadingHTTPServer):
    """The HTTP server, on a listening socket that worker processes may share (non-blocking then:
    a process that loses the race to accept() goes back to waiting); each connection blocks."""

    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.setblocking(True)
        return connection, address


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


async def _awaited(result: Any) -> Any:
    return await result


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
