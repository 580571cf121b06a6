"""A worker process of the local Functions host (FUNCTIONS_WORKER_PROCESS_COUNT > 1).

`LocalHost` starts it as `python -m autoretrain.local.hostworker FD`, from the app's folder, with
the host's listening socket inherited as descriptor FD. It imports `function_app` and serves the
same URLs on that socket; timers stay with the main process. Its runtime (bootstrap) is its own:
its local workspace runs the jobs its invocations submit, and does not resume jobs another process
left (the main process does, at start). On SIGTERM it stops taking requests, lets those it has
finish, stops its jobs (left to resume, as at any stop) and exits.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["serve"]

log = logging.getLogger("autoretrain.host")


def serve(listening: int, prepare: Callable[[], None] | None = None) -> int:
    """Serve the function app on the inherited socket `listening` until SIGTERM or SIGINT.
    `prepare`: called once before serving (a benchmark builds its runtime there)."""
    from autoretrain import bootstrap
    from autoretrain.local.host import LocalHost, configure_logging
    from autoretrain.settings import Settings

    configure_logging()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if prepare is not None:
        prepare()
    storage = Settings.from_env().storage_connection
    host = LocalHost("function_app", app_root=Path.cwd(), timers=False, storage=storage).start(listening=listening)
    try:
        stop.wait()
    finally:
        host.stop()
        bootstrap.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m autoretrain.local.hostworker LISTENING_FD", file=sys.stderr)
        return 2
    return serve(int(args[0]))


if __name__ == "__main__":
    raise SystemExit(main())
