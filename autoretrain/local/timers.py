"""The local host's timers: each timer function on its NCRONTAB schedule, as the real host runs them
(`%NAME%` schedules read from the app settings, IsPastDue when late, one run of a timer at a time)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from azure.functions.timer import TimerRequest

from autoretrain.local.appindex import FunctionInfo, resolve_setting
from autoretrain.local.hostlog import log, now_iso
from autoretrain.schedule import TimerSchedule

__all__ = ["TimerRunner"]

# Late by more than this many seconds means the host was busy or asleep: the runtime's IsPastDue.
_PAST_DUE_SECONDS = 5


class TimerRunner:
    """Fire `timers` on their schedules, each run through `execute`, until `stopping` is set."""

    def __init__(
        self, timers: Sequence[FunctionInfo], execute: Callable[[FunctionInfo, Any, str], bool],
        stopping: threading.Event,
    ) -> None:
        # Like the real host, a schedule may name an app setting: %NAME%. A bad one stops the start.
        self._schedules = {info.name: TimerSchedule.parse(resolve_setting(info.schedule or "")) for info in timers}
        self._timers = [replace(info, schedule=self._schedules[info.name].expression) for info in timers]
        self._execute = execute
        self._stopping = stopping
        self._running: set[str] = set()
        self._running_lock = threading.Lock()

    def run(self) -> None:
        """The timer loop: sleep until the next one is due (waking each second to see a stop)."""
        now = datetime.now(UTC)
        due = {info.name: self._schedules[info.name].next_after(now) for info in self._timers}
        last: dict[str, datetime | None] = dict.fromkeys(due)
        for info in self._timers:
            if info.run_on_startup:
                self._fire(info, None, due[info.name], past_due=False)
        while not self._stopping.is_set():
            name = min(due, key=lambda n: due[n])
            wait = (due[name] - datetime.now(UTC)).total_seconds()
            if wait > 0:
                if self._stopping.wait(min(wait, 1.0)):
                    return
                continue
            info = next(i for i in self._timers if i.name == name)
            fired_at = due[name]
            due[name] = self._schedules[name].next_after(datetime.now(UTC))
            late = (datetime.now(UTC) - fired_at).total_seconds() > _PAST_DUE_SECONDS
            self._fire(info, last[name], due[name], past_due=late)
            last[name] = fired_at

    def _fire(self, info: FunctionInfo, last: datetime | None, next_due: datetime, *, past_due: bool) -> None:
        with self._running_lock:
            if info.name in self._running:
                log.warning("Timer '%s' is still running; skipping this occurrence", info.name)
                return
            self._running.add(info.name)
        status = {
            "Last": last.isoformat() if last else "0001-01-01T00:00:00",
            "Next": next_due.isoformat(),
            "LastUpdated": now_iso(),
        }
        request = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})

        def run() -> None:
            try:
                self._execute(info, request, f"Timer fired at {now_iso()}")
            finally:
                with self._running_lock:
                    self._running.discard(info.name)

        threading.Thread(target=run, name=f"timer-{info.name}", daemon=True).start()
