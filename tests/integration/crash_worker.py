"""Run one ingest or one complete on the real local parts, and die at a chosen port call.

    python crash_worker.py ingest|complete CONTAINER NAME ETAG PORT METHOD NTH

The process ends with os._exit(137) right after the NTH call of PORT.METHOD returns, as a SIGKILL
would end it: no cleanup, no lease given back, nothing flushed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from autoretrain import loop
from autoretrain.bootstrap import bootstrap
from autoretrain.domain import BlobRef, WorkKey
from autoretrain.settings import Settings

KILLED = 137


class DiesAfter:
    def __init__(self, target: Any, method: str, nth: int) -> None:
        self._target, self._method, self._left = target, method, nth

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name != self._method:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            self._left -= 1
            if self._left == 0:
                os._exit(KILLED)
            return result

        return call


def main(mode: str, container: str, name: str, etag: str, port: str, method: str, nth: str) -> int:
    deps = bootstrap(Settings.from_env(), worker=False)
    ports = {"ledger": deps.ledger, "workspace": deps.workspace, "blobs": deps.blobs}
    ports[port] = DiesAfter(ports[port], method, int(nth))
    crashing = loop.Deps(config=deps.config, contract=deps.contract, clock=deps.clock, **ports)
    blob = BlobRef(container, name, etag)
    if mode == "ingest":
        loop.ingest_blob(blob, crashing, event_id="crash-worker", content_length=None)
    else:
        record = deps.ledger.get(WorkKey.for_blob(blob))
        assert record is not None, "ingest the blob before completing it"
        loop.complete_record(record, crashing)
    return 0  # the crash point was never reached


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
