"""`autoretrain ui`: the MLflow UI on the local workspace's tracking store.

Runs `mlflow server` on the store the embedded workspace writes (autoretrain/adapters/localworkspace/tracking.py:
SQLite under AUTORETRAIN_HOME/mlflow, artifacts beside it), on 127.0.0.1 and a free port (or the
one given), and prints its address: every job is a run with its steps as child runs, the chart view
shows the primary metric across retrains, and the Models page the registered versions with the
`champion` alias. Ctrl-C (SIGTERM, a closed terminal) stops the server and its workers.

The server is read-mostly: it may run beside `autoretrain up`, whose jobs keep writing (WAL).
It needs the full `mlflow` package (pyproject's `local` extra, in `.[dev]`), not the function
app's mlflow-skinny.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TextIO

from autoretrain.adapters.localworkspace.tracking import artifact_root, mlflow_missing, store_folder, tracking_uri
from autoretrain.domain.errors import AutoretrainError, ConfigError
from autoretrain.local.azurite import free_port
from autoretrain.waiting import start_and_poll

__all__ = ["MlflowUI", "run_ui", "ui_command"]


def ui_command(home: Path, *, host: str, port: int, python: str = sys.executable) -> list[str]:
    """The `mlflow server` command line for the store under `home`."""
    return [
        python, "-m", "mlflow", "server",
        "--backend-store-uri", tracking_uri(home),
        "--registry-store-uri", tracking_uri(home),
        # Runs keep the artifact location they were made with (a local folder): the UI reads it
        # there, so the server proxies no artifacts.
        "--default-artifact-root", artifact_root(home).as_uri(),
        "--no-serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]


class MlflowUI:
    """One `mlflow server` process in a process group of its own; `stop()` ends the group."""

    def __init__(self, home: Path, *, host: str = "127.0.0.1", port: int = 0, python: str = sys.executable) -> None:
        missing = mlflow_missing()
        if missing is not None:
            raise ConfigError(f"autoretrain ui needs the MLflow UI server: {missing}")
        self.home = Path(home).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.command = ui_command(self.home, host=host, port=self.port, python=python)
        self.log_path = store_folder(self.home) / "ui.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> MlflowUI:
        artifact_root(self.home).mkdir(parents=True, exist_ok=True)
        try:
            start_and_poll(self._spawn, self.healthy, timeout, interval=0.2)
        except ChildProcessError:
            code = self._process.returncode if self._process else None
            self._process = None
            raise AutoretrainError(f"mlflow server exited at start (code {code}): {self._last_log_line()}") from None
        except TimeoutError:
            self.stop()  # its workers too: start_and_poll has stopped only the server's own process
            raise AutoretrainError(
                f"mlflow server did not answer {self.url}/health within {timeout:.0f} s; see {self.log_path}"
            ) from None
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        # No job runners (GenAI evaluation jobs, periodic tasks): this UI only reads runs and models.
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log_path.open("ab") as log_file:
            # Its own session: Ctrl-C reaches this process, which stops the server's whole group once.
            self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log_file,
                                             stderr=log_file, env=env, start_new_session=True)
        return self._process

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def exited(self) -> int | None:
        """The server's exit code once it has ended by itself (None: running)."""
        return self._process.poll() if self._process is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the server's process group (it and its workers), SIGKILL after `timeout`."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Workers that outlived the server's own process.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def _last_log_line(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        return lines[-1].strip()[:300] if lines else f"no output; see {self.log_path}"

    def __enter__(self) -> MlflowUI:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()


def experiment_id(home: Path, experiment: str) -> str | None:
    """The experiment's id in the store, read without MLflow (None: no job has run yet)."""
    path = store_folder(home) / "mlflow.db"
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def run_ui(
    home: Path, *, experiment: str, host: str = "127.0.0.1", port: int = 0, out: TextIO = sys.stdout,
    stop: threading.Event | None = None, signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM,
                                                                              signal.SIGHUP),
) -> int:
    """Serve the UI until Ctrl-C (or `stop` is set); 0 on a clean stop, else the server's exit code."""
    stop = stop or threading.Event()
    for sig in signals:
        signal.signal(sig, lambda *_: stop.set())
    ui = MlflowUI(home, host=host, port=port)
    print(f"starting the MLflow UI on {tracking_uri(ui.home)} ...", file=out, flush=True)
    fresh = not (store_folder(ui.home) / "mlflow.db").is_file()  # the server makes an empty store
    with ui:
        found = experiment_id(ui.home, experiment)
        if found is not None:  # its runs as charts: the primary metric across retrains
            where = f"; experiment '{experiment}' as charts: {ui.url}/#/experiments/{found}/runs?compareRunsMode=CHART"
        elif fresh:
            where = f"; no job has run yet (experiment '{experiment}' appears with the first)"
        else:
            where = ""
        print(f"MLflow UI: {ui.url}{where}. Ctrl-C to stop.", file=out, flush=True)
        while not stop.wait(0.5):
            code = ui.exited()
            if code is not None:
                print(f"mlflow server exited (code {code}); see {ui.log_path}", file=out, flush=True)
                return code or 1
    print("MLflow UI stopped.", file=out, flush=True)
    return 0
