"""One job per burst, on the real local stack with the default contract (one job in flight): ten files at
once cost at most three jobs, the last model trains on all ten, and versions left waiting by Ctrl-C or
SIGKILL are trained exactly once after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from localstack import Loop, free_port, own_storage, start
from mlmodules import wine_csv

from autoretrain.adapters.localworkspace.workspace import catalog_rows
from autoretrain.domain import LedgerRecord, LedgerState, WorkKey
from autoretrain.waiting import wait_until

pytestmark = pytest.mark.integration


def _drop_at_once(loop: Loop, count: int) -> list[WorkKey]:
    refs = [loop.blobs.upload(loop.incoming, f"day-{n:02d}.csv", wine_csv(slice(0, 178), seed=n))
            for n in range(count)]
    return [WorkKey.for_blob(ref) for ref in refs]


def _new_data(home: Path) -> dict[str, list[str]]:
    """Each job that made a model, with its new data: the last `new_files` data versions of the
    training set it ran on, as the workspace's catalogue has them."""
    models = {m["job"] for m in catalog_rows(home, "models")}
    sets = {f"{t['name']}:{t['version']}": t["members"] for t in catalog_rows(home, "trainsets")}
    return {j["name"]: [str(v) for v in sets[j["data"]][-int(j["new_files"]):]]
            for j in catalog_rows(home, "jobs") if j["name"] in models}


def _exactly_once(home: Path, records: dict[WorkKey, LedgerRecord]) -> dict[str, list[str]]:
    """Every record done, its data version the new data of exactly one job with a model, its own."""
    assert {r.state for r in records.values()} == {LedgerState.DONE}, [(r.state, r.reason) for r in records.values()]
    new_data = _new_data(home)
    for record in records.values():
        holders = [job for job, versions in new_data.items() if record.data_version in versions]
        assert holders == [record.job], (record.blob.name, record.data_version, holders)
    return new_data


@pytest.fixture
def running(tmp_path: Path, unique: str, azurite: str) -> Iterator[Loop]:
    yield from start(tmp_path, unique, azurite, {})


def test_ten_files_at_once_end_done_in_at_most_three_jobs_and_the_last_model_knows_all_ten(running: Loop) -> None:
    keys = _drop_at_once(running, 10)

    records = running.wait_final(keys, timeout=300)

    new_data = _exactly_once(running.home, records)
    assert 1 <= len(new_data) <= 3, new_data
    last = max(catalog_rows(running.home, "jobs"), key=lambda j: j["created"])
    [trainset] = [t for t in catalog_rows(running.home, "trainsets") if f"{t['name']}:{t['version']}" == last["data"]]
    assert {r.data_version for r in records.values()} <= set(trainset["members"]), "the last model trains on all ten"
    assert "ingest.waiting" in running.log.read_text()


class _Stack:
    """`autoretrain up` on one home, started again after a stop."""

    def __init__(self, tmp_path: Path, unique: str, connection: str) -> None:
        self.tmp_path, self.unique, self.connection, self.port = tmp_path, unique, connection, free_port()
        self.starts = 0
        self._gen: Iterator[Loop] | None = None

    def up(self) -> Loop:
        self.starts += 1
        # A SIGKILL can land in a completion: its lease still runs at the restart's reconcile, so the next
        # pass finishes it (on Azure, Event Grid redelivers the event; here a pass every 5 s, not 5 min).
        env = {"AUTORETRAIN_LEASE_SECONDS": "3", "AUTORETRAIN_RECONCILE_SCHEDULE": "*/5 * * * * *"}
        self._gen = start(self.tmp_path, self.unique, self.connection, env, port=self.port,
                          log_name=f"up-{self.starts}.log")
        return next(self._gen)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None


def _hold_the_steps(loop: Loop) -> None:
    """Stop (SIGSTOP) the warm runner and every process forked from it, so the job in flight holds and
    the versions waiting behind it stay waiting, however fast the steps are."""
    for child in psutil.Process(loop.process.pid).children():
        if "serve()" in " ".join(child.cmdline()):
            for process in [child, *child.children(recursive=True)]:
                process.suspend()


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_versions_waiting_when_the_stack_stops_are_trained_exactly_once_after_a_restart(
    tmp_path: Path, unique: str, how: str
) -> None:
    stack = _Stack(tmp_path, unique, own_storage())
    try:
        loop = stack.up()
        keys = _drop_at_once(loop, 6)
        waiting = lambda: [r for k in keys if (r := loop.ledger.get(k)) and r.state is LedgerState.WAITING]  # noqa: E731
        assert wait_until(lambda: len(waiting()) >= 2, 120), loop.log.read_text()[-3000:]
        if how == "sigkill":
            _hold_the_steps(loop)
            # Every drop taken; then Azurite's next save (every 5 s, when something changed) puts the
            # records on disk (its own loss is tested elsewhere).
            assert wait_until(lambda: all((r := loop.ledger.get(k)) and r.state is not LedgerState.CLAIMED
                                          for k in keys), 60), loop.log.read_text()[-3000:]
            taken, table = time.time(), loop.home / "azurite" / "__azurite_db_table__.json"
            wait_until(lambda: table.stat().st_mtime > taken, 6)  # no save within 6 s: nothing was left to save
            assert waiting(), "versions are still waiting when the stack is killed"
            os.killpg(loop.process.pid, signal.SIGKILL)
            subprocess.run(["pkill", "-KILL", "-f", str(loop.home / "workspace")], check=False)
        else:
            os.killpg(loop.process.pid, signal.SIGINT)
        loop.process.wait(timeout=90)
        stack.close()

        again = stack.up()
        records = again.wait_final(keys, timeout=300)

        _exactly_once(again.home, records)
        assert wait_until(lambda: again.ledger.schedule().jobs == {}, 30), "the last job's slot is freed"
    finally:
        stack.close()
        subprocess.run(["pkill", "-KILL", "-f", str(tmp_path / "home")], check=False)
