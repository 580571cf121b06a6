"""`demo`: the whole loop on scikit-learn's wine data, dropped as monthly files."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from autoretrain.bootstrap import PROJECT_ROOT, operator
from autoretrain.cli.common import STATUS_COLUMNS, print_table, status_row
from autoretrain.domain import LedgerRecord, LedgerState, WorkKey
from autoretrain.domain.errors import AutoretrainError
from autoretrain.domain.ports import Ledger
from autoretrain.local import host_answers
from autoretrain.settings import Settings

__all__ = ["cmd_demo"]


def _load_sample_module() -> Any:
    path = PROJECT_ROOT / "ml" / "sample" / "wine.py"
    spec = importlib.util.spec_from_file_location("autoretrain_demo_wine", path)
    if spec is None or spec.loader is None:
        raise AutoretrainError(f"{path}: cannot load the demo data module.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    from autoretrain.local.stack import LocalStack

    started = time.monotonic()
    settings.home.mkdir(parents=True, exist_ok=True)
    log_path = settings.home / "logs" / "demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("a", encoding="utf-8")
    configure_logging(log_file)
    print(f"autoretrain demo: home {settings.home}, function logs in {log_path}", flush=True)
    drops = _demo_files(settings.home / "demo" / "drops", args.months)
    with contextlib.ExitStack() as running:
        if host_answers(settings.host_url):
            # `autoretrain up` is already running: drop into it instead of starting a second stack.
            print(f"  using the running autoretrain at {settings.host_url}", flush=True)
        else:
            stack = running.enter_context(LocalStack(settings, poll_interval=0.5))
            print(f"  Azurite {'started' if stack.azurite.started_here else 'already running'}, "
                  f"Functions host on {stack.host.url}, Event Grid watching '{settings.incoming_container}'",
                  flush=True)
        blobs, ledger = operator(settings).blobs, operator(settings).ledger
        progress = _Progress(ledger, started)
        for path in drops:
            ref = blobs.upload(settings.incoming_container, path.name, path.read_bytes())
            key = WorkKey.for_blob(ref)
            progress.dropped[key] = (path.name, time.monotonic())
            print(f"  dropped {ref.path} ({path.stat().st_size} bytes)", flush=True)
            # One month after the other, as a customer would: the next drop waits until this one is
            # trained, so each new model is scored against the champion of the month before, on the
            # same test rows (a job scores the champion it was submitted with).
            progress.wait([key], lambda r: r.state.final, args.timeout)
        progress.wait(progress.dropped, lambda r: r.state.final, args.timeout)
        records = sorted(progress.records.values(), key=lambda r: r.blob.name)
        dropped = progress.dropped
    log_file.flush()
    print()
    print_table([status_row(r) for r in records], STATUS_COLUMNS, sys.stdout)
    quarantined = [r for r in records if r.state is LedgerState.QUARANTINED]
    for r in quarantined:
        copy = f"{settings.quarantine_container}/{r.blob.copy_name(r.key)}"
        print(f"\nquarantined {r.blob.path} -> {copy}\n  reason: {r.reason}")
    done = [r for r in records if r.state is LedgerState.DONE]
    print(f"\n{len(done)} of {len(records)} drops became models, {len(quarantined)} quarantined; "
          f"demo wall time {time.monotonic() - started:.1f} s.")
    story = (done or records)[-1].blob.name if records else "FILE"
    print(f"Where to look: the log lines in {log_file.name}; one file's story: `autoretrain status {story}`; "
          "the metric across retrains: `autoretrain ui`.")
    unfinished = [r for r in records if not r.state.final]
    return 1 if unfinished or len(records) < len(dropped) else 0


class _Progress:
    """Prints each drop's state changes as the ledger records them; keeps the latest records."""

    def __init__(self, ledger: Ledger, started: float) -> None:
        self._ledger = ledger
        self._started = started
        self.dropped: dict[WorkKey, tuple[str, float]] = {}
        self.records: dict[WorkKey, LedgerRecord] = {}

    def poll(self, key: WorkKey) -> LedgerRecord | None:
        record = self._ledger.get(key)
        previous = self.records.get(key)
        if record is None or (previous is not None and previous.state == record.state):
            return record
        self.records[key] = record
        name, at = self.dropped[key]
        detail = {
            LedgerState.SUBMITTED: (
                f"data {record.data_version}, job {record.job}, "
                f"trains on {record.trained_on} of {record.members} version(s)"
                + (f", scores v{record.champion} on the same rows" if record.champion else "")
            ),
            LedgerState.DONE: (
                f"model {record.model_version}, {time.monotonic() - at:.1f} s after the drop; gate: "
                + (record.decision or ("promoted" if record.promoted else "not promoted"))
            ),
        }.get(record.state, record.reason or "")
        print(f"  [{time.monotonic() - self._started:6.1f}s] {name:<18} {record.state.value:<11} {detail}", flush=True)
        return record

    def wait(self, keys: Iterable[WorkKey], done: Callable[[LedgerRecord], bool], timeout: float) -> None:
        pending, deadline = list(keys), time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            pending = [k for k in pending if not ((r := self.poll(k)) is not None and done(r))]
            if pending:
                time.sleep(0.1)
