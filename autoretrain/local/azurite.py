"""Azurite (npm `azurite`), started on demand: Blob and Table Storage on 127.0.0.1, default ports.

The default ports keep `UseDevelopmentStorage=true` and Storage Explorer working. An Azurite that
is already listening (another `autoretrain up`, CI) is used as it is and left running.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from autoretrain.domain.errors import ConfigError, StorageError
from autoretrain.settings import PROJECT_ROOT
from autoretrain.waiting import start_and_poll

__all__ = ["BLOB_PORT", "TABLE_PORT", "Azurite", "azurite_binary", "azurite_ports"]

BLOB_PORT, QUEUE_PORT, TABLE_PORT = 10000, 10001, 10002
log = logging.getLogger("autoretrain.azurite")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    """A port nothing listens on now: Azurite also serves Queue, which autoretrain does not use."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def azurite_ports(connection: str | None) -> tuple[int, int]:
    """The Blob and Table ports a local connection string names (UseDevelopmentStorage=true: the
    default ports), so `AUTORETRAIN_STORAGE` can point a second stack at its own Azurite."""
    parts = dict(
        item.split("=", 1) for item in (connection or "").split(";") if "=" in item
    )
    ports = []
    for key, default in (("BlobEndpoint", BLOB_PORT), ("TableEndpoint", TABLE_PORT)):
        port = urlsplit(parts[key]).port if key in parts else None
        ports.append(port or default)
    return ports[0], ports[1]


def azurite_binary() -> Path:
    local = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return local
    found = shutil.which("azurite")
    if found:
        return Path(found)
    raise ConfigError(f"Azurite is not installed ({local} is missing); run `make setup` (it runs npm install).")


class Azurite:
    """Start Azurite if none is listening; stop it on exit only if this object started it."""

    def __init__(
        self, home: Path, *, timeout: float = 30.0, blob_port: int = BLOB_PORT, table_port: int = TABLE_PORT
    ) -> None:
        self.location = Path(home).resolve() / "azurite"
        self._timeout = timeout
        self.blob_port, self.table_port = blob_port, table_port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def started_here(self) -> bool:
        return self._process is not None

    def running(self) -> bool:
        return _listening(self.blob_port) and _listening(self.table_port)

    def start(self) -> Azurite:
        if self.running():
            log.info("azurite.reused blob=127.0.0.1:%d table=127.0.0.1:%d", self.blob_port, self.table_port)
            return self
        self.location.mkdir(parents=True, exist_ok=True)
        try:
            start_and_poll(self._spawn, self.running, self._timeout)
        except ChildProcessError:
            err = self._process.stderr.read().decode(errors="replace") if self._process and self._process.stderr else ""
            self._process = None
            last = err.strip().splitlines()[-1] if err.strip() else "no output"
            raise StorageError(f"Azurite exited at start: {last}") from None
        except TimeoutError:
            self._process = None  # start_and_poll has stopped it
            raise StorageError(
                f"Azurite did not listen on ports {self.blob_port}/{self.table_port} within {self._timeout:.0f} s."
            ) from None
        log.info("azurite.started location=%s", self.location)
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._process = subprocess.Popen(
            [str(azurite_binary()), "--silent", "--disableTelemetry", "--skipApiVersionCheck",
             "--location", str(self.location),
             "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
             "--blobPort", str(self.blob_port), "--tablePort", str(self.table_port),
             "--queuePort", str(QUEUE_PORT if self.blob_port == BLOB_PORT else _free_port())],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            # Its own session: the terminal's Ctrl-C (or hang-up) must not reach it. Azurite saves
            # its metadata every few seconds and on exit; a second signal during that save loses
            # writes, so only stop() signals it, once.
            start_new_session=True,
        )
        return self._process

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM once and wait for Azurite's last save; SIGKILL only if it hangs past `timeout`."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("azurite.killed: it did not stop within %.0f s; its last writes may be lost", timeout)
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()
