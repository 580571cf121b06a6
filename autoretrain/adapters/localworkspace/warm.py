"""A warm step runner for the local workspace: a prefork server, so a step does not pay for a fresh
interpreter and its imports (pandas, scikit-learn, skops, MLflow: about two seconds a step).

The server is a Python process that imports the pipeline's heavy libraries once, then, for each
step, forks. The child is the step: it changes to the step's code snapshot, points stdout and
stderr at the step's log files, sets the step's environment and `sys.argv`, and runs the
component's own script as `__main__`, exactly the command the YAML names; its exit code is the
step's. Nothing is shared between steps but the already-imported modules, and (when the server's
environment names a SQLite MLflow tracking store) that store, opened once: a step that logs to its
run pays neither SQLAlchemy's import nor the store's schema check (about a second, then 50-80 ms).

Protocol (dicts over the server's connection, channel.py): the workspace sends
`{"argv": [...], "cwd": ..., "stdout": ..., "stderr": ..., "env": {...}}`; the server answers
`{"pid": N}` when the step starts and `{"code": N}` when it ends; to `{"tracking": URI}` (the store
exists now) it opens that store and answers `{"tracking": True}`. One server runs one step at a
time; the workspace keeps one server per job thread.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# die_with_parent lives in channel.py; it is named here too, where the local host has always found it.
from autoretrain.adapters.localworkspace.channel import Helper, die_with_parent, to_parent

__all__ = ["WarmRunner", "die_with_parent", "serve"]

# Imported once by the server; each step's fork starts with them in memory.
_PRELOAD = ("numpy", "pandas", "yaml", "sklearn.pipeline", "sklearn.compose", "sklearn.linear_model",
            "sklearn.ensemble", "sklearn.metrics", "sklearn.impute", "sklearn.preprocessing", "skops.io",
            "mlflow.sklearn", "mlflow.models", "pyarrow.parquet")


# With a local (SQLite) tracking store: its modules, imported once too.
_PRELOAD_TRACKING = ("sqlalchemy", "alembic", "mlflow.store.tracking.sqlalchemy_store",
                     "mlflow.store.model_registry.sqlalchemy_store", "mlflow.tracking.fluent")


class WarmRunner:
    """One prefork server process; `run(...)` runs one step in a fork of it and returns its exit code."""

    def __init__(self, python: str, env: Mapping[str, str]) -> None:
        self._lock = threading.Lock()
        # BLAS and OpenMP threads must not exist before a fork: one thread each in the server.
        server_env = {**env, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        # Dies with the workspace's process (PR_SET_PDEATHSIG). It fires when the *thread* that
        # started the server ends, so runners are started on threads that live as long.
        self._server = Helper("from autoretrain.adapters.localworkspace.warm import serve; serve()",
                              python=python, env=server_env, what="warm step runner")
        ready = self._server.receive()
        if ready.get("ready") is not True:
            raise RuntimeError(f"the warm step runner did not start: {ready}")

    def run(
        self, argv: Sequence[str], cwd: Path, stdout: Path, stderr: Path, env: Mapping[str, str],
        on_start: Callable[[int], None],
    ) -> int:
        with self._lock:
            started = self._server.call({"argv": list(argv), "cwd": str(cwd), "stdout": str(stdout),
                                         "stderr": str(stderr), "env": dict(env)})
            on_start(int(started["pid"]))
            return int(self._server.receive()["code"])

    def open_tracking(self, uri: str) -> bool:
        """Have the server open the MLflow store at `uri` (once it exists), so no step opens it."""
        with self._lock:
            return bool(self._server.call({"tracking": uri})["tracking"])

    @property
    def alive(self) -> bool:
        return self._server.alive

    def close(self) -> None:
        self._server.stop(terminate=True)  # a step running in a fork dies with the server


def serve() -> None:
    """The server's loop (in its own process)."""
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    local_store = tracking.startswith("sqlite:")
    _preload(local_store)
    parent = to_parent()
    parent.send({"ready": True})
    opened = False
    while True:
        try:
            request = parent.recv()
        except EOFError:  # the workspace closed its end: it is done with this server
            return
        if "tracking" in request:  # the workspace's tracker has made the store: open it now
            opened = opened or (local_store and request["tracking"] == tracking and _open_tracking_store(tracking))
            parent.send({"tracking": opened})
            continue
        if local_store and not opened and request["env"].get("MLFLOW_TRACKING_URI") == tracking:
            # Not opened yet: the store exists by now (the workspace made this step's run in it).
            opened = _open_tracking_store(tracking)
        pid = os.fork()
        if pid == 0:  # the step
            parent.close()  # the server's line, not the step's
            _run_step(request)
        parent.send({"pid": pid})
        _, status = os.waitpid(pid, 0)
        parent.send({"code": os.waitstatus_to_exitcode(status)})


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


def _run_step(request: Mapping[str, Any]) -> None:
    import runpy
    import traceback

    code = 1
    try:
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
