"""Shared fixtures: one Azurite for the whole session, and names no two tests share."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AZURITE = ROOT / "node_modules" / ".bin" / "azurite"
BLOB_PORT, QUEUE_PORT, TABLE_PORT = 10000, 10001, 10002
CONNECTION = "UseDevelopmentStorage=true"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class _OurAzurite:
    """An Azurite started by the tests, in a temporary folder, on the default ports."""

    def __init__(self) -> None:
        if not AZURITE.exists():
            pytest.fail(f"{AZURITE} is missing; run `make setup` (npm install) first.")
        self.location = tempfile.mkdtemp(prefix="azurite-tests-")
        self.process = subprocess.Popen(
            [str(AZURITE), "--silent", "--disableTelemetry", "--skipApiVersionCheck",
             "--location", self.location, "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1",
             "--tableHost", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not (_listening(BLOB_PORT) and _listening(TABLE_PORT)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                self.stop()
                pytest.fail(f"Azurite did not start: {err.strip()[:500]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.location, ignore_errors=True)


_CONTROLLER_AZURITE: list[_OurAzurite] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """With pytest-xdist (`-n`), the controller starts the one Azurite every worker uses, before
    the workers start: two workers that each found none would both start one on the same ports."""
    config = session.config
    controller = not hasattr(config, "workerinput")
    if controller and config.getoption("numprocesses", None) and not (_listening(BLOB_PORT) and _listening(TABLE_PORT)):
        _CONTROLLER_AZURITE.append(_OurAzurite())


def pytest_sessionfinish(session: pytest.Session) -> None:
    while _CONTROLLER_AZURITE:
        _CONTROLLER_AZURITE.pop().stop()


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """A running Azurite (Blob + Table on the default ports); yields its connection string.

    Reuses one that is already up (started by .ci/run, `autoretrain up`, or the xdist controller);
    otherwise starts one in a temporary folder and stops it at the end of the session.
    """
    if _listening(BLOB_PORT) and _listening(TABLE_PORT):
        yield CONNECTION
        return
    ours = _OurAzurite()
    try:
        yield CONNECTION
    finally:
        ours.stop()


@pytest.fixture
def unique() -> str:
    """A short lowercase token for container and table names no other test uses."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AUTORETRAIN_* variable from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("AUTORETRAIN_"):
            monkeypatch.delenv(name)
