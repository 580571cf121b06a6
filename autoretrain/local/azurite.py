"""Azurite (npm `azurite`), started on demand: Blob and Table Storage on 127.0.0.1, default ports.

The default ports keep `UseDevelopmentStorage=true` and Storage Explorer working. An Azurite that
is already listening is used as it is and left running only when it serves this home's folder (its
`--location` is `<home>/azurite`: one a SIGKILLed stack left, or another command's), or when the
settings say the Azurite is shared (`AUTORETRAIN_AZURITE=shared`: CI, tests, an Azurite run by hand
with each home's own containers and table). Any other is refused in one line: its data would sit
beside this home's workspace.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import psutil

from autoretrain.domain.errors import ConfigError, StorageError
from autoretrain.settings import PROJECT_ROOT
from autoretrain.waiting import start_and_poll

__all__ = ["BLOB_PORT", "TABLE_PORT", "Azurite", "azurite_binary", "azurite_connection", "azurite_ports", "free_port",
           "listener",
           "storage_down"]

BLOB_PORT, QUEUE_PORT, TABLE_PORT = 10000, 10001, 10002
log = logging.getLogger("autoretrain.azurite")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it): Azurite's Queue port, which autoretrain does
    not use, the MLflow UI's, and the tests' and benchmarks' own stacks."""
    with socket.socket() as sock:
        sock.bind((host, 0))
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


# Azurite's well-known development account (public, in Azurite's own documentation).
_DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_connection(blob_port: int, table_port: int) -> str:
    """The connection string of an Azurite on these ports (the development account): what
    `azurite_ports` reads back, for a stack, a test or a benchmark on an Azurite of its own."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={_DEV_ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob_port}/devstoreaccount1;"
        f"TableEndpoint=http://127.0.0.1:{table_port}/devstoreaccount1;"
    )


def storage_down(connection: str | None) -> str | None:
    """Why the local storage a connection string names cannot be reached now (its Blob or Table port
    refuses connections), or None: reachable, or not local storage (Azure's is not probed)."""
    if connection is None or not _is_local(connection):
        return None
    blob_port, table_port = azurite_ports(connection)
    down = [str(port) for port in (blob_port, table_port) if not _listening(port)]
    return f"local storage is down (nothing listens on 127.0.0.1:{'/'.join(down)})" if down else None


def _is_local(connection: str) -> bool:
    return "UseDevelopmentStorage=true" in connection or "127.0.0.1" in connection or "localhost" in connection


def listener(port: int) -> psutil.Process | None:
    """The process listening on 127.0.0.1:`port`, when this user may see it (else None)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                return psutil.Process(conn.pid)
            except psutil.Error:
                return None
    return None


def _location_of(process: psutil.Process) -> Path | None:
    """The folder an Azurite process serves: its `--location`/`-l` argument (its working folder if none)."""
    try:
        args = process.cmdline()
        for flag in ("--location", "-l"):
            if flag in args[:-1]:
                return Path(process.cwd(), args[args.index(flag) + 1]).resolve()
            for arg in args:
                if arg.startswith(f"{flag}="):
                    return Path(process.cwd(), arg.split("=", 1)[1]).resolve()
        return Path(process.cwd()).resolve()
    except (psutil.Error, OSError):
        return None


def azurite_binary() -> Path:
    local = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return local
    found = shutil.which("azurite")
    if found:
        return Path(found)
    raise ConfigError(f"Azurite is not installed ({local} is missing); run `make setup` (it runs npm install).")


class Azurite:
    """Start Azurite if none is listening; stop it on exit only if this object started it.

    `shared`: use any Azurite that listens on the ports (its data is shared with whoever else uses
    it); otherwise only one that serves `<home>/azurite` is used, and any other stops `start()`."""

    def __init__(
        self, home: Path, *, timeout: float = 30.0, blob_port: int = BLOB_PORT, table_port: int = TABLE_PORT,
        shared: bool = False,
    ) -> None:
        self.home = Path(home).resolve()
        self.location = self.home / "azurite"
        self._timeout = timeout
        self.blob_port, self.table_port = blob_port, table_port
        self._shared = shared
        self._process: subprocess.Popen[bytes] | None = None
        self._reused: psutil.Process | None = None

    @classmethod
    def for_connection(cls, home: Path, connection: str, *, shared: bool = False) -> Azurite:
        """The Azurite a local connection string names (its ports), for `home`."""
        blob_port, table_port = azurite_ports(connection)
        return cls(home, blob_port=blob_port, table_port=table_port, shared=shared)

    @property
    def started_here(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int | None:
        """The Azurite process's id: the one started here, or the one reused (when it could be seen)."""
        if self._process is not None:
            return self._process.pid
        return self._reused.pid if self._reused is not None else None

    def running(self) -> bool:
        return _listening(self.blob_port) and _listening(self.table_port)

    def alive(self) -> bool:
        """Still serving: the process started here has not exited, and both ports answer."""
        if self._process is not None and self._process.poll() is not None:
            return False
        return self.running()

    def exit_code(self) -> int | None:
        """The exit code of the process started here, once it has exited (a signal: minus its number)."""
        return self._process.poll() if self._process is not None else None

    def start(self) -> Azurite:
        if self.running():
            self._adopt()
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

    def restart(self) -> Azurite:
        """Start Azurite again on this home's folder after it died (what it had not saved is lost)."""
        if self._process is not None:
            self._process.poll()  # reap it
        self._process = self._reused = None
        return self.start()

    def _adopt(self) -> None:
        """Use the Azurite that already listens, if it is this home's (or the settings share it)."""
        holder = listener(self.blob_port)
        location = _location_of(holder) if holder is not None else None
        if self._shared or location == self.location:
            self._reused = holder
            log.info("azurite.reused blob=127.0.0.1:%d table=127.0.0.1:%d location=%s", self.blob_port,
                     self.table_port, location or "unknown")
            return
        who = f"pid {holder.pid}" if holder is not None else "a process this user cannot see"
        stop = f"stop it (kill {holder.pid})" if holder is not None else "stop it"
        raise ConfigError(
            f"an Azurite ({who}, serving {location or 'an unknown folder'}) already listens on "
            f"127.0.0.1:{self.blob_port}/{self.table_port}, and it is not this home's ({self.location}); "
            f"{stop}, or give this home other ports in AUTORETRAIN_STORAGE (BlobEndpoint=, TableEndpoint=), "
            "or set AUTORETRAIN_AZURITE=shared to use it with its data as it is."
        )

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._process = subprocess.Popen(
            [str(azurite_binary()), "--silent", "--disableTelemetry", "--skipApiVersionCheck",
             "--location", str(self.location),
             "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
             "--blobPort", str(self.blob_port), "--tablePort", str(self.table_port),
             "--queuePort", str(QUEUE_PORT if self.blob_port == BLOB_PORT else free_port())],
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
