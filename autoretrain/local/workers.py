"""The local host's worker processes (FUNCTIONS_WORKER_PROCESS_COUNT > 1): N-1 processes
(`autoretrain.local.hostworker`) that serve requests from the host's listening socket, started
again when one dies, stopped in order with the host."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from autoretrain.local.hostlog import log

__all__ = ["WorkerProcesses"]


class WorkerProcesses:
    """Keep `count - 1` worker processes (`command` + the listening socket's descriptor) running
    in `app_root` until stopped; process 0 is the host itself."""

    def __init__(self, count: int, command: Sequence[str], app_root: Path | None) -> None:
        self._count = count
        self._command = list(command)
        self._app_root = app_root
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._thread: threading.Thread | None = None

    def start(self, listening: int, stopping: threading.Event) -> None:
        """Start them on their own thread, which keeps them until `stopping` is set."""
        self._thread = threading.Thread(
            target=self._keep, args=(listening, stopping), name="local-host-workers", daemon=True
        )
        self._thread.start()

    def _keep(self, listening: int, stopping: threading.Event) -> None:
        """Start the worker processes and start again any that dies, until `stopping`. Runs on its own
        thread for as long as they do: they die with it (PR_SET_PDEATHSIG), even on SIGKILL."""
        root = str(Path(self._app_root or Path.cwd()).resolve())
        while not stopping.is_set():
            for index in range(1, self._count):
                process = self._processes.get(index)
                if process is not None and process.poll() is None:
                    continue
                if process is not None:
                    log.error("Worker process %d (pid %d) exited with %s; starting it again",
                              index, process.pid, process.returncode)
                self._processes[index] = self._spawn(index, listening, root)
                log.info("Worker process %d started (pid %d)", index, self._processes[index].pid)
            stopping.wait(1.0)

    def _spawn(self, index: int, listening: int, root: str) -> subprocess.Popen[bytes]:
        from autoretrain.adapters.localworkspace.warm import die_with_parent

        return subprocess.Popen(
            [*self._command, str(listening)], pass_fds=(listening,), cwd=root,
            env={**os.environ, "AUTORETRAIN_HOST_WORKER": str(index)}, stdin=subprocess.DEVNULL,
            # Its own session: Ctrl-C reaches this process, which stops the workers in order.
            start_new_session=True, preexec_fn=die_with_parent,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM each worker, which stops taking requests and finishes those it has; SIGKILL after
        `timeout`. Call once `stopping` is set: no worker is started again."""
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for process in self._processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for index, process in self._processes.items():
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("Worker process %d (pid %d) did not stop in %.0f s; killing it", index, process.pid,
                            timeout)
                process.kill()
                process.wait()
        self._processes.clear()
