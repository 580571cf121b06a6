"""`wait_until` and `start_and_poll`: the one way the project waits for something."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from autoretrain.waiting import start_and_poll, wait_until


def test_wait_until_returns_as_soon_as_the_condition_holds() -> None:
    calls = iter([False, False, True])
    started = time.monotonic()
    assert wait_until(lambda: next(calls), 5, interval=0.01) is True
    assert time.monotonic() - started < 1


def test_wait_until_gives_up_at_the_deadline_after_a_last_look() -> None:
    looks: list[float] = []
    assert wait_until(lambda: looks.append(time.monotonic()) or False, 0.2, interval=0.05) is False
    assert len(looks) >= 3 and looks[-1] - looks[0] >= 0.15


def test_start_and_poll_returns_the_process_once_it_serves() -> None:
    process = start_and_poll(lambda: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]),
                             lambda: True, 5)
    try:
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_start_and_poll_says_when_the_process_died_first() -> None:
    with pytest.raises(ChildProcessError, match="exited with code 3 before it was ready"):
        start_and_poll(lambda: subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]), lambda: False, 10)


def test_start_and_poll_stops_a_process_that_never_serves() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]))
        return started[0]

    with pytest.raises(TimeoutError, match=r"not ready within 0\.3 s"):
        start_and_poll(start, lambda: False, 0.3)
    assert started[0].poll() is not None
