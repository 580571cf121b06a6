"""The local stand-in for Azure, in one object: Azurite, the Functions host and Event Grid.

`autoretrain up` runs it in the foreground; `autoretrain demo` runs it around a demo.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from urllib.parse import urlsplit

from autoretrain.bootstrap import create_local_storage, resume_orphaned_jobs, runtime, shutdown
from autoretrain.domain.errors import AutoretrainError, ConfigError
from autoretrain.local.azurite import Azurite
from autoretrain.local.eventgrid import BlobWatcher, EventGridDelivery, eventgrid_webhook_url, redeliver_deadletters
from autoretrain.local.host import LocalHost
from autoretrain.loop import Deps, reconcile
from autoretrain.settings import PROJECT_ROOT, Settings

__all__ = ["LocalStack"]

log = logging.getLogger("autoretrain.stack")

# The function app's root (function_app.py, host.json): the real host puts it on sys.path too.


class LocalStack:
    """Azurite + the local Functions host serving `function_app` + the incoming/ watcher."""

    def __init__(
        self, settings: Settings, *, poll_interval: float = 1.0, eventgrid: bool = True,
        worker_command: Sequence[str] | None = None,
    ) -> None:
        """`worker_command`: how the host starts its extra worker processes (a benchmark's own)."""
        if not settings.storage_connection:
            raise ConfigError("the local stack needs AUTORETRAIN_STORAGE (e.g. UseDevelopmentStorage=true).")
        parts = urlsplit(settings.host_url)
        if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
            raise ConfigError(
                f"AUTORETRAIN_HOST_URL={settings.host_url!r} must be http://127.0.0.1:PORT for the local host."
            )
        self.settings = settings
        self.azurite = Azurite.for_connection(
            settings.home, settings.storage_connection, shared=settings.azurite_shared
        )
        self.host = LocalHost(
            "function_app", app_root=PROJECT_ROOT, host="127.0.0.1", port=parts.port,
            processes=settings.worker_processes, worker_command=worker_command,
            storage=settings.storage_connection,
        )
        self._poll_interval = poll_interval
        self._eventgrid = eventgrid
        self._reconcile_thread: threading.Thread | None = None
        self._watchdog: Watchdog | None = None
        self.delivery: EventGridDelivery | None = None
        self.watcher: BlobWatcher | None = None

    def start(self) -> LocalStack:
        # The timer's schedule is an app setting (%AUTORETRAIN_RECONCILE_SCHEDULE%), as on Azure.
        os.environ.setdefault("AUTORETRAIN_RECONCILE_SCHEDULE", self.settings.reconcile_schedule)
        self.azurite.start()
        try:
            self.host.start()
            # The workspace now, not at the first event: jobs a stop or a crash interrupted resume at
            # once, and one reconcile pass finishes what the last run left half-way.
            deps = runtime()
            self._reconcile_thread = threading.Thread(
                target=self._reconcile_once, args=(deps,), name="reconcile-at-start", daemon=True
            )
            self._reconcile_thread.start()
            if self._eventgrid:
                self.delivery = EventGridDelivery(self.settings.home)
                assert self.settings.storage_connection is not None
                self.watcher = BlobWatcher(
                    self.settings.storage_connection,
                    self.settings.incoming_container,
                    self.delivery,
                    eventgrid_webhook_url(self.host.url, "ingest"),
                    self.settings.home,
                    topic=self.settings.storage_topic,
                    interval=self._poll_interval,
                ).start()
            self._watchdog = Watchdog(self.azurite, self.settings, self.host.url).start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "stack.up host=%s incoming=%s home=%s eventgrid=%s",
            self.host.url, self.settings.incoming_container, self.settings.home,
            "on" if self._eventgrid else "off (only reconcile finds new blobs)",
        )
        return self

    def _reconcile_once(self, deps: Deps) -> None:
        try:
            reconcile(deps, grace=self.settings.reconcile_grace)
        except AutoretrainError as exc:
            log.error("reconcile.failed at start: %s; the timer tries again", exc)
        except Exception:
            log.exception("reconcile.failed at start; the timer tries again")

    def stop(self) -> None:
        """Stop in order: no new events (those in flight are delivered for up to 5 s while the host
        still answers; one left over is announced again at the next start), no new invocations,
        jobs stopped (left to resume), then Azurite, which gets one SIGTERM and is waited for, so its
        last save completes."""
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.delivery is not None:
            self.delivery.close(timeout=5)
        self.host.stop()
        shutdown()
        self.azurite.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Watchdog:
    """What the stack checks every second while it runs:

    - Azurite: when it dies, one ERROR line `azurite.stopped`, then it is started again on the same
      folder (the host answers deliveries 503 meanwhile, so they are retried, not lost); once it is
      back, the events dead-lettered during the outage are delivered again;
    - the local workspace: a job whose runner process is gone (a CLI command stopped by Ctrl-C, a
      worker process that died) is taken over and run again here.
    """

    def __init__(self, azurite: Azurite, settings: Settings, host_url: str, *, interval: float = 1.0) -> None:
        self._azurite = azurite
        self._settings = settings
        self._host_url = host_url
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        self._thread = threading.Thread(target=self._run, name="stack-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=35)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._azurite.alive():
                    self._recover_azurite()
                resume_orphaned_jobs()
            except Exception as exc:  # the watchdog must outlive what it watches
                log.error("stack.watchdog_failed: %s: %s; checking again in %.0f s",
                          type(exc).__name__, " ".join(str(exc).split())[:300], self._interval)

    def _recover_azurite(self) -> None:
        down_since = time.time()
        code = self._azurite.exit_code()
        log.error(
            "azurite.stopped pid=%s exit=%s location=%s: Blob and Table Storage are down; starting it again on "
            "the same folder (what it had not saved yet is lost); the host answers deliveries 503 until it is back",
            self._azurite.pid, "unknown" if code is None else code, self._azurite.location,
        )
        wait = 1.0
        while not self._stop.is_set():
            try:
                self._azurite.restart()
                create_local_storage(self._settings)  # what it had not saved may include them
                break
            except AutoretrainError as exc:
                log.error("azurite.restart_failed: %s; trying again in %.0f s", exc, wait)
                self._stop.wait(wait)
                wait = min(wait * 2, 30.0)
        else:
            return
        log.info("azurite.restarted pid=%s after=%.1fs", self._azurite.pid, time.time() - down_since)
        replayed, failed = redeliver_deadletters(self._settings.home, self._host_url, since=down_since)
        if replayed or failed:
            log.info("deadletter.replayed count=%d failed=%d since=azurite.stopped", replayed, failed)
