"""Waiting for a condition, the one way: `wait_until` polls with a deadline; `start_and_poll` starts
a process and waits until it serves, or says why it never will."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

__all__ = ["start_and_poll", "wait_until"]


def wait_until(condition: Callable[[], bool], timeout: float, *, interval: float = 0.1) -> bool:
    """Call `condition` every `interval` seconds until it is true (True) or `timeout` passed (False).
    It is always called at least once, and once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))


def start_and_poll(
    start: Callable[[], subprocess.Popen[bytes]], ready: Callable[[], bool], timeout: float, *, interval: float = 0.1,
) -> subprocess.Popen[bytes]:
    """Start a process and wait until `ready()` says it serves. A process that exits first, or is not
    ready by `timeout`, is stopped and reported: TimeoutError or ChildProcessError, with its exit code."""
    process = start()
    served = wait_until(lambda: process.poll() is not None or ready(), timeout, interval=interval)
    if served and process.poll() is None:
        return process
    if process.poll() is None:
        process.kill()
        process.wait()
        raise TimeoutError(f"not ready within {timeout:g} s")
    raise ChildProcessError(f"exited with code {process.returncode} before it was ready")
