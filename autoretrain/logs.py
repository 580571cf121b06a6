"""Structured log lines with bound context, on the standard library's logging.

`bound(work_key=..., blob=...)` at a trigger's entry puts those fields on every line logged inside
it, so ops can grep one work key through ingest, the pipeline run and completion. A line reads
`ingest.submitted work_key=3f2a... blob=incoming/2026-01.csv job=autoretrain-3f2a...`; the same
fields ride on the record as `record.fields` for tests and JSON handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

__all__ = ["bound", "current", "log_event"]

_context: ContextVar[Mapping[str, Any]] = ContextVar("autoretrain_log_context", default=MappingProxyType({}))


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind fields to every log line written inside the block (thread- and task-local)."""
    token = _context.set(MappingProxyType({**_context.get(), **fields}))
    try:
        yield
    finally:
        _context.reset(token)


def current() -> Mapping[str, Any]:
    return _context.get()


def _show(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch.isspace() or ch in '"=' for ch in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log `event key=value ...` with the bound context first, then the given fields."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    line = " ".join([event, *(f"{k}={_show(v)}" for k, v in merged.items())])
    logger.log(level, "%s", line, extra={"event": event, "fields": merged})
