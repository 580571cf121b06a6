"""How a step's process runs on this machine, and how the workspace stops it.

A step runs in a fork of the workspace's warm runner (warm.py: the heavy libraries imported once;
one runner for all the jobs running),
or, without one, as a subprocess of this Python in its own session (a Ctrl-C in the terminal
reaches the stack, which stops the steps itself, instead of failing them half-way). `stop()` sends
each running step SIGTERM, then SIGKILL after a timeout; a step asked to start after it never does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

from autoretrain.adapters.localworkspace.channel import ForkedHelper, die_with_parent
from autoretrain.adapters.localworkspace.tracking import LocalTracking
from autoretrain.adapters.localworkspace.warm import WarmRunner
from autoretrain.logs import log_event
from autoretrain.waiting import wait_until

__all__ = ["StepProcesses"]

# The workspace's lines keep the workspace's logger, whichever of its modules writes them.
log = logging.getLogger("autoretrain.adapters.localworkspace.workspace")


class StepProcesses:
    """The running steps (one a job) and the warm runner they fork from."""

    def __init__(
        self, *, python: str, env: Mapping[str, str], warm: bool, tracking: LocalTracking | None, eager: bool = True
    ) -> None:
        """`eager`: the warm runner starts now, so the first job finds it warm (a long-lived process:
        `up`, the host); otherwise when a step or the tracker first needs it (a one-shot command, which
        may run no job at all)."""
        self._python = python
        self._env = env  # the warm servers' own environment (a step gets its own)
        self._warm = warm
        self._tracking = tracking
        # Set by stop(): running steps are stopped and their jobs left queued/running, to resume.
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen[bytes] | _ForkedStep] = {}
        self._runners: list[WarmRunner] = []  # the one in use last; earlier ones died
        self._closed = threading.Event()  # set by close(): the runner's starting thread may end
        self._start_lock = threading.Lock()
        self._started = threading.Event()  # the first runner's start has ended (well or not)
        self._starting = False  # its start has begun
        if not warm:
            self._started.set()
        elif eager:
            self._start()

    def _start(self) -> None:
        """Begin the first runner's start, once."""
        with self._lock:
            if self._starting or not self._warm or self._closed.is_set():
                return
            self._starting = True
        threading.Thread(target=self._start_runner, name="local-warm-runner", daemon=True).start()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self, job: str, argv: list[str], cwd: Path, log_path: Path, err_path: Path,
            env: Mapping[str, str]) -> int:
        """Run the job's step to its end; its exit code (-1: not started, the workspace is stopping)."""
        runner = self._warm_runner()
        if runner is not None:
            def started(pid: int) -> None:
                with self._lock:
                    self._running[job] = _ForkedStep(pid)
                if self._stopping.is_set():
                    self._running[job].terminate()

            try:
                return runner.run(argv, cwd, log_path, err_path, env, on_start=started)
            finally:
                with self._lock:
                    self._running.pop(job, None)
        with log_path.open("wb") as out_file, err_path.open("wb") as err_file:
            with self._lock:
                if self._stopping.is_set():
                    return -1
                process = subprocess.Popen(argv, cwd=cwd, stdout=out_file, stderr=err_file,
                                           stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                           preexec_fn=die_with_parent)
                self._running[job] = process
            try:
                return process.wait()
            finally:
                with self._lock:
                    self._running.pop(job, None)

    def stop(self, timeout: float) -> None:
        """Stop the running steps: SIGTERM, SIGKILL after `timeout`. No step starts after this."""
        with self._lock:
            self._stopping.set()
            running = list(self._running.items())
        for job, process in running:
            log_event(log, logging.INFO, "job.stopping", job=job, pid=process.pid)
            process.terminate()
        for _, process in running:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()

    def close(self) -> None:
        """Stop the warm runners (after `stop()`, once no job thread uses them)."""
        self._closed.set()
        for runner in self._runners:
            runner.close()

    def fork_tracker(self, log: Path) -> ForkedHelper | None:
        """The MLflow tracker, forked from the warm runner once it has started (it has imported MLflow
        and SQLAlchemy); None when there is none (running cold, or it did not start)."""
        runner = self._alive_runner()
        return runner.fork_tracker(log) if runner is not None else None

    def _alive_runner(self) -> WarmRunner | None:
        """The runner in use once the first one's start has ended, if it is alive (None: running
        cold, it died, or the workspace is closing: nothing waits for a start that close() cut short)."""
        self._start()
        wait_until(lambda: self._started.is_set() or self._closed.is_set(), 60, interval=0.05)
        with self._lock:
            if self._closed.is_set() or not (self._warm and self._runners):
                return None
            return self._runners[-1] if self._runners[-1].alive else None

    def _warm_runner(self) -> WarmRunner | None:
        """The warm runner (started with the workspace, warm by now; started again if it died, but
        not once the workspace is closed), or None to run steps cold."""
        with self._start_lock:  # two jobs that find it dead start one runner, not two
            runner = self._alive_runner()
            if runner is not None or not self._warm or self._closed.is_set():
                return runner
            # Started on this job thread, which lives as long as the workspace (see WarmRunner).
            return self._new_runner()

    def _new_runner(self) -> WarmRunner | None:
        try:
            runner = WarmRunner(self._python, self._env)
        except (OSError, RuntimeError) as exc:
            log_event(log, logging.WARNING, "workspace.warm_runner_unavailable", error=str(exc))
            with self._lock:
                self._warm = False
            return None
        with self._lock:
            self._runners.append(runner)
        return runner

    def _start_runner(self) -> None:
        try:
            runner = self._new_runner()
        finally:
            self._started.set()
        if runner is not None and self._tracking is not None and self._tracking.ready():
            # The store exists now: the server opens it once, for all the steps it forks.
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                runner.open_tracking(self._tracking.uri)
        # The server dies with the thread that started it (PR_SET_PDEATHSIG): it lives until close(),
        # not stop(): a step stopped by stop() still has its exit code to tell.
        self._closed.wait()


class _ForkedStep:
    """A step running in a fork of the warm server: what stop() needs to stop it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> None:
        if not wait_until(self._gone, timeout, interval=0.05):
            raise subprocess.TimeoutExpired(str(self.pid), timeout)

    def _gone(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        return False
