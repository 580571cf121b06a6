"""The local stack stopped at awkward moments, as a user at the terminal would: Ctrl-C, SIGTERM and a
closed terminal (SIGHUP) during a job and right after a drop, and a hard kill of everything (power
loss). Each test runs its own Azurite on its own ports, so that the stack starts and stops it."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from localstack import Loop, cli, free_port, own_storage, stack_env, start
from mlmodules import wine

from autoretrain.adapters.localworkspace.workspace import catalog_rows
from autoretrain.domain import LedgerRecord, LedgerState, WorkKey

pytestmark = pytest.mark.integration

LEASE = 2


@pytest.fixture
def own_azurite() -> str:
    """A connection string to an Azurite on ports of its own, which each stack starts and stops."""
    return own_storage()


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


def _wait_for_claim(loop: Loop, key: WorkKey, timeout: float) -> None:
    """Until the stack has claimed the dropped file: its ledger record exists."""
    deadline = time.monotonic() + timeout
    while loop.ledger.get(key) is None:
        if loop.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{key} not claimed after {timeout} s:\n{loop.log.read_text()[-3000:]}")
        time.sleep(0.05)


def _jobs_now(loop: Loop) -> set[str]:
    try:
        return {j["name"] for j in catalog_rows(loop.home, "jobs")}
    except sqlite3.OperationalError:  # the catalogue file is there, its tables not yet
        return set()


def _wait_for_job(loop: Loop, key: WorkKey, timeout: float) -> None:
    """Until the dropped file's job is in the workspace's catalogue: submitted, so running."""
    deadline = time.monotonic() + timeout
    while key.job_name not in _jobs_now(loop):
        if loop.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"job {key.job_name} not submitted after {timeout} s:\n{loop.log.read_text()[-3000:]}")
        time.sleep(0.05)


def _wait_for_leases_to_run_out(loop: Loop, timeout: float) -> None:
    """Until no record is held under a lease that still runs: a claim the dead stack held is free to take over."""
    deadline = time.monotonic() + timeout
    while True:
        now = datetime.now(UTC)
        held = [r for r in loop.ledger.records() if r.state.leased and not r.lease_expired(now)]
        if not held:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"leases still held after {timeout} s: {[(r.key.value, r.lease_until) for r in held]}")
        time.sleep(0.2)


def _reconcile_until_final(loop: Loop, cwd: Path, timeout: float) -> tuple[list[LedgerRecord], list[str]]:
    """Run `autoretrain reconcile` until every ledger record is final (a job the dead stack left running
    must finish first); the records and each pass's output. Fails with both after `timeout` s."""
    outputs: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        result = cli(loop.env, "reconcile", "--grace", "0", cwd=cwd)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
        records = list(loop.ledger.records())
        if all(r.state.final for r in records):
            return records, outputs
        if time.monotonic() > deadline:
            pytest.fail(
                f"not final after {timeout} s of reconcile: {[(r.state.value, r.reason) for r in records]}\n"
                + "\n".join(outputs)
            )
        time.sleep(2)  # between passes: each lists the container, the ledger and the workspace


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
    key = WorkKey.for_blob(ref)
    _wait_for_claim(loop, key, timeout=60)  # stopped as soon as the stack has taken the drop

    assert stack.signal(loop, sig) == 0

    again = stack.up()
    assert again.blobs.read_head(ref, 10)  # the customer's file survived the stop
    assert again.ledger.get(key) is not None  # and so did its claim
    _exactly_once(again, key)


def _as_a_background_job() -> None:
    """What a shell does to a job it starts in the background (`autoretrain up &`, a CI step)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_a_stop_while_the_stack_starts_stops_it_once_it_is_up(
    tmp_path: Path, unique: str, own_azurite: str, sig: int
) -> None:
    """A stop that comes while the stack starts (here as soon as its Azurite is up, before the host
    answers) is not lost, even in a background job, where SIGINT starts ignored: the stack comes up,
    then stops as at any other time, Azurite with it. Before, the Ctrl-C was lost and the stack ran on;
    SIGTERM and SIGHUP killed it half-started, Azurite left running."""
    env = stack_env(tmp_path, unique, own_azurite, free_port(), {})
    log = tmp_path / "up.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "autoretrain.cli", "up"], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_as_a_background_job,
        )
    try:
        _wait_for(log, "azurite.started", timeout=60)
        process.send_signal(sig)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after {signal.Signals(sig).name}:\n{log.read_text()[-3000:]}")
    finally:
        process.kill()
        process.wait()
        subprocess.run(["pkill", "-KILL", "-f", str(tmp_path / "home")], check=False)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "stack.up" in text and "Stopping" in text, text[-3000:]
    assert not _listening(own_azurite)  # the stack stopped the Azurite it started


@pytest.mark.parametrize("saved", [False, True], ids=["at-once", "after-azurite-saved"])
def test_a_hard_kill_right_after_a_drop_is_made_consistent_by_reconcile(
    stack: Stack, tmp_path: Path, saved: bool
) -> None:
    """SIGKILL of everything (power loss) while the drop's job runs: Azurite may lose its last seconds
    (it saves every 5 s), which is the emulator's limit; the workspace's catalogue is on disk and keeps
    the data version and the job. After a restart and reconcile the ledger and the workspace agree on
    what survived, on every path: one final ledger record for the blob version, its one job, at most one
    model and only with a done record. A surviving blob is trained exactly once; a lost one leaves its
    job recorded as skipped, with no model."""
    loop = stack.up()
    ref = loop.blobs.upload(loop.incoming, "2026-01.csv", _month(tmp_path))
    key = WorkKey.for_blob(ref)
    _wait_for_job(loop, key, timeout=60)  # killed as soon as the job runs: the drop is spread over both stores
    if saved:
        time.sleep(6)  # Azurite saves every 5 s: the blob is on disk now, so the "survived" path is taken

    os.killpg(loop.process.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", str(loop.home)], check=False)
    loop.process.wait(timeout=30)
    stack.close()

    again = stack.up()
    _wait_for_leases_to_run_out(again, timeout=LEASE + 30)
    records, outputs = _reconcile_until_final(again, tmp_path, timeout=180)
    survived = [b.ref for b in again.blobs.list_blobs(again.incoming)]
    jobs = catalog_rows(again.home, "jobs")
    models = catalog_rows(again.home, "models")
    data = catalog_rows(again.home, "data")
    print(f"hard kill: blob {'survived' if survived else 'lost'}, records {[r.state.value for r in records]}, "
          f"jobs {[j['status'] for j in jobs]}, data {len(data)}, models {len(models)}\n" + "\n".join(outputs))

    # Every path. The job was in the catalogue before the kill, so it is there, and reconcile gave it a
    # record if the ledger lost its own: exactly one record, this blob version's, final.
    assert [j["name"] for j in jobs] == [key.job_name], jobs
    assert [r.key for r in records] == [key], [(r.key.value, r.state, r.reason) for r in records]
    [record] = records
    assert record.state.final, (record.state, record.reason)
    # One data version, this blob version's snapshot in the datasets container.
    assert [d["source"] for d in data] == [f"{again.env['AUTORETRAIN_DATASETS_CONTAINER']}/{ref.copy_name(key)}"], data
    # A model only with a done record, and a done record only with its model: nothing half-done.
    assert len(models) == (1 if record.state is LedgerState.DONE else 0), (record.state, record.reason, models)
    assert survived or not saved, "Azurite had saved the blob before the kill"
    if survived:
        # The blob survived the kill: trained exactly once, whatever the ledger had kept.
        assert survived == [ref]
        _exactly_once(again, key)
        assert (models[0]["job"], f"{models[0]['name']}:{models[0]['version']}") == (
            key.job_name, record.model_version,
        )
    else:
        # Azurite lost the blob (and so the ledger's later writes): the job it started is kept, recorded
        # as skipped with the reason, and trains nothing; the data version stays as the job's input.
        assert record.state is LedgerState.SKIPPED, (record.state, record.reason)
        assert record.reason and ref.path in record.reason and "the blob version is gone" in record.reason, (
            record.reason
        )
        assert models == []
