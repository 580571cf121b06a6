"""A helper process of the workspace (a warm step runner, the MLflow tracker) and its connection.

The workspace starts `python -c CODE` with one end of a `multiprocessing.Pipe` (a socket pair) as an
inherited descriptor; the two sides then `send` and `recv` whole (pickled) Python objects. Only the
two processes hold the socket pair, so it needs no authkey. The helper's stdout and stderr stay free
for whatever its libraries print, and when either side ends the other reads EOF instead of a half
line. The helper dies with the thread that started it (`die_with_parent`).

A `ForkedHelper` is a helper another helper forked for us (the MLflow tracker, forked by the warm
step runner, which has imported MLflow already): the runner is handed the helper's end of a new
socket pair over its own connection (`send_handle`, SCM_RIGHTS), and the helper lives as long as
that connection.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from multiprocessing.reduction import send_handle
from typing import IO, Any

__all__ = ["ForkedHelper", "Helper", "die_with_parent", "to_parent"]

_FD = "AUTORETRAIN_CHANNEL_FD"


def die_with_parent() -> None:
    """In a child, before exec: on Linux, die when the process (strictly: the thread) that started
    it dies, so a SIGKILL of the stack orphans nothing; its own session keeps Ctrl-C away."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Channel:
    """Our end of a helper's connection: whole messages each way, and one line naming the helper
    when it has exited."""

    def __init__(self, connection: Connection, what: str) -> None:
        self._connection = connection
        self._what = what

    def call(self, message: Any) -> Any:
        """Send `message` and return the helper's answer."""
        self.send(message)
        return self.receive()

    def send(self, message: Any) -> None:
        """Send `message`; RuntimeError naming the helper when it has exited."""
        try:
            self._connection.send(message)
        except OSError as exc:
            raise RuntimeError(self._gone()) from exc

    def receive(self) -> Any:
        """The helper's next message; RuntimeError naming it (and its exit code) when it has exited."""
        try:
            return self._connection.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError(self._gone()) from exc

    def send_handle(self, handle: int) -> None:
        """Send the descriptor `handle` itself (SCM_RIGHTS): the helper gets its own copy."""
        try:
            send_handle(self._connection, handle, 0)
        except OSError as exc:
            raise RuntimeError(self._gone()) from exc

    def _gone(self) -> str:
        return f"the {self._what} exited"


class Helper(_Channel):
    """`python -c code`, started now, and our end of its connection. Its stdout and stderr go to
    `output`; its own session; it dies with the calling thread (see `die_with_parent`)."""

    def __init__(
        self, code: str, *, python: str, env: Mapping[str, str], what: str, output: IO[bytes] | int = subprocess.DEVNULL
    ) -> None:
        ours, theirs = Pipe()
        try:
            self.process = subprocess.Popen(
                [python, "-c", code], stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                env={**env, _FD: str(theirs.fileno())}, pass_fds=(theirs.fileno(),),
                start_new_session=True, preexec_fn=die_with_parent,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the helper's now: when it exits, our recv() reads EOF
        super().__init__(ours, what)

    def _gone(self) -> str:
        return f"the {self._what} exited (code {self._exit_code()})"

    def _exit_code(self) -> int | None:
        """The helper's exit code: its end of the connection closes a moment before it is reaped."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=1.0)
        return None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, *, terminate: bool = False, timeout: float = 5.0) -> None:
        """Close the connection (the helper reads EOF and returns), after SIGTERM if `terminate`;
        SIGKILL if it is still there after `timeout`."""
        if terminate and self.alive:
            self.process.terminate()
        self._connection.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ForkedHelper(_Channel):
    """A helper forked by another process (the warm step runner) and handed our end of its
    connection: not our child, so it lives as long as its connection, not as this thread."""

    def __init__(self, pid: int, connection: Connection, what: str) -> None:
        super().__init__(connection, what)
        self.pid = pid

    @property
    def alive(self) -> bool:
        """Running: an exited helper whose parent died waits for init to reap it, which may be slow."""
        if sys.platform.startswith("linux"):
            try:
                with open(f"/proc/{self.pid}/stat", "rb") as stat:
                    return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
            except FileNotFoundError:
                return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, *, terminate: bool = False, timeout: float = 5.0) -> None:
        """Close the connection (the helper reads EOF and returns), after SIGTERM if `terminate`;
        SIGKILL if it is still there after `timeout`."""
        if terminate:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        self._connection.close()
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def to_parent() -> Connection:
    """In the helper: its connection to the workspace that started it."""
    return Connection(int(os.environ.pop(_FD)))
