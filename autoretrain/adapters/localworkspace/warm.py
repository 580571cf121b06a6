"""A warm step runner for the local workspace: a prefork server, so a step does not pay for a fresh
interpreter and its imports (pandas, scikit-learn, skops, MLflow: about two seconds a step).

The server is a Python process that imports the pipeline's heavy libraries once, then, for each
step, forks. The child is the step: it changes to the step's code snapshot, points stdout and
stderr at the step's log files, sets the step's environment and `sys.argv`, and runs the
component's own script as `__main__`, exactly the command the YAML names; its exit code is the
step's. Nothing is shared between steps but the already-imported modules, and (when the server's
environment names a SQLite MLflow tracking store) that store, opened once: a step that logs to its
run pays neither SQLAlchemy's import nor the store's schema check (about a second, then 50-80 ms).

Protocol (dicts over the server's connection, channel.py), each request with the caller's `id`,
which the answers repeat: the workspace sends `{"id": I, "argv": [...], "cwd": ..., "stdout": ...,
"stderr": ..., "env": {...}}`; the server answers `{"id": I, "pid": N}` when the step starts and
`{"id": I, "code": N}` when it ends; to `{"id": I, "tracking": URI}` (the store exists now) it opens
that store and answers `{"id": I, "tracking": True}`; to `{"id": I, "tracker": LOG}`, followed by a
descriptor (SCM_RIGHTS), it forks the MLflow tracker on that connection and answers `{"id": I, "pid":
N}`. One server runs any number of steps at once,
each in its own fork: the workspace keeps one server, whatever the number of jobs running (a second
server would cost its own imports: about three seconds of CPU and 200 MB).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import select
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from pathlib import Path
from typing import Any

# die_with_parent lives in channel.py; it is named here too, where the local host has always found it.
from autoretrain.adapters.localworkspace.channel import ForkedHelper, Helper, die_with_parent, to_parent
from autoretrain.loading import no_collection

__all__ = ["RunnerDied", "WarmRunner", "die_with_parent", "serve"]

# Imported once by the server; each step's fork starts with them in memory.
_PRELOAD = ("numpy", "pandas", "yaml", "sklearn.pipeline", "sklearn.compose", "sklearn.linear_model",
            "sklearn.ensemble", "sklearn.metrics", "sklearn.impute", "sklearn.preprocessing", "skops.io",
            "mlflow.sklearn", "mlflow.models", "pyarrow.parquet")


# With a local (SQLite) tracking store: its modules, imported once too.
_PRELOAD_TRACKING = ("sqlalchemy", "alembic", "mlflow.store.tracking.sqlalchemy_store",
                     "mlflow.store.model_registry.sqlalchemy_store", "mlflow.tracking.fluent")


class RunnerDied(RuntimeError):
    """The warm server exited: the steps it ran died with it, through no fault of theirs."""


class WarmRunner:
    """One prefork server process; `run(...)` runs one step in a fork of it and returns its exit code.
    Safe to call from several threads at once: their steps run side by side."""

    def __init__(self, python: str, env: Mapping[str, str]) -> None:
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, queue.SimpleQueue[dict[str, Any]]] = {}
        self._waiting_lock = threading.Lock()
        self._gone: str | None = None  # why the server cannot answer any more
        # BLAS and OpenMP threads must not exist before a fork: one thread each in the server.
        server_env = {**env, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        # Dies with the workspace's process (PR_SET_PDEATHSIG). It fires when the *thread* that
        # started the server ends, so runners are started on threads that live as long.
        self._server = Helper("from autoretrain.adapters.localworkspace.warm import serve; serve()",
                              python=python, env=server_env, what="warm step runner")
        ready = self._server.receive()
        if ready.get("ready") is not True:
            raise RuntimeError(f"the warm step runner did not start: {ready}")
        threading.Thread(target=self._read, name="warm-runner-answers", daemon=True).start()

    def run(
        self, argv: Sequence[str], cwd: Path, stdout: Path, stderr: Path, env: Mapping[str, str],
        on_start: Callable[[int], None],
    ) -> int:
        ident, answers = self._ask({"argv": list(argv), "cwd": str(cwd), "stdout": str(stdout),
                                    "stderr": str(stderr), "env": dict(env)})
        try:
            on_start(int(self._answer(answers)["pid"]))
            return int(self._answer(answers)["code"])
        finally:
            self._forget(ident)

    def open_tracking(self, uri: str) -> bool:
        """Have the server open the MLflow store at `uri` (once it exists), so no step opens it."""
        ident, answers = self._ask({"tracking": uri})
        try:
            return bool(self._answer(answers)["tracking"])
        finally:
            self._forget(ident)

    def fork_tracker(self, log: Path) -> ForkedHelper:
        """Fork the MLflow tracker (tracker.py) from the server, which has imported MLflow and
        SQLAlchemy already (a tracker started cold imports them again: about 1.8 s of CPU). Its
        connection's other end is handed to the server over the server's own (SCM_RIGHTS); its
        output goes to `log`. It lives as long as that connection, not as the server."""
        ours, theirs = Pipe()
        try:
            ident, answers = self._ask({"tracker": str(log)}, handle=theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the server has its own copy now, and the tracker after it
        try:
            return ForkedHelper(int(self._answer(answers)["pid"]), ours, "tracker")
        except BaseException:
            ours.close()
            raise
        finally:
            self._forget(ident)

    @property
    def alive(self) -> bool:
        return self._server.alive

    def close(self) -> None:
        self._server.stop(terminate=True)  # a step running in a fork dies with the server

    def _ask(
        self, request: dict[str, Any], *, handle: int | None = None
    ) -> tuple[int, queue.SimpleQueue[dict[str, Any]]]:
        """Send `request` under a new id, and the descriptor `handle` right after it if given; (the
        id, the queue its answers arrive on)."""
        answers: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        with self._waiting_lock:
            if self._gone is not None:
                raise RunnerDied(self._gone)
            ident = next(self._ids)
            self._waiting[ident] = answers
        request["id"] = ident
        try:
            with self._send_lock:
                self._server.send(request)
                if handle is not None:
                    self._server.send_handle(handle)
        except RuntimeError as exc:
            self._forget(ident)
            raise RunnerDied(str(exc)) from exc
        except BaseException:
            self._forget(ident)
            raise
        return ident, answers

    def _answer(self, answers: queue.SimpleQueue[dict[str, Any]]) -> dict[str, Any]:
        answer = answers.get()
        if "gone" in answer:
            raise RunnerDied(answer["gone"])
        return answer

    def _forget(self, ident: int) -> None:
        with self._waiting_lock:
            self._waiting.pop(ident, None)

    def _read(self) -> None:
        """Hand each answer to the caller waiting for it; when the server is gone, tell them all."""
        while True:
            try:
                answer = self._server.receive()
            except RuntimeError as exc:
                with self._waiting_lock:
                    self._gone = str(exc)
                    waiting = list(self._waiting.values())
                for answers in waiting:
                    answers.put({"gone": str(exc)})
                return
            with self._waiting_lock:
                caller = self._waiting.get(answer.pop("id", None))
            if caller is not None:
                caller.put(answer)


def serve() -> None:
    """The server's loop (in its own process): requests and ended steps, as they come."""
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    local_store = tracking.startswith("sqlite:")
    _preload(local_store)
    parent = to_parent()
    # An ended step wakes the loop: SIGCHLD writes a byte to this pipe (the handler itself does nothing).
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake)
    parent.send({"ready": True})
    steps: dict[int, int] = {}  # pid -> the request's id
    trackers: set[int] = set()  # forked trackers: reaped when they end, told to nobody
    opened = False
    while True:
        ready, _, _ = select.select([parent.fileno(), woken], [], [])
        if woken in ready:
            os.read(woken, 4096)
            _reap(steps, parent, trackers)
        if parent.fileno() not in ready:
            continue
        try:
            request = parent.recv()
        except EOFError:  # the workspace closed its end: it is done with this server
            return
        ident = request.pop("id", None)
        if "tracker" in request:  # its connection's end follows the request
            connection = recv_handle(parent)
            pid = os.fork()
            if pid == 0:
                _run_tracker(request["tracker"], connection, parent, (woken, wake))
            os.close(connection)
            trackers.add(pid)
            parent.send({"id": ident, "pid": pid})
            continue
        if "tracking" in request:  # the workspace's tracker has made the store: open it now
            opened = opened or (local_store and request["tracking"] == tracking and _open_tracking_store(tracking))
            parent.send({"id": ident, "tracking": opened})
            continue
        if local_store and not opened and request["env"].get("MLFLOW_TRACKING_URI") == tracking:
            # Not opened yet: the store exists by now (the workspace made this step's run in it).
            opened = _open_tracking_store(tracking)
        pid = os.fork()
        if pid == 0:  # the step
            _run_step(request, parent, (woken, wake))
        steps[pid] = ident
        parent.send({"id": ident, "pid": pid})
        _reap(steps, parent, trackers)  # one that ended before its pid was told is told now


def _reap(steps: dict[int, int], parent: Connection, trackers: set[int]) -> None:
    """Tell the workspace the exit code of every step that has ended; reap ended trackers."""
    for pid in list(steps):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            parent.send({"id": steps.pop(pid), "code": os.waitstatus_to_exitcode(status)})
    for pid in list(trackers):
        if os.waitpid(pid, os.WNOHANG)[0]:
            trackers.discard(pid)


def _index_installed_packages() -> None:
    """MLflow's map of installed distributions to modules, which `save_model` builds to check the
    model's requirements (a walk of every installed package's files: about 0.3 s a train step): built
    once here, so each forked step finds it built. MLflow's own cache, reached by a private name: if
    that name goes, each step builds it, as it would cold."""
    with contextlib.suppress(Exception):
        from mlflow.utils import requirements_utils

        requirements_utils._init_modules_to_packages_map()  # type: ignore[no-untyped-call]


def _preload(local_store: bool) -> None:
    import gc
    import importlib

    # No collection while the libraries load; one full collection after them frees what they left.
    with no_collection():
        for name in (*_PRELOAD, *(_PRELOAD_TRACKING if local_store else ())):
            # A library that is missing is imported by the step that needs it, as it would be cold.
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        _index_installed_packages()
    # What the imports made lives as long as the server: out of the collector's sight, so a step's
    # full collection walks only the step's own objects (not the libraries': ~150 ms each time).
    gc.collect()
    gc.freeze()


def _open_tracking_store(uri: str) -> bool:
    """Open MLflow's store for `uri` in the server, where every fork finds it cached (MLflow keeps
    one store per URI). No SQLite connection may cross a fork: the engine keeps none between calls
    (NullPool), and a connection left in a reference cycle by the store's first queries is closed
    by a collection now (one inherited makes each step's first write wait ~150 ms on SQLite's lock).
    On any failure each step opens the store itself, as it would cold. True: tried, do not retry."""
    import gc

    os.environ["MLFLOW_SQLALCHEMYSTORE_POOLCLASS"] = "NullPool"
    with contextlib.suppress(Exception):  # a private MLflow API, which may move
        from mlflow.tracking._tracking_service.utils import _get_store

        _get_store(uri)  # type: ignore[no-untyped-call]
    gc.collect()
    gc.freeze()
    return True


def _leave_server(parent: Connection, wakeup: tuple[int, int]) -> None:
    """In a fork: the server's line, its wake-up pipe and its SIGCHLD handling are not the child's."""
    parent.close()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in wakeup:
        os.close(fd)


def _run_tracker(log: str, connection: int, parent: Connection, wakeup: tuple[int, int]) -> None:
    """In the fork: the MLflow tracker, serving `connection` until the workspace closes it (its
    own session: a Ctrl-C at the terminal is the workspace's to handle); never returns."""
    code = 1
    try:
        _leave_server(parent, wakeup)
        os.setsid()
        handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for fd in (1, 2):
            os.dup2(handle, fd)
        os.close(handle)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        import logging

        logging.root.handlers.clear()
        from autoretrain.adapters.localworkspace.tracker import serve

        serve(Connection(connection))
        code = 0
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _run_step(request: Mapping[str, Any], parent: Connection, wakeup: tuple[int, int]) -> None:
    """In the fork: the step, as its own process; never returns."""
    import runpy
    import traceback

    code = 1
    try:
        _leave_server(parent, wakeup)
        die_with_parent()
        os.setpgid(0, 0)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stdin = open(os.devnull)  # noqa: SIM115
        script, *args = request["argv"][1:]
        sys.argv = [script, *args]
        sys.path[0] = request["cwd"]
        # Modules of the code snapshot (contract, datacontract) are the step's own: never a cached copy.
        for name in ("contract", "datacontract", "prep", "train", "evaluate"):
            sys.modules.pop(name, None)
        import logging

        logging.root.handlers.clear()
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
