"""What the commands share: the local Azurite they may need, Ctrl-C, the status table."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from autoretrain.domain import LedgerRecord
from autoretrain.logs import printable
from autoretrain.settings import Settings

__all__ = [
    "STATUS_COLUMNS", "azurite_for", "console_for", "print_table", "records_named", "status_row", "stop_signals",
    "wait_for_ctrl_c",
]


log = logging.getLogger("autoretrain.cli")


STATUS_COLUMNS = ("blob", "etag", "state", "attempt", "data_version", "job", "model_version", "metrics", "promoted",
                  "decision", "reason")


# A line as long as its content: no cell is wrapped, and no column squeezed, to fit a width.
_UNWRAPPED = 100_000


def console_for(out: TextIO, *, width: int | None = None) -> Console:
    """A rich Console on `out`: colour and the terminal's width on a terminal; anywhere else (a pipe,
    a file, a test's capture) plain text without escape codes, each line as long as its content."""
    terminal = out.isatty()
    return Console(
        file=out, force_terminal=terminal, no_color=not terminal, width=width or (None if terminal else _UNWRAPPED),
        soft_wrap=not terminal, markup=False, emoji=False, highlight=False,
    )


def _cell(value: Any) -> Text:
    """A value as a cell: one line of plain text whatever a name holds (control characters escaped,
    `[bold]` not read as markup)."""
    if value is None:
        return Text("-")
    if isinstance(value, float):
        return Text(f"{value:.4f}")
    if isinstance(value, dict):
        value = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
    return Text(printable(str(value)))


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO, *, width: int = 60) -> None:
    """One row per dict, a column per name: upper-case headers, cells two spaces apart, "-" for none,
    a cell longer than `width` cut with "…". The same columns on a terminal (bold headers) and in a pipe."""
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold", show_edge=False)
    for column in columns:
        table.add_column(Text(printable(column.upper())), max_width=width, overflow="ellipsis", no_wrap=True)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    # As wide as its content on a terminal too: a narrow one wraps the lines, and every column stays.
    console = console_for(out, width=_UNWRAPPED)
    with console.capture() as captured:
        console.print(table)
    # Cells are padded to their column's width: the line ends where its last value does.
    out.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def status_row(record: LedgerRecord) -> dict[str, Any]:
    row = record.as_row()
    if record.metrics:
        # The gate's two numbers, on the same test rows: this model's and the champion's.
        metrics: dict[str, Any] = {record.metrics.primary: record.metrics.primary_value}
        if record.metrics.champion_value is not None:
            metrics["champion"] = record.metrics.champion_value
        if record.metrics.test_rows is not None:
            metrics["rows"] = record.metrics.test_rows
        row["metrics"] = metrics
    return row


def azurite_for(settings: Settings):  # type: ignore[no-untyped-def]
    from autoretrain.local.azurite import Azurite

    if settings.storage_connection is None:
        return contextlib.nullcontext()  # Azure storage: nothing to start
    return Azurite.for_connection(settings.home, settings.storage_connection, shared=settings.azurite_shared)


def stop_signals() -> threading.Event:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal closing), caught from now on: each sets the
    event, for a clean stop (jobs left to resume, Azurite's last save completed).

    Call it before anything starts. Set explicitly: a shell starts background jobs with SIGINT
    ignored, and a signal that came while the stack was starting was lost (SIGINT) or killed the
    process half-way, with Azurite left running (SIGTERM, SIGHUP). Now the stack starts, then stops."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def wait_for_ctrl_c(stop: threading.Event) -> None:
    """Until one of `stop_signals()` comes (at once if one came already)."""
    while not stop.wait(0.5):
        pass
    log.info("Stopping: waiting for running functions and jobs to finish")


def records_named(settings: Settings, records: Sequence[LedgerRecord], target: str) -> list[LedgerRecord]:
    """The records `target` names, with every retrain of them: a work key, a blob path, or a name
    in the incoming container (all its versions)."""
    name = target.removeprefix(f"{settings.incoming_container}/")
    incoming = settings.incoming_container
    origins = {
        r.origin for r in records
        if target in (r.key.value, r.blob.path) or (r.blob.container == incoming and r.blob.name == name)
    }
    return [r for r in records if r.origin in origins]
