"""The fault matrix on the real local parts: a process running ingest or complete is killed right
after a port call (Azurite ledger and blobs, the embedded workspace), then reconcile takes over.
Each blob version ends with exactly one data version, one job and one model. The exhaustive matrix
(every call, before and after, three ways to recover) runs over fakes in tests/unit/test_faults.py."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from localstack import stack_env
from mlmodules import wine

from autoretrain import loop
from autoretrain.bootstrap import bootstrap
from autoretrain.domain import LedgerState, WorkKey
from autoretrain.settings import Settings
from autoretrain.workspace.local import LocalWorkspace, catalog_rows

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("crash_worker.py")
LEASE = 1
INGEST_KILLS = [("ledger", "claim", 1), ("blobs", "copy_to", 1), ("workspace", "register_data", 1),
                ("workspace", "submit", 1)]
COMPLETE_KILLS = [("ledger", "move", 1), ("workspace", "register_model", 1), ("workspace", "promote", 1),
                  ("ledger", "move", 2)]


def test_a_worker_killed_after_any_step_leaves_nothing_lost_and_nothing_twice(
    tmp_path: Path, unique: str, azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = stack_env(tmp_path, unique, azurite, 7071, {"AUTORETRAIN_LEASE_SECONDS": str(LEASE)})
    for name, value in env.items():
        if name.startswith("AUTORETRAIN_"):
            monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    deps = bootstrap(settings, worker=False)
    workspace = deps.workspace
    assert isinstance(workspace, LocalWorkspace)
    [month] = wine().write_monthly_drops(tmp_path / "drops", months=1, seed=7)
    data = month.read_bytes()
    blobs = {point: deps.blobs.upload(settings.incoming_container, f"{i}-{point[1]}.csv", data)
             for i, point in enumerate([*INGEST_KILLS, *COMPLETE_KILLS])}

    def kill_at(mode: str, point: tuple[str, str, int]) -> None:
        ref = blobs[point]
        done = subprocess.run(
            [sys.executable, str(WORKER), mode, ref.container, ref.name, ref.etag, *map(str, point)],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 137, f"{mode} {point}: {done.returncode}\n{done.stderr[-2000:]}"

    for point in INGEST_KILLS:
        kill_at("ingest", point)
    # The completion kills need finished jobs: ingest those blobs here, and let their jobs run.
    for point in COMPLETE_KILLS:
        loop.ingest_blob(blobs[point], deps, event_id="test", content_length=None)
    assert workspace.drain(300)
    for point in COMPLETE_KILLS:
        kill_at("complete", point)

    # Recovery: jobs the killed workers had started run again, then reconcile takes over.
    time.sleep(LEASE + 0.5)
    workspace.resume()
    reports = [loop.reconcile(deps, grace=timedelta(0))]
    assert workspace.drain(300)
    reports.append(loop.reconcile(deps, grace=timedelta(0)))
    workspace.close()

    keys = {WorkKey.for_blob(ref): point for point, ref in blobs.items()}
    records = {k: deps.ledger.get(k) for k in keys}
    matrix = {f"{keys[k][0]}.{keys[k][1]}#{keys[k][2]}": r.state.value if r else None for k, r in records.items()}
    print("kill point -> final state:", matrix)
    print("reconcile:", [[(f.what, f.result[:60]) for f in r.found] for r in reports])
    assert all(r is not None and r.state is LedgerState.DONE for r in records.values()), matrix
    assert sorted(d["source"] for d in catalog_rows(settings.home, "data")) == sorted(
        f"{settings.datasets_container}/{ref.copy_name(WorkKey.for_blob(ref))}" for ref in blobs.values()
    )
    jobs = catalog_rows(settings.home, "jobs")
    assert sorted(j["name"] for j in jobs) == sorted(k.job_name for k in keys)
    assert {j["status"] for j in jobs} == {"Completed"}
    models = catalog_rows(settings.home, "models")
    assert sorted(m["job"] for m in models) == sorted(k.job_name for k in keys)
    assert sum(m["champion"] for m in models) == 1
