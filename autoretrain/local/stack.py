"""The local stand-in for Azure, in one object: Azurite, the Functions host and Event Grid.

`autoretrain up` runs it in the foreground; `autoretrain demo` runs it around a demo.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from types import TracebackType
from urllib.parse import urlsplit

from autoretrain.bootstrap import runtime, shutdown
from autoretrain.domain.errors import AutoretrainError, ConfigError
from autoretrain.local.azurite import Azurite, azurite_ports
from autoretrain.local.eventgrid import BlobWatcher, EventGridDelivery, eventgrid_webhook_url
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
        blob_port, table_port = azurite_ports(settings.storage_connection)
        self.azurite = Azurite(settings.home, blob_port=blob_port, table_port=table_port)
        self.host = LocalHost(
            "function_app", app_root=PROJECT_ROOT, host="127.0.0.1", port=parts.port,
            processes=settings.worker_processes, worker_command=worker_command,
        )
        self._poll_interval = poll_interval
        self._eventgrid = eventgrid
        self._reconcile_thread: threading.Thread | None = None
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
