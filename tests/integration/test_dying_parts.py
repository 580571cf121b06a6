"""A part of the local stack dies or is stopped under it, as on a laptop: Azurite SIGKILLed, Ctrl-C on a
CLI command that runs a job, an Azurite left running by another home. Each is noticed, said in one
line, and nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from localstack import Loop, free_port, own_storage, per_file_contract, start
from mlmodules import wine_csv

from autoretrain.adapters.localworkspace.workspace import catalog_rows
from autoretrain.domain import LedgerState, WorkKey
from autoretrain.local.azurite import Azurite
from autoretrain.waiting import wait_until

pytestmark = pytest.mark.integration


def _azurite_of(home: Path) -> psutil.Process:
    """The Azurite process serving `home` (its --location is the home's azurite folder)."""
    location = str((home / "azurite").resolve())
    for process in psutil.process_iter(["cmdline"]):
        if location in (process.info["cmdline"] or []) and "--blobPort" in process.info["cmdline"]:
            return process
    pytest.fail(f"no Azurite serves {location}")


def _jobs(loop: Loop) -> list[dict[str, object]]:
    try:
        return catalog_rows(loop.home, "jobs")
    except Exception:  # the catalogue is being created
        return []


def test_azurite_killed_under_the_stack_is_told_once_restarted_and_the_drops_finish(
    tmp_path: Path, unique: str
) -> None:
    """SIGKILL only Azurite 1 s after 3 drops: one line `azurite.stopped`, Azurite started again on the
    same folder within seconds, no traceback, no event left dead-lettered. A drop Azurite had saved
    trains to the end; one it had not saved is the emulator's loss (documented): its blob and its
    record are gone together, and reconcile records a job that ran on it as skipped, saying why."""
    env = {"AUTORETRAIN_LEASE_SECONDS": "5", "AUTORETRAIN_RECONCILE_SCHEDULE": "*/5 * * * * *",
           "AUTORETRAIN_RECONCILE_GRACE_SECONDS": "5", **per_file_contract(tmp_path)}  # each drop's own job
    gen = start(tmp_path, unique, own_storage(), env)
    loop = next(gen)
    try:
        saved = loop.blobs.upload(loop.incoming, "month-0.csv", wine_csv(slice(0, 120), seed=0))
        time.sleep(6)  # Azurite saves what it holds every 5 s: this drop (and the containers) are on disk
        refs = [saved] + [loop.blobs.upload(loop.incoming, f"month-{n}.csv", wine_csv(slice(0, 120), seed=n))
                          for n in range(1, 4)]
        time.sleep(1)  # the reproduction's timing: the kill lands while the drops are being taken in
        _azurite_of(loop.home).kill()
        killed = time.monotonic()

        assert wait_until(lambda: "azurite.restarted" in loop.log.read_text(), 30), loop.log.read_text()[-3000:]
        noticed = [line for line in loop.log.read_text().splitlines() if "azurite.stopped" in line]
        assert len(noticed) == 1, noticed
        assert time.monotonic() - killed < 30

        kept = [blob.ref for ref in refs if (blob := loop.blobs.describe(ref.container, ref.name)) is not None]
        assert saved in kept
        keys = [WorkKey.for_blob(ref) for ref in kept]
        records = loop.wait_final(keys, timeout=240)
        assert {k.value: r.state for k, r in records.items()} == {k.value: LedgerState.DONE for k in keys}
        trained = {m["job"] for m in catalog_rows(loop.home, "models")}
        assert trained >= {k.job_name for k in keys}, "a model for each saved drop"
        # A lost drop whose job ran (its data version is in the workspace) is recorded by reconcile as
        # skipped, saying why; one that never reached a job leaves nothing at all.
        for key in (WorkKey.for_blob(ref) for ref in refs if ref not in kept):
            if key.job_name in {j["name"] for j in _jobs(loop)}:
                assert wait_until(lambda key=key: (r := loop.ledger.get(key)) is not None and r.state.final, 60)
                record = loop.ledger.get(key)
                assert record is not None and record.state is LedgerState.SKIPPED, record
                assert "the blob version is gone" in (record.reason or ""), record.reason
        assert wait_until(lambda: not list((loop.home / "deadletter").glob("*.json")), 60), \
            "dead letters not replayed after the restart"
        assert "Traceback" not in loop.log.read_text(), loop.log.read_text()[-5000:]
    finally:
        gen.close()


# `autoretrain retrain`, held after it submitted its job and before it records that in the ledger:
# the narrowest moment for a Ctrl-C (a job runs that no ledger record names yet).
_RETRAIN_HELD_BEFORE_ITS_RECORD = """
import importlib, sys, time
from autoretrain.domain import Submit
ingest = importlib.import_module("autoretrain.loop.ingest")
record = ingest._move
def held(ledger, claimed, move):
    if isinstance(move, Submit):
        time.sleep(300)
    return record(ledger, claimed, move)
ingest._move = held
from autoretrain.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_ctrl_c_on_retrain_stops_in_one_line_and_the_running_stack_takes_its_job_over(
    tmp_path: Path, unique: str, azurite: str
) -> None:
    """`autoretrain retrain` interrupted while its job runs, before it recorded the job: exit 130 with
    one line, no traceback; the retrain's claim is given back, the job, whose runner is gone, is taken
    over by the running stack within seconds, and its completion records the retrain and ends it done
    (it was left `claimed` for the lease's 10 minutes, its completion retried until dead-lettered)."""
    gen = start(tmp_path, unique, azurite, {})
    loop = next(gen)
    try:
        ref = loop.blobs.upload(loop.incoming, "month-1.csv", wine_csv(slice(0, 150), seed=1))
        first = WorkKey.for_blob(ref)
        assert loop.wait_final([first], timeout=240)[first].state is LedgerState.DONE

        command = subprocess.Popen(
            [sys.executable, "-c", _RETRAIN_HELD_BEFORE_ITS_RECORD, "retrain", "month-1.csv"], cwd=tmp_path,
            env=loop.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        again = first.attempt(1)
        assert wait_until(
            lambda: any(j["name"] == again.job_name and j["status"] == "Running" for j in _jobs(loop))
            or command.poll() is not None, 120,
        )
        claimed = loop.ledger.get(again)
        assert claimed is not None and claimed.state is LedgerState.CLAIMED, command.communicate()
        assert command.poll() is None, command.communicate()
        os.killpg(command.pid, signal.SIGINT)  # Ctrl-C at the terminal
        out, err = command.communicate(timeout=60)

        assert command.returncode == 130, out + err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "left to resume" in err
        record = loop.wait_final([again], timeout=240)[again]
        assert record.state is LedgerState.DONE, record.reason
        assert f"job.resumed job={again.job_name}" in loop.log.read_text()
        statuses = {j["name"]: j["status"] for j in _jobs(loop)}
        assert statuses == {first.job_name: "Completed", again.job_name: "Completed"}
        assert [m.state for m in record.history][:3] == ["claimed", "released", "taken_over"], record.history
        assert not list((loop.home / "deadletter").glob("*.json")), "a completion event was dead-lettered"
    finally:
        gen.close()


def test_up_refuses_an_azurite_that_serves_another_home_and_reuses_its_own(tmp_path: Path) -> None:
    """An Azurite left running for home A (a SIGKILLed stack leaves it, by design): `up` on home B stops
    in one line naming the process, its folder and what to do; `up` on home A (or any command) uses it."""
    connection = own_storage()
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    left = Azurite.for_connection(home_a, connection).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORETRAIN_")}
        env.update(AUTORETRAIN_HOME=str(home_b), AUTORETRAIN_STORAGE=connection,
                   AUTORETRAIN_HOST_URL=f"http://127.0.0.1:{free_port()}")
        up = subprocess.run([sys.executable, "-m", "autoretrain.cli", "up"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)

        assert up.returncode == 2, up.stdout + up.stderr
        [line] = up.stderr.strip().splitlines()
        assert f"pid {left.pid}" in line and str(home_a / "azurite") in line, line
        assert str(home_b / "azurite") in line and "AUTORETRAIN_AZURITE=shared" in line, line
        assert not (home_b / "workspace").exists(), "nothing of home B was started"

        again = Azurite.for_connection(home_a, connection).start()  # its own home: reused as it is
        assert not again.started_here and again.pid == left.pid
        shared = Azurite.for_connection(home_b, connection, shared=True).start()  # said to be shared: used
        assert not shared.started_here
    finally:
        left.stop()
