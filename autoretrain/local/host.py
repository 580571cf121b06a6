"""A small local Functions host: the URLs and behaviour of the real one, for offline runs.

Azure Functions Core Tools cannot be installed everywhere, so `autoretrain host` serves the app with
this instead. It indexes the FunctionApp with the azure-functions library's own indexing, decodes
events with the library's own converter, and serves what the real host serves (`webhook`: Event
Grid and CloudEvents deliveries, the admin invoke, status and function list).

An exception in a function answers 500, so the sender retries, as Event Grid does with the real host.
Timer functions run on their NCRONTAB schedule (`timers`).

With `processes=N` (the app setting FUNCTIONS_WORKER_PROCESS_COUNT), N-1 worker processes
(`autoretrain.local.hostworker`, kept by `workers`) serve requests from the same listening socket,
whichever is free accepting the next connection, as the real host dispatches invocations to its
language workers. Timers run in this process only; a worker that dies is started again. Log lines
have the real host's shape (`Executing 'Functions.NAME' (Reason=..., Id=...)`); `configure_logging()`
prints them to stdout.

The parts, by concern, in autoretrain/local/: `appindex` (import and index the app), `webhook` (the
HTTP surface), `timers`, `workers`, `hostlog` (the log lines); this module puts them together.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from azure.core.exceptions import ServiceRequestError

from autoretrain.domain.errors import AutoretrainError, ConfigError
from autoretrain.local.appindex import (
    EVENT_GRID_TRIGGER,
    TIMER_TRIGGER,
    FunctionInfo,
    index_functions,
    load_app,
    resolve_setting,
)
from autoretrain.local.azurite import storage_down
from autoretrain.local.hostlog import configure_logging, log
from autoretrain.local.timers import TimerRunner
from autoretrain.local.webhook import Response, Routes, SharedServer, handler_class
from autoretrain.local.workers import WorkerProcesses

__all__ = [
    "EVENT_GRID_TRIGGER",
    "TIMER_TRIGGER",
    "FunctionInfo",
    "LocalHost",
    "configure_logging",
    "index_functions",
    "resolve_setting",
]


# How long a storage probe's answer stands: deliveries within it are not probed again.
_PROBE_SECONDS = 0.5

class LocalHost:
    """Serve a FunctionApp's Event Grid and timer functions over the real host's URLs.

    `app` is a func.FunctionApp, or a module path ("function_app") imported on first use, with
    `attribute` naming the app in it, imported from `app_root` (default: the current folder, as
    `func start` does). Port 0 picks a free port; `.url` and `.port` say which.
    `max_concurrency` bounds simultaneous function executions; `timers=False` leaves timer
    functions to the admin endpoint only (tests). `storage`: the app's local storage (a connection
    string); while it does not answer, as the real host without its storage, deliveries are answered
    503 (Event Grid retries them) and timer runs are skipped, each with one line.
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
        storage: str | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency={max_concurrency} must be at least 1.")
        if not 1 <= processes <= 10:
            raise ConfigError(f"processes={processes} must be from 1 to 10 (FUNCTIONS_WORKER_PROCESS_COUNT).")
        self._processes = processes
        # A worker process: this command and the listening socket's descriptor (tests, benchmarks).
        self._workers = WorkerProcesses(
            processes, worker_command or [sys.executable, "-m", "autoretrain.local.hostworker"], app_root
        )
        self._app_ref = app
        self._storage = storage
        self._attribute = attribute
        self._app_root = app_root
        self._host = host
        self._requested_port = port
        self._timers_enabled = timers
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._max_concurrency = max_concurrency
        self._functions: dict[str, FunctionInfo] | None = None
        self._routes: Routes | None = None
        self._server: SharedServer | None = None
        self._server_thread: threading.Thread | None = None
        self._timer_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._probed: tuple[float, str | None] = (-_PROBE_SECONDS, None)  # (when, what it found)

    @property
    def functions(self) -> Mapping[str, FunctionInfo]:
        """The app's functions by name (indexed on first use)."""
        if self._functions is None:
            app = load_app(self._app_ref, self._attribute, self._app_root)
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
        self._server = self._listen(listening)
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
        self._start_timers([i for i in functions.values() if i.trigger_type == TIMER_TRIGGER])
        if self._processes > 1:  # last: a bad setting above has stopped the start before any exists
            # Whoever is free accepts: the socket must not block a process that lost the race.
            self._server.socket.setblocking(False)
            self._workers.start(self._server.socket.fileno(), self._stopping)
        return self

    def _listen(self, listening: int | None) -> SharedServer:
        """The HTTP server on the requested port, or on the inherited socket `listening`."""
        try:
            if listening is None:
                server = SharedServer((self._host, self._requested_port), handler_class(self.handle))
            else:
                server = SharedServer((self._host, 0), handler_class(self.handle), bind_and_activate=False)
                server.socket.close()
                server.socket = socket.socket(fileno=listening)
                server.server_address = server.socket.getsockname()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigError(
                f"{self._host}:{self._requested_port} is in use: another `autoretrain up` or host is running; "
                "stop it, or set AUTORETRAIN_HOST_URL to another port."
            ) from None
        server.daemon_threads = True
        return server

    def _start_timers(self, timers: list[FunctionInfo]) -> None:
        if not (self._timers_enabled and timers):
            return
        runner = TimerRunner(timers, self._execute, self._stopping)
        self._timer_thread = threading.Thread(target=runner.run, name="local-host-timers", daemon=True)
        self._timer_thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker processes (each finishes its running functions first), stop listening,
        stop the timers, and wait up to `timeout` for this process's running functions to finish
        (Event Grid's own wait for an answer is 30 s)."""
        self._stopping.set()
        self._workers.stop(timeout)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._wait_for_functions(timeout)
        for thread in (self._server_thread, self._timer_thread):
            if thread is not None:
                thread.join(timeout=5)
        self._server = self._server_thread = self._timer_thread = None

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

    # ---- invocations ----------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Answer one request (no HTTP needed); every failure is a status with a one-line JSON error."""
        if self._routes is None:
            self._routes = Routes(self.functions, self._execute, ready=self._storage_down)
        return self._routes.handle(method, target, headers, body)

    def _storage_down(self) -> str | None:
        """Why local storage cannot be reached now, or None; probed (two TCP connects) at most once per
        `_PROBE_SECONDS`, not on every delivery: an outage is told within that time."""
        at, found = self._probed
        if time.monotonic() - at >= _PROBE_SECONDS:
            found = storage_down(self._storage)
            self._probed = (time.monotonic(), found)
        return found

    def _execute(self, info: FunctionInfo, argument: Any, reason: str) -> bool:
        """Run one invocation with the host's log lines; True when it succeeded."""
        invocation = uuid.uuid4()
        if (down := self._storage_down()) is not None:
            log.warning("Skipped 'Functions.%s' (Reason='%s'): %s", info.name, reason, down)
            return False
        with self._slots:
            log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", info.name, reason, invocation)
            started = time.perf_counter()
            try:
                result = info.user_function(**{info.arg_name: argument})
                if inspect.isawaitable(result):
                    asyncio.run(_awaited(result))
            except Exception as exc:
                elapsed = round((time.perf_counter() - started) * 1000)
                if (unreachable := _unreachable(exc)) is not None:  # a known cause: one line, no traceback
                    log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms): a service did not answer: %s",
                              info.name, invocation, elapsed, unreachable)
                    return False
                if isinstance(exc, AutoretrainError):  # the app's own error, said in one line: no traceback
                    log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms): %s: %s",
                              info.name, invocation, elapsed, type(exc).__name__, " ".join(str(exc).split())[:500])
                    return False
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


def _unreachable(exc: BaseException) -> str | None:
    """One line for an exception caused by a service that refused or dropped the connection (the
    storage emulator stopped, say), or None for any other exception."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ServiceRequestError | ConnectionError):
            return " ".join(str(current).split())[:300] or type(current).__name__
        current = current.__cause__ or current.__context__
    return None


async def _awaited(result: Any) -> Any:
    return await result
