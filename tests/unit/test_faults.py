"""Crashes at every step of ingest and complete, then a redelivery and/or reconcile, over fakes of the
ports: whatever the crash point, each blob version ends with exactly one data version, one job and
one model (or one quarantine), and no record is left half-way.

A crash here is a `WorkerDied` raised before (or after) one port call: a BaseException, so nothing
in the loop catches it, as nothing runs after a SIGKILL. The killed-process variant on the real local
parts is in tests/integration/test_faults_local.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBlobStore, FakeLedger, FakeWorkspace
from test_loop import CONTRACT, GOOD_CSV, blob_event, run_event

from autoretrain import loop
from autoretrain.contract import load_contract
from autoretrain.domain import JOB_TAG, BlobRef, JobState, LedgerState, Metrics, WorkKey
from autoretrain.settings import LOCAL_STORAGE_TOPIC, LOCAL_WORKSPACE_TOPIC


class WorkerDied(BaseException):
    """The process running the function is gone at this point."""


class Crashing:
    """Wraps a port; the `nth` call of `method` dies, before or after doing its work."""

    def __init__(self, target: Any, method: str, *, after: bool = False, nth: int = 1) -> None:
        self._target, self._method, self._after, self._left = target, method, after, nth

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name != self._method:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._left -= 1
            if self._left == 0 and not self._after:
                raise WorkerDied(f"before {name}")
            result = attr(*args, **kwargs)
            if self._left == 0:
                raise WorkerDied(f"after {name}")
            return result

        return call


def make_deps(
    tmp_path: Path, ledger: FakeLedger, workspace: Any, blobs: Any, ledger_port: Any = None,
    contract_text: str = CONTRACT,
) -> loop.Deps:
    contract = tmp_path / "contract.yaml"
    contract.write_text(contract_text)
    return loop.Deps(
        config=loop.LoopConfig(storage_topic=LOCAL_STORAGE_TOPIC, workspace_topic=LOCAL_WORKSPACE_TOPIC),
        contract=load_contract(contract), workspace=workspace, ledger=ledger_port or ledger, blobs=blobs,
        clock=lambda: ledger.now,
    )


# (port, method, after) for every call ingest makes, in order.
INGEST_POINTS = [
    ("ledger", "claim", False), ("ledger", "claim", True),
    ("blobs", "read_head", False),
    ("blobs", "copy_to", False), ("blobs", "copy_to", True),
    ("workspace", "register_data", False), ("workspace", "register_data", True),
    ("workspace", "register_training_set", False), ("workspace", "register_training_set", True),
    ("workspace", "submit", False), ("workspace", "submit", True),
    ("ledger", "move", False), ("ledger", "move", True),
]
# ... and every call complete makes.
COMPLETE_POINTS = [
    ("ledger", "get", False),
    ("workspace", "job_status", False),
    ("ledger", "move", False), ("ledger", "move", True),  # submitted -> completing
    ("workspace", "job_metrics", False),
    ("workspace", "register_model", False), ("workspace", "register_model", True),
    ("workspace", "promote", False), ("workspace", "promote", True),
    ("workspace", "record_decision", False), ("workspace", "record_decision", True),
    ("ledger", "move", False, 2), ("ledger", "move", True, 2),  # completing -> done
]
RECOVERIES = ["redelivery", "reconcile", "both"]


def _wrap(port: str, method: str, after: bool, nth: int, ledger: FakeLedger, workspace: FakeWorkspace,
          blobs: FakeBlobStore) -> tuple[Any, Any, Any]:
    ports: dict[str, Any] = {"ledger": ledger, "workspace": workspace, "blobs": blobs}
    ports[port] = Crashing(ports[port], method, after=after, nth=nth)
    return ports["ledger"], ports["workspace"], ports["blobs"]


def _recover(how: str, deps: loop.Deps, ledger: FakeLedger, deliver: Callable[[], object]) -> None:
    ledger.now += deps.config.lease  # the dead worker's lease runs out
    if how in ("redelivery", "both"):
        deliver()
    if how in ("reconcile", "both"):
        loop.reconcile(deps, grace=timedelta(0))


def _assert_exactly_once(workspace: FakeWorkspace, ledger: FakeLedger, key: WorkKey) -> None:
    record = ledger.get(key)
    assert record is not None and record.state is LedgerState.DONE, record
    assert [k for _, k in workspace.registered_data] and {k for _, k in workspace.registered_data} == {key}
    assert len(workspace.statuses) == 1 and len(workspace.models) == 1
    assert record.model_version == f"autoretrain-model:{workspace.models[key.value].version}"
    assert workspace.promoted == [workspace.models[key.value].version]


@pytest.mark.parametrize("how", RECOVERIES)
@pytest.mark.parametrize(("port", "method", "after"), INGEST_POINTS)
def test_a_crash_anywhere_in_ingest_trains_the_blob_exactly_once(
    tmp_path: Path, port: str, method: str, after: bool, how: str
) -> None:
    """Crash in ingest, recover, finish the job: one data version, one job, one model."""
    ledger, workspace, blobs = FakeLedger(), FakeWorkspace(), FakeBlobStore()
    ref = blobs.put("incoming", "a.csv", GOOD_CSV)
    key = WorkKey.for_blob(ref)
    wrapped_ledger, wrapped_workspace, wrapped_blobs = _wrap(port, method, after, 1, ledger, workspace, blobs)
    crashing = make_deps(tmp_path, ledger, wrapped_workspace, wrapped_blobs, ledger_port=wrapped_ledger)
    deps = make_deps(tmp_path, ledger, workspace, blobs)

    with pytest.raises(WorkerDied):
        loop.ingest(blob_event(ref), crashing)
    _recover(how, deps, ledger, lambda: loop.ingest(blob_event(ref, event_id="ev-redelivered"), deps))
    workspace.finish(key.job_name, JobState.COMPLETED, Metrics({"f1_macro": 0.9}, primary="f1_macro"))
    loop.complete(run_event(key), deps)
    if how != "redelivery":
        loop.reconcile(deps, grace=timedelta(0))

    _assert_exactly_once(workspace, ledger, key)


@pytest.mark.parametrize("how", RECOVERIES)
@pytest.mark.parametrize("point", COMPLETE_POINTS)
def test_a_crash_anywhere_in_complete_registers_exactly_one_model(
    tmp_path: Path, point: tuple[Any, ...], how: str
) -> None:
    """Crash in complete, recover: one model, promoted once, the record done."""
    port, method, after, *rest = point
    nth = rest[0] if rest else 1
    ledger, workspace, blobs = FakeLedger(), FakeWorkspace(), FakeBlobStore()
    ref = blobs.put("incoming", "a.csv", GOOD_CSV)
    key = WorkKey.for_blob(ref)
    deps = make_deps(tmp_path, ledger, workspace, blobs)
    loop.ingest(blob_event(ref), deps)
    workspace.finish(key.job_name, JobState.COMPLETED, Metrics({"f1_macro": 0.9}, primary="f1_macro"))
    wrapped_ledger, wrapped_workspace, wrapped_blobs = _wrap(port, method, after, nth, ledger, workspace, blobs)
    crashing = make_deps(tmp_path, ledger, wrapped_workspace, wrapped_blobs, ledger_port=wrapped_ledger)

    with pytest.raises(WorkerDied):
        loop.complete(run_event(key), crashing)
    _recover(how, deps, ledger, lambda: loop.complete(run_event(key, event_id="run-ev-redelivered"), deps))

    _assert_exactly_once(workspace, ledger, key)


class TestReconcileFinds:
    def _deps(self, tmp_path: Path) -> tuple[loop.Deps, FakeLedger, FakeWorkspace, FakeBlobStore]:
        ledger, workspace, blobs = FakeLedger(), FakeWorkspace(), FakeBlobStore()
        return make_deps(tmp_path, ledger, workspace, blobs), ledger, workspace, blobs

    def test_a_lost_blob_created_event(self, tmp_path: Path) -> None:
        """A blob with no ledger record is ingested once it is older than the grace period."""
        deps, ledger, workspace, blobs = self._deps(tmp_path)
        ref = blobs.put("incoming", "lost.csv", GOOD_CSV)

        early = loop.reconcile(deps, grace=timedelta(minutes=10))
        assert early.found == () and ledger.rows == {}
        ledger.now += timedelta(minutes=10)
        late = loop.reconcile(deps, grace=timedelta(minutes=10))

        key = WorkKey.for_blob(ref)
        assert [(f.what, f.blob, f.work_key) for f in late.found] == [("unannounced", "incoming/lost.csv", key.value)]
        assert late.found[0].result.startswith(f"submitted {key.job_name}")
        assert [k for _, k, _ in workspace.submitted] == [key]

    def test_a_lost_completion_event(self, tmp_path: Path) -> None:
        """A submitted record whose job ended is completed; a running one is left alone."""
        deps, ledger, workspace, blobs = self._deps(tmp_path)
        done_ref, running_ref = blobs.put("incoming", "a.csv", GOOD_CSV), blobs.put("incoming", "b.csv", GOOD_CSV)
        loop.ingest(blob_event(done_ref), deps)
        loop.ingest(blob_event(running_ref, event_id="ev-b"), deps)
        done_key, running_key = WorkKey.for_blob(done_ref), WorkKey.for_blob(running_ref)
        workspace.finish(done_key.job_name, JobState.COMPLETED, Metrics({"f1_macro": 0.9}, primary="f1_macro"))
        workspace.finish(running_key.job_name, JobState.RUNNING)

        report = loop.reconcile(deps, grace=timedelta(0))

        assert [(f.what, f.work_key, f.result) for f in report.found] == [
            ("finished_job", done_key.value, "done: model autoretrain-model:1, promoted")
        ]
        assert ledger.rows[running_key.value].state is LedgerState.SUBMITTED

    def test_a_canceled_run(self, tmp_path: Path) -> None:
        """A canceled run sends no RunCompleted; reconcile records it as failed, with the reason."""
        deps, ledger, workspace, blobs = self._deps(tmp_path)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        loop.ingest(blob_event(ref), deps)
        key = WorkKey.for_blob(ref)
        workspace.finish(key.job_name, JobState.CANCELED, error="canceled by ops")

        report = loop.reconcile(deps, grace=timedelta(0))

        record = ledger.rows[key.value]
        assert record.state is LedgerState.FAILED
        assert record.reason == "canceled: canceled by ops (log: None)"
        assert [f.what for f in report.found] == ["finished_job"] and workspace.models == {}

    def test_a_job_the_workspace_lost_is_submitted_again(self, tmp_path: Path) -> None:
        deps, _ledger, workspace, blobs = self._deps(tmp_path)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        loop.ingest(blob_event(ref), deps)
        key = WorkKey.for_blob(ref)
        del workspace.statuses[key.job_name]

        report = loop.reconcile(deps, grace=timedelta(0))

        assert [(f.what, f.result) for f in report.found] == [
            ("finished_job", f"submitted {key.job_name} on autoretrain-data:1")
        ]
        assert key.job_name in workspace.statuses and len(workspace.submitted) == 2  # the same job name, once more

    def test_a_run_whose_ledger_record_was_lost_is_adopted_or_reported(self, tmp_path: Path) -> None:
        """The ledger lost its writes (an emulator crash): a surviving blob's run is adopted and
        finished with its own model; a run whose blob is gone too is reported, not trained again."""
        deps, ledger, workspace, blobs = self._deps(tmp_path)
        kept, gone = blobs.put("incoming", "kept.csv", GOOD_CSV), blobs.put("incoming", "gone.csv", GOOD_CSV)
        for i, ref in enumerate((kept, gone)):
            loop.ingest(blob_event(ref, event_id=f"ev-{i}"), deps)
            workspace.finish(WorkKey.for_blob(ref).job_name, JobState.COMPLETED,
                             Metrics({"f1_macro": 0.9}, primary="f1_macro"))
        ledger.rows.clear()
        del blobs.blobs[("incoming", "gone.csv")]

        report = loop.reconcile(deps, grace=timedelta(minutes=10))

        kept_key, gone_key = WorkKey.for_blob(kept), WorkKey.for_blob(gone)
        assert [(f.what, f.work_key) for f in report.found] == [
            ("orphan_job", kept_key.value), ("orphan_job", gone_key.value)
        ]
        assert ledger.rows[kept_key.value].state is LedgerState.DONE
        gone_record = ledger.rows[gone_key.value]
        assert gone_record.state is LedgerState.SKIPPED and "the blob version is gone" in (gone_record.reason or "")
        assert report.found[1].result.startswith("skipped: incoming/gone.csv: the blob version is gone")
        assert len(workspace.submitted) == 3 and len({k for _, k, _ in workspace.submitted}) == 2
        assert len(workspace.models) == 1
        assert loop.reconcile(deps, grace=timedelta(minutes=10)).found == ()  # reported once

    def test_another_deployment_s_jobs_in_a_shared_workspace_are_not_adopted(self, tmp_path: Path) -> None:
        """A job whose blob is in another incoming container belongs to another deployment's ledger:
        recording it here would make a skipped record for no blob of ours."""
        deps, ledger, workspace, _ = self._deps(tmp_path)
        other = WorkKey.for_blob(BlobRef("other-incoming", "x.csv", "0x1"))
        workspace.tags[other.job_name] = {JOB_TAG: other.value, "blob": "other-incoming/x.csv", "etag": "0x1"}
        workspace.finish(other.job_name, JobState.COMPLETED, Metrics({"f1_macro": 0.9}, primary="f1_macro"))

        report = loop.reconcile(deps, grace=timedelta(0))

        assert (report.jobs, report.found, ledger.rows) == (0, (), {})

    def test_two_passes_at_once_change_nothing_twice(self, tmp_path: Path) -> None:
        """A second pass over the same state (another timer, the CLI) finds nothing more."""
        deps, _ledger, workspace, blobs = self._deps(tmp_path)
        blobs.put("incoming", "a.csv", GOOD_CSV)
        first = loop.reconcile(deps, grace=timedelta(0))
        second = loop.reconcile(deps, grace=timedelta(0))
        assert len(first.found) == 1 and second.found == ()
        assert len(workspace.submitted) == 1
