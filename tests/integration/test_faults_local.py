"""The fault matrix on the real local parts: a process running ingest or complete is killed right
after a port call (Azurite ledger and blobs, the embedded workspace), then reconcile takes over.
Each blob version ends with exactly one data version, one job and one model. The exhaustive matrix
(every call, before and after, three ways to recover) runs over fakes in tests/unit/test_faults.py."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from localstack import per_file_contract, stack_env
from mlmodules import wine

from autoretrain import loop
from autoretrain.adapters.localworkspace.workspace import LocalWorkspace, catalog_rows
from autoretrain.bootstrap import bootstrap
from autoretrain.domain import LedgerState, WorkKey
from autoretrain.settings import Settings

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("crash_worker.py")
LEASE = 1
INGEST_KILLS = [("ledger", "claim", 1), ("blobs", "copy_to", 1), ("workspace", "register_data", 1),
                ("workspace", "submit", 1)]
COMPLETE_KILLS = [("ledger", "move", 1), ("workspace", "register_model", 1), ("workspace", "promote", 1),
                  ("ledger", "move", 2)]


def _local_parts(
    tmp_path: Path, unique: str, azurite: str, monkeypatch: pytest.MonkeyPatch, extra: dict[str, str] | None = None
) -> tuple[dict[str, str], Settings, loop.Deps, LocalWorkspace]:
    """The real local parts in this process, on this test's own containers, table and home: Azurite
    for the ledger and blobs, the embedded workspace (no run events: nothing listens); and the
    environment that names them, for a subprocess."""
    env = stack_env(tmp_path, unique, azurite, 7071, extra or {})
    for name, value in env.items():
        if name.startswith("AUTORETRAIN_"):
            monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    deps = bootstrap(settings, worker=False)
    assert isinstance(deps.workspace, LocalWorkspace)
    return env, settings, deps, deps.workspace


def test_a_worker_killed_after_any_step_leaves_nothing_lost_and_nothing_twice(
    tmp_path: Path, unique: str, azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, settings, deps, workspace = _local_parts(  # a job per file: each crash point's own job
        tmp_path, unique, azurite, monkeypatch, {"AUTORETRAIN_LEASE_SECONDS": str(LEASE), **per_file_contract(tmp_path)}
    )
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


def test_two_reconcile_passes_at_once_do_everything_once_and_find_a_lost_completion(
    tmp_path: Path, unique: str, azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two passes racing over blobs whose events were lost (six bad files, one good): one record,
    one quarantine copy and one job each. The good file's job ends with no completion event (no
    host): the next pass completes it."""
    _, settings, deps, workspace = _local_parts(tmp_path, unique, azurite, monkeypatch)
    [month] = wine().write_monthly_drops(tmp_path / "drops", months=1, seed=8)
    good = deps.blobs.upload(settings.incoming_container, "good.csv", month.read_bytes())
    bad = [deps.blobs.upload(settings.incoming_container, f"bad-{i}.csv", b"alcohol,cultivar\n1,a\n") for i in range(6)]

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: loop.reconcile(deps, grace=timedelta(0)), range(2)))

    found = [f.work_key for r in reports for f in r.found]
    assert sorted(set(found)) == sorted(WorkKey.for_blob(b).value for b in [good, *bad])
    # Each bad file by one pass only. The good one may be told by both, each truly: one pass found it
    # unannounced and left it waiting for a job, the other started that job (one job: asserted below).
    assert sorted(k for k in found if k != WorkKey.for_blob(good).value) == sorted(
        WorkKey.for_blob(b).value for b in bad
    )
    assert all(r.errors == () for r in reports)
    quarantine = BlobServiceClient.from_connection_string(azurite).get_container_client(
        settings.quarantine_container
    )
    assert len(list(quarantine.list_blobs())) == 6
    assert workspace.drain(300)
    assert [j["name"] for j in catalog_rows(settings.home, "jobs")] == [WorkKey.for_blob(good).job_name]

    after = loop.reconcile(deps, grace=timedelta(0))
    workspace.close()

    assert [(f.what, f.work_key) for f in after.found] == [("finished_job", WorkKey.for_blob(good).value)]
    record = deps.ledger.get(WorkKey.for_blob(good))
    assert record is not None and record.state is LedgerState.DONE


def test_run_completed_and_run_status_changed_at_once_register_one_model(
    tmp_path: Path, unique: str, azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One successful job can raise RunCompleted and RunStatusChanged(Completed); delivered at the
    same moment (eight deliveries of each), the completing compare-and-swap lets one register."""
    from autoretrain.domain import JOB_TAG
    from autoretrain.domain.events import JobFinished
    from autoretrain.settings import LOCAL_WORKSPACE_TOPIC

    _, settings, deps, workspace = _local_parts(tmp_path, unique, azurite, monkeypatch)
    [month] = wine().write_monthly_drops(tmp_path / "drops", months=1, seed=9)
    ref = deps.blobs.upload(settings.incoming_container, "m.csv", month.read_bytes())
    loop.ingest_blob(ref, deps, event_id="ev", content_length=None)
    key = WorkKey.for_blob(ref)
    assert workspace.drain(300)

    def event(kind: str, i: int) -> JobFinished:
        return JobFinished(
            event_id=f"{kind}-{i}", event_type=f"Microsoft.MachineLearningServices.{kind}",
            topic=LOCAL_WORKSPACE_TOPIC, subject=f"experiments/x/runs/{key.job_name}", event_time=None,
            experiment_id="x", experiment_name="autoretrain", job=key.job_name, job_type="",
            job_status="Completed", job_tags={JOB_TAG: key.value},
        )

    events = [event(kind, i) for i in range(8) for kind in ("RunCompleted", "RunStatusChanged")]
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda e: loop.complete(e, deps), events))
    workspace.close()

    assert sum(isinstance(o, loop.Registered) for o in outcomes) == 1
    assert all(isinstance(o, loop.Registered | loop.Duplicate) for o in outcomes), outcomes
    assert len(catalog_rows(settings.home, "models")) == 1
    record = deps.ledger.get(key)
    assert record is not None and record.state is LedgerState.DONE
