"""The local stack stopped at awkward moments, as a user at the terminal would: Ctrl-C, SIGTERM and a
closed terminal (SIGHUP) during a job and right after a drop, and a hard kill of everything (power
loss). Each test runs its own Azurite on its own ports, so that the stack starts and stops it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from localstack import Loop, cli, free_port, start
from mlmodules import wine

from autoretrain.domain import LedgerState, WorkKey
from autoretrain.workspace.local import catalog_rows

pytestmark = pytest.mark.integration

LEASE = 2
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture
def own_azurite() -> str:
    """A connection string to an Azurite on ports of its own (Azurite's documented dev account)."""
    blob = free_port()
    table = free_port()
    while table in (blob, blob + 1):
        table = free_port()
    return (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob}/devstoreaccount1;"
        f"TableEndpoint=http://127.0.0.1:{table}/devstoreaccount1;"
    )


def _listening(connection: str) -> bool:
    port = int(connection.split("BlobEndpoint=http://127.0.0.1:")[1].split("/")[0])
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Stack:
    """Start, signal and start again one `autoretrain up` on one home."""

    def __init__(self, tmp_path: Path, unique: str, connection: str) -> None:
        self.tmp_path, self.unique, self.connection = tmp_path, unique, connection
        self.port = free_port()
        self.starts = 0
        self._gen: Iterator[Loop] | None = None

    def up(self) -> Loop:
        self.starts += 1
        self._gen = start(self.tmp_path, self.unique, self.connection, {"AUTORETRAIN_LEASE_SECONDS": str(LEASE)},
                          port=self.port, log_name=f"up-{self.starts}.log")
        return next(self._gen)

    def signal(self, loop: Loop, sig: int) -> int:
        """Send `sig` to the stack's process group, as the terminal does to its foreground job."""
        os.killpg(loop.process.pid, sig)
        code = loop.process.wait(timeout=90)
        self.close()
        return code

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None


@pytest.fixture
def stack(tmp_path: Path, unique: str, own_azurite: str) -> Iterator[Stack]:
    one = Stack(tmp_path, unique, own_azurite)
    try:
        yield one
    finally:
        one.close()
        subprocess.run(["pkill", "-KILL", "-f", str(tmp_path / "home")], check=False)


def _month(tmp_path: Path) -> bytes:
    [path] = wine().write_monthly_drops(tmp_path / "drops", months=1, seed=5)
    return bytes(path.read_bytes())


def _wait_for(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not in {path.name} after {timeout} s:\n{path.read_text()[-3000:]}")
        time.sleep(0.1)


def _exactly_once(loop: Loop, key: WorkKey) -> None:
    record = loop.wait_final([key], timeout=180)[key]
    assert record.state is LedgerState.DONE, record.reason
    jobs = catalog_rows(loop.home, "jobs")
    assert [(j["name"], j["status"]) for j in jobs] == [(key.job_name, "Completed")]
    assert len(catalog_rows(loop.home, "data")) == 1 and len(catalog_rows(loop.home, "models")) == 1


def test_ctrl_c_during_a_job_leaves_it_to_resume_at_the_next_start(stack: Stack, tmp_path: Path) -> None:
    """The step is stopped, the job is not failed, Azurite saves and stops; the next start finishes it."""
    loop = stack.up()
    ref = loop.blobs.upload(loop.incoming, "2026-01.csv", _month(tmp_path))
    _wait_for(loop.log, "step=train", timeout=60)

    assert stack.signal(loop, signal.SIGINT) == 0

    assert not _listening(stack.connection)  # the stack stopped the Azurite it started
    log = loop.log.read_text()
    assert "job.interrupted" in log and "job.failed" not in log
    assert [j["status"] for j in catalog_rows(loop.home, "jobs")] == ["Running"]
    again = stack.up()
    _exactly_once(again, WorkKey.for_blob(ref))
    assert "job.resumed" in again.log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_a_stop_right_after_a_drop_keeps_the_file_and_trains_it_once(
    stack: Stack, tmp_path: Path, sig: int
) -> None:
    """Azurite gets one signal from the stack and finishes its save: the blob and its claim survive."""
    loop = stack.up()
    ref = loop.blobs.upload(loop.incoming, "2026-01.csv", _month(tmp_path))
    time.sleep(0.5)

    assert stack.signal(loop, sig) == 0

    again = stack.up()
    assert again.blobs.read_head(ref, 10)  # the customer's file survived the stop
    _exactly_once(again, WorkKey.for_blob(ref))


def test_a_hard_kill_right_after_a_drop_is_made_consistent_by_reconcile(
    stack: Stack, tmp_path: Path
) -> None:
    """SIGKILL of everything (power loss): Azurite may lose its last seconds, which is the emulator's
    limit. After a restart and reconcile the ledger and the workspace agree on what survived: every
    job has a final ledger record, at most one model per blob version, and a surviving blob is
    trained exactly once."""
    loop = stack.up()
    ref = loop.blobs.upload(loop.incoming, "2026-01.csv", _month(tmp_path))
    key = WorkKey.for_blob(ref)
    time.sleep(1.0)

    os.killpg(loop.process.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", str(loop.home)], check=False)
    loop.process.wait(timeout=30)
    stack.close()

    again = stack.up()
    time.sleep(LEASE + 1)  # a claim the dead stack held is free to take over
    outputs = []
    deadline = time.monotonic() + 180
    while True:
        result = cli(again.env, "reconcile", "--grace", "0", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
        records = list(again.ledger.records())
        if all(r.state.final for r in records) or time.monotonic() > deadline:
            break
        time.sleep(2)
    survived = [b.ref for b in again.blobs.list_blobs(again.incoming)]
    jobs = catalog_rows(again.home, "jobs")
    models = catalog_rows(again.home, "models")
    print(f"hard kill: blob {'survived' if survived else 'lost'}, records {[r.state.value for r in records]}, "
          f"jobs {len(jobs)}, models {len(models)}\n" + "\n".join(outputs))

    assert all(r.state.final for r in records), [(r.state, r.reason) for r in records]
    assert {j["name"] for j in jobs} <= {r.key.job_name for r in records}
    assert len(models) <= 1
    if survived:
        assert survived == [ref]
        _exactly_once(again, key)
