"""`demo`: the whole loop on scikit-learn's wine data, dropped as monthly files."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from autoretrain.bootstrap import PROJECT_ROOT, operator
from autoretrain.cli.common import STATUS_COLUMNS, console_for, print_table, status_row
from autoretrain.domain import BlobRef, LedgerRecord, LedgerState, WorkKey
from autoretrain.domain.errors import AutoretrainError
from autoretrain.domain.ports import Ledger
from autoretrain.local import host_answers
from autoretrain.loop.score import is_scoring
from autoretrain.settings import Settings
from autoretrain.waiting import wait_until

__all__ = ["cmd_demo"]


def _load_sample_module() -> Any:
    path = PROJECT_ROOT / "ml" / "sample" / "wine.py"
    spec = importlib.util.spec_from_file_location("autoretrain_demo_wine", path)
    if spec is None or spec.loader is None:
        raise AutoretrainError(f"{path}: cannot load the demo data module.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _burst_files(folder: Path, count: int = 3) -> list[Path]:
    """A week's worth of wine files each, dropped together while a job runs: they are one job."""
    weeks = _load_sample_module().write_monthly_drops(folder / "raw", months=count, seed=1)
    files = []
    for number, week in enumerate(weeks, start=1):
        files.append(folder / f"2026-week-{number}.csv")
        files[-1].write_bytes(week.read_bytes())
    return files


def _demo_files(folder: Path, months: int) -> list[Path]:
    """The wine data as monthly drops, and one copy of a month with a typo, to be quarantined."""
    files: list[Path] = _load_sample_module().write_monthly_drops(folder, months=months, seed=0)
    good = files[-1].read_text(encoding="utf-8").splitlines()
    header = good[0].split(",")
    row = good[3].split(",")
    row[header.index("alcohol")] = "twelve"
    good[3] = ",".join(row)
    bad = folder / "2026-99-typo.csv"
    bad.write_text("\n".join(good) + "\n", encoding="utf-8")
    return [*files, bad]


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from autoretrain.local.host import configure_logging

    started = time.monotonic()
    console = console_for(sys.stdout)
    settings.home.mkdir(parents=True, exist_ok=True)
    log_path = settings.home / "logs" / "demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The logging handler owns the file until the process ends: threads may still log at exit.
    log_file = log_path.open("a", encoding="utf-8")
    configure_logging(log_file)
    console.print(f"autoretrain demo: home {settings.home}, function logs in {log_path}")
    *months, typo = _demo_files(settings.home / "demo" / "drops", args.months)
    burst = _burst_files(settings.home / "demo" / "burst")
    from autoretrain.local.eventgrid import poke

    with contextlib.ExitStack() as running:
        _start_stack(settings, running, console)
        blobs, ledger = operator(settings).blobs, operator(settings).ledger
        with _Progress(ledger, started, console, total=len(months) + len(burst) + 1) as progress:

            def drop(path: Path) -> WorkKey:
                ref = blobs.upload(settings.incoming_container, path.name, path.read_bytes())
                poke(settings.home, settings.incoming_container)  # the watcher looks now, not at its next poll
                console.print(f"  dropped {ref.path} ({path.stat().st_size} bytes)")
                return progress.dropped(path.name, ref)

            # One month after the other, as a customer would: the next drop waits until this one is
            # trained, so each new model is scored against the champion of the month before, on the
            # same test rows (a job scores the champion it was submitted with).
            for path in months[:-1]:
                progress.wait([drop(path)], args.timeout)
            # The last month, and at once a burst of weekly files while its job runs: they wait for
            # it, and all of them are the new data of one next job.
            last = drop(months[-1])
            progress.wait_for(last, LedgerState.SUBMITTED, args.timeout)  # its job is running now
            burst_keys = [drop(path) for path in burst]
            progress.wait([last, *burst_keys], args.timeout)
            progress.wait([drop(typo)], args.timeout)
            progress.wait(progress.drops, args.timeout)
        records = sorted(progress.records.values(), key=lambda r: r.blob.name)
        burst_jobs = sorted({r.job for key, r in progress.records.items() if key in burst_keys and r.job})
    log_file.flush()
    _report(settings, records, started, log_file.name, console)
    console.print(f"The burst: {len(burst)} files dropped at once while a job ran -> {len(burst_jobs)} job(s) "
                  f"({', '.join(burst_jobs)}), not {len(burst)}.")
    unfinished = [r for r in records if not r.state.final]
    return 1 if unfinished or len(records) < len(progress.drops) else 0


def _start_stack(settings: Settings, running: contextlib.ExitStack, console: Console) -> None:
    """The local stack for the demo's length, or the one `autoretrain up` already runs."""
    from autoretrain.local.stack import LocalStack

    if host_answers(settings.host_url):
        # `autoretrain up` is already running: drop into it instead of starting a second stack.
        console.print(f"  using the running autoretrain at {settings.host_url}")
        return
    stack = running.enter_context(LocalStack(settings, poll_interval=0.5))
    console.print(f"  Azurite {'started' if stack.azurite.started_here else 'already running'}, "
                  f"Functions host on {stack.host.url}, Event Grid watching '{settings.incoming_container}'")


def _report(settings: Settings, records: list[LedgerRecord], started: float, log_name: str, console: Console) -> None:
    """The table of every drop, the quarantined ones' reasons, and where to look next."""
    console.print()
    print_table([status_row(r) for r in records], STATUS_COLUMNS, sys.stdout)
    quarantined = [r for r in records if r.state is LedgerState.QUARANTINED]
    for r in quarantined:
        copy = f"{settings.quarantine_container}/{r.blob.copy_name(r.key)}"
        console.print(f"\nquarantined {r.blob.path} -> {copy}\n  reason: {r.reason}")
    done = [r for r in records if r.state is LedgerState.DONE]
    models = len({r.model_version for r in done})
    held = sum(1 for r in records if r.state is LedgerState.HELD)
    console.print(f"\n{len(done)} of {len(records)} drops trained, into {models} model(s); "
                  f"{f'{held} held by the champion; ' if held else ''}{len(quarantined)} quarantined; "
                  f"demo wall time {time.monotonic() - started:.1f} s.")
    story = (done or records)[-1].blob.name if records else "FILE"
    console.print(f"Where to look: the log lines in {log_name}; one file's story: `autoretrain status {story}`; "
                  "the metric across retrains: `autoretrain ui`.")


def _detail(record: LedgerRecord, dropped_at: float) -> str:
    """What a state change adds: the job and its data when submitted, the model and gate when done."""
    if record.state is LedgerState.SUBMITTED and is_scoring(record, record.job):  # champion_slips
        return f"data {record.data_version}, job {record.job} scores champion v{record.champion} on its rows first"
    if record.state is LedgerState.HELD:
        return record.decision or "held"
    if record.state is LedgerState.SUBMITTED:
        champion = f", scores v{record.champion} on the same rows" if record.champion else ""
        return (f"data {record.data_version}, job {record.job}, "
                f"trains on {record.trained_on} of {record.members} version(s){champion}")
    if record.state is LedgerState.WAITING:
        return f"data {record.data_version}, waiting for the job in flight"
    if record.state is LedgerState.DONE:
        gate = record.decision or ("promoted" if record.promoted else "not promoted")
        return f"model {record.model_version}, {time.monotonic() - dropped_at:.1f} s after the drop; gate: {gate}"
    return record.reason or ""


class _Progress:
    """Prints each drop's state changes as the ledger records them, under a live bar of the drops
    finished (on a terminal; elsewhere only the lines); keeps the latest records."""

    def __init__(self, ledger: Ledger, started: float, console: Console, *, total: int) -> None:
        self._ledger = ledger
        self._started = started
        self._console = console
        self._dropped: dict[WorkKey, tuple[str, float]] = {}
        self.records: dict[WorkKey, LedgerRecord] = {}
        # Only on a terminal, and gone from it at the end (transient): pipes and logs get only the lines.
        self._live = console.is_terminal
        self._bar = Progress(
            SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=True,
        )
        self._task = self._bar.add_task("drops trained", total=total)

    @property
    def drops(self) -> list[WorkKey]:
        return list(self._dropped)

    def dropped(self, name: str, ref: BlobRef) -> WorkKey:
        key = WorkKey.for_blob(ref)
        self._dropped[key] = (name, time.monotonic())
        self._bar.update(self._task, description=f"{name}: uploaded")
        return key

    def poll(self, key: WorkKey) -> LedgerRecord | None:
        record = self._ledger.get(key)
        previous = self.records.get(key)
        if record is None or (previous is not None and previous.state == record.state):
            return record
        self.records[key] = record
        name, at = self._dropped[key]
        self._console.print(
            f"  [{time.monotonic() - self._started:6.1f}s] {name:<18} {record.state.value:<11} {_detail(record, at)}"
        )
        finished = sum(1 for r in self.records.values() if r.state.final)
        self._bar.update(self._task, description=f"{name}: {record.state.value}", completed=finished)
        return record

    def wait_for(self, key: WorkKey, state: LedgerState, timeout: float) -> None:
        """Until `key` has reached `state` (or ended), or `timeout` seconds passed."""
        wait_until(lambda: (r := self.poll(key)) is not None and (r.state is state or r.state.final), timeout)

    def wait(self, keys: Iterable[WorkKey], timeout: float) -> None:
        """Until every one of `keys` is in a final state, or `timeout` seconds passed."""
        pending = list(keys)

        def settled() -> bool:
            pending[:] = [k for k in pending if not ((r := self.poll(k)) is not None and r.state.final)]
            return not pending

        wait_until(settled, timeout)

    def __enter__(self) -> _Progress:
        if self._live:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._bar.stop()
