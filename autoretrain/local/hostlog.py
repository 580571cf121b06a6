"""The local host's log lines in the real host's console shape."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO

from autoretrain.logs import RedactingFilter

__all__ = ["configure_logging", "log", "now_iso"]

# One logger for the host and its parts (HTTP, timers, worker processes): one name to filter on.
log = logging.getLogger("autoretrain.host")


class _HostFormatter(logging.Formatter):
    """`[2026-11-25T15:04:23.123Z] message`, the Functions host's console shape."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        text = f"[{stamp}Z] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(stream: IO[str] | None = None, level: int = logging.INFO) -> logging.Handler:
    """Send every log line (the host's and the functions' own) to `stream` in the host's shape."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_HostFormatter())
    # The library warns about auth levels on the root logger for every non-HTTP app, and the
    # Azure SDKs log each HTTP call at INFO; the real host's console shows neither.
    handler.addFilter(lambda record: not record.getMessage().startswith("Auth level is not applied"))
    handler.addFilter(RedactingFilter())  # no secret, token, SAS or connection string reaches the console
    logging.getLogger("azure").setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def now_iso() -> str:
    """Now, as the host stamps trigger reasons and timer status: 2026-11-25T15:04:23.123Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
