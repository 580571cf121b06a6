"""The local stand-in for Azure, in one object: Azurite, the Functions host and Event Grid.

`autoretrain up` runs it in the foreground; `autoretrain demo` runs it around a demo.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from autoretrain.errors import ConfigError
from autoretrain.local.azurite import Azurite
from autoretrain.local.eventgrid import BlobWatcher, EventGridDelivery, eventgrid_webhook_url
from autoretrain.local.host import LocalHost
from autoretrain.settings import Settings

__all__ = ["LocalStack"]

log = logging.getLogger("autoretrain.stack")

# The function app's root (function_app.py, host.json): the real host puts it on sys.path too.
APP_ROOT = Path(__file__).resolve().parent.parent.parent


class LocalStack:
    """Azurite + the local Functions host serving `function_app` + the incoming/ watcher."""

    def __init__(self, settings: Settings, *, poll_interval: float = 1.0) -> None:
        if not settings.storage_connection:
            raise ConfigError("the local stack needs AUTORETRAIN_STORAGE (e.g. UseDevelopmentStorage=true).")
        parts = urlsplit(settings.host_url)
        if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
            raise ConfigError(
                f"AUTORETRAIN_HOST_URL={settings.host_url!r} must be http://127.0.0.1:PORT for the local host."
            )
        self.settings = settings
        self.azurite = Azurite(settings.home)
        self.host = LocalHost("function_app", app_root=APP_ROOT, host="127.0.0.1", port=parts.port)
        self._poll_interval = poll_interval
        self.delivery: EventGridDelivery | None = None
        self.watcher: BlobWatcher | None = None

    def start(self) -> LocalStack:
        self.azurite.start()
        try:
            self.host.start()
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
            "stack.up host=%s incoming=%s home=%s",
            self.host.url, self.settings.incoming_container, self.settings.home,
        )
        return self

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.delivery is not None:
            self.delivery.close(timeout=5)
        self.host.stop()
        self.azurite.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
