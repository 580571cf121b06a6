"""The loop's use cases over fakes of the ports: what each event leads to, and what it must not."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
from fakes import FakeBlobStore, FakeLedger, FakeWorkspace

from autoretrain import loop
from autoretrain.contract import HEAD_BYTES, load_contract
from autoretrain.domain import (
    JOB_TAG,
    BlobRef,
    DataVersion,
    JobState,
    JobStatus,
    LedgerRecord,
    LedgerState,
    Metrics,
    ModelVersion,
    Move,
    Submit,
    WorkKey,
)
from autoretrain.domain.errors import NotReadyError, RetrainRefused, StorageError
from autoretrain.domain.events import BlobCreated, JobFinished
from autoretrain.settings import LOCAL_STORAGE_TOPIC, LOCAL_WORKSPACE_TOPIC

# Twelve rows and two classes: enough for the pipeline, so ingest's whole-file checks pass it.
GOOD_CSV = b"a,b,c,label\n" + b"".join(
    f"{i}.5,{i},{'xy'[i % 2]},{('yes', 'no')[i % 2]}\n".encode() for i in range(1, 13)
)
BASE_CONTRACT = (
    "target: label\ntask: classification\nprimary_metric: f1_macro\nfeatures: {a: float, b: int, c: category}\n"
)
# A job per accepted file, at once (no limit on jobs in flight): what these tests pin. The default, one
# job in flight and a burst joining the next job, is tested in test_dispatch.py.
CONTRACT = BASE_CONTRACT + "training: {jobs_in_flight: 0}\n"


@pytest.fixture
def deps(tmp_path: Path) -> loop.Deps:
    return _deps_with(tmp_path, CONTRACT)


def blob_event(ref: BlobRef, *, event_id: str = "ev-1", api: str = "PutBlob", topic: str = LOCAL_STORAGE_TOPIC,
               length: int | None = None) -> BlobCreated:
    return BlobCreated(
        event_id=event_id, topic=topic, subject=f"/blobServices/default/containers/{ref.container}/blobs/{ref.name}",
        event_time=None, api=api, blob=ref, url=f"http://127.0.0.1:10000/devstoreaccount1/{ref.path}",
        content_length=length, content_type="text/csv", blob_type="BlockBlob", sequencer=None,
    )


def run_event(key: WorkKey, *, event_type: str = "Microsoft.MachineLearningServices.RunCompleted",
              job_type: str = "azureml.PipelineRun", status: str = "Completed", tags: dict[str, str] | None = None,
              topic: str = LOCAL_WORKSPACE_TOPIC, event_id: str = "run-ev-1", job: str | None = None) -> JobFinished:
    return JobFinished(
        event_id=event_id, event_type=event_type, topic=topic, subject=f"experiments/x/runs/{key.job_name}",
        event_time=None, experiment_id="x", experiment_name="autoretrain", job=job or key.job_name,
        job_type=job_type, job_status=status, job_tags={JOB_TAG: key.value} if tags is None else tags,
    )


def fakes(deps: loop.Deps) -> tuple[FakeWorkspace, FakeLedger, FakeBlobStore]:
    assert isinstance(deps.workspace, FakeWorkspace)
    assert isinstance(deps.ledger, FakeLedger)
    assert isinstance(deps.blobs, FakeBlobStore)
    return deps.workspace, deps.ledger, deps.blobs


METRICS = Metrics({"f1_macro": 0.9, "accuracy": 0.92}, primary="f1_macro")


class TestIngest:
    def test_new_blob_is_registered_submitted_and_recorded(self, deps: loop.Deps) -> None:
        """A committed CSV that meets the contract becomes one data version and one pipeline job."""
        workspace, ledger, blobs = fakes(deps)
        ref = blobs.put("incoming", "2026-01.csv", GOOD_CSV)
        key = WorkKey.for_blob(ref)

        outcome = loop.ingest(blob_event(ref), deps)

        assert isinstance(outcome, loop.Submitted)
        snapshot = BlobRef("datasets", f"{key}/2026-01.csv", blobs.blobs[("datasets", f"{key}/2026-01.csv")][0])
        assert workspace.registered_data == [(snapshot, key)]
        assert [(d.version, k, t) for d, k, t in workspace.submitted] == [
            ("1", key, {JOB_TAG: key.value, "blob": "incoming/2026-01.csv", "etag": ref.etag, "champion": ""})
        ]
        record = ledger.get(key)
        assert record is not None
        assert (record.state, record.job, record.data_version) == (
            LedgerState.SUBMITTED, key.job_name, "autoretrain-data:1"
        )

    def test_a_small_file_is_read_once_and_its_snapshot_written_from_those_bytes(self, deps: loop.Deps) -> None:
        """The head check read the whole file, pinned to its eTag: the snapshot and the data version
        are written from those bytes, not read from the customer's blob twice more."""
        workspace, _, blobs = fakes(deps)
        ref = blobs.put("incoming", "2026-01.csv", GOOD_CSV)
        key = WorkKey.for_blob(ref)

        assert isinstance(loop.ingest(blob_event(ref, length=len(GOOD_CSV)), deps), loop.Submitted)

        assert blobs.reads == [ref]
        assert blobs.blobs[("datasets", f"{key}/2026-01.csv")][1:] == (
            GOOD_CSV, {"source_blob": ref.path, "source_etag": ref.etag, "work_key": key.value})
        assert workspace.data_contents == [GOOD_CSV]

    @pytest.mark.parametrize("told", ["the true length", "the head's length"])
    def test_a_file_longer_than_the_head_is_copied_from_the_blob_version(self, deps: loop.Deps, told: str) -> None:
        """Whatever length the event claims: an event that says the file is just the head must not cut
        the data version short."""
        workspace, _, blobs = fakes(deps)
        rows = GOOD_CSV.split(b"\n", 1)[1]
        big = GOOD_CSV + rows * (HEAD_BYTES // len(rows) + 1)
        ref = blobs.put("incoming", "big.csv", big)
        key = WorkKey.for_blob(ref)

        length = len(big) if told == "the true length" else HEAD_BYTES
        assert isinstance(loop.ingest(blob_event(ref, length=length), deps), loop.Submitted)

        assert blobs.reads == [ref, ref]  # the head, then the copy
        assert blobs.blobs[("datasets", f"{key}/big.csv")][1] == big
        assert workspace.data_contents == [None]

    def test_second_delivery_of_same_etag_submits_nothing(self, deps: loop.Deps) -> None:
        """Event Grid delivers at least once; the second delivery is a logged no-op."""
        workspace, _, blobs = fakes(deps)
        ref = blobs.put("incoming", "2026-01.csv", GOOD_CSV)
        loop.ingest(blob_event(ref, event_id="ev-1"), deps)

        outcome = loop.ingest(blob_event(ref, event_id="ev-2"), deps)

        assert isinstance(outcome, loop.Duplicate)
        assert outcome.record.state is LedgerState.SUBMITTED
        assert len(workspace.submitted) == 1

    def test_rewrite_of_same_path_is_new_data(self, deps: loop.Deps) -> None:
        """A new eTag on the same path is a new unit of work: it retrains again."""
        workspace, _, blobs = fakes(deps)
        first = blobs.put("incoming", "data.csv", GOOD_CSV)
        loop.ingest(blob_event(first), deps)
        second = blobs.put("incoming", "data.csv", GOOD_CSV + b"4.5,5,y,no\n")

        outcome = loop.ingest(blob_event(second, event_id="ev-2"), deps)

        assert isinstance(outcome, loop.Submitted)
        assert [k for _, k, _ in workspace.submitted] == [WorkKey.for_blob(first), WorkKey.for_blob(second)]

    def test_claimed_but_unfinished_work_is_taken_over_once_its_lease_ran_out(self, deps: loop.Deps) -> None:
        """A delivery that died after its claim is picked up by a later one, not skipped."""
        workspace, ledger, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        ledger.claim(ref, WorkKey.for_blob(ref), "ev-crashed", ledger.now + deps.config.lease)

        during = loop.ingest(blob_event(ref, event_id="ev-retry-1"), deps)
        ledger.now += deps.config.lease
        after = loop.ingest(blob_event(ref, event_id="ev-retry-2"), deps)

        assert isinstance(during, loop.Duplicate) and during.record.state is LedgerState.CLAIMED
        assert isinstance(after, loop.Submitted) and after.record.takers == 2
        assert len(workspace.submitted) == 1

    def test_a_transient_failure_gives_the_lease_back_so_the_retry_starts_at_once(self, deps: loop.Deps) -> None:
        """Storage down during ingest: the event is retried, and the retry does not wait for a lease."""
        workspace, ledger, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        real_copy = blobs.copy_to

        def storage_down(*args: object, **kwargs: object) -> BlobRef:
            raise StorageError("datasets: cannot copy (connection refused).")

        blobs.copy_to = storage_down  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            loop.ingest(blob_event(ref), deps)
        record = ledger.get(WorkKey.for_blob(ref))
        assert record is not None and (record.state, record.lease_until) == (LedgerState.CLAIMED, None)
        assert record.reason == "StorageError: datasets: cannot copy (connection refused)."

        blobs.copy_to = real_copy  # type: ignore[method-assign]
        outcome = loop.ingest(blob_event(ref, event_id="ev-retry"), deps)
        assert isinstance(outcome, loop.Submitted) and outcome.record.reason is None
        assert len(workspace.submitted) == 1

    def test_a_blob_version_whose_takers_keep_dying_fails_with_the_last_error(self, deps: loop.Deps) -> None:
        """No claim is held forever: after max_takers takers it is failed, with the reason."""
        _, ledger, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)

        def storage_down(*args: object, **kwargs: object) -> BlobRef:
            raise StorageError("datasets: cannot copy (timeout).")

        blobs.copy_to = storage_down  # type: ignore[method-assign]
        for taker in range(deps.config.max_takers):
            with pytest.raises(StorageError):
                loop.ingest(blob_event(ref, event_id=f"ev-{taker}"), deps)
        outcome = loop.ingest(blob_event(ref, event_id="ev-last"), deps)

        assert isinstance(outcome, loop.Failed)
        assert outcome.reason == (
            f"gave up after {deps.config.max_takers} takers; last error: "
            "StorageError: datasets: cannot copy (timeout)."
        )
        record = ledger.get(WorkKey.for_blob(ref))
        assert record is not None and record.state is LedgerState.FAILED and record.lease_until is None

    def test_bad_file_is_quarantined_with_reason_and_left_unchanged(self, deps: loop.Deps) -> None:
        """A contract violation copies the file to quarantine/ with the reason; the original stays."""
        workspace, ledger, blobs = fakes(deps)
        bad = b"a,b,c,label\n1.5,2,x,yes\nabc,3,y,no\n"
        ref = blobs.put("incoming", "march.csv", bad)
        key = WorkKey.for_blob(ref)

        outcome = loop.ingest(blob_event(ref), deps)

        reason = (
            "incoming/march.csv: column 'a' has 'abc' on line 3; expected a number. Fix the file and upload it again."
        )
        assert isinstance(outcome, loop.Quarantined)
        assert outcome.reason == reason
        _, data, metadata = blobs.blobs[("quarantine", f"{key}/march.csv")]
        assert (data, metadata["reason"], metadata["source_etag"]) == (bad, reason, ref.etag)
        assert blobs.blobs[("incoming", "march.csv")] == (ref.etag, bad, {})
        record = ledger.get(key)
        assert record is not None and (record.state, record.reason) == (LedgerState.QUARANTINED, reason)
        assert workspace.submitted == []

    @pytest.mark.parametrize(
        ("name", "data", "length", "expected"),
        [
            ("notes.txt", GOOD_CSV, None, "only .csv files are accepted"),
            ("empty.csv", b"", 0, "the file is empty"),
            ("cols.csv", b"a,b,label\n1,2,yes\n", None, "missing column(s) 'c'"),
            ("header.csv", b"a,b,c,label\n", None, "no data rows"),
        ],
    )
    def test_each_kind_of_bad_file_is_quarantined(
        self, deps: loop.Deps, name: str, data: bytes, length: int | None, expected: str
    ) -> None:
        """Wrong type, empty, missing column, no rows: each has its own one-line reason."""
        _, _, blobs = fakes(deps)
        ref = blobs.put("incoming", name, data)
        outcome = loop.ingest(blob_event(ref, length=length), deps)
        assert isinstance(outcome, loop.Quarantined)
        assert expected in outcome.reason and "\n" not in outcome.reason

    def test_a_name_that_climbs_folders_is_recorded_and_never_copied(self, deps: loop.Deps) -> None:
        """Blob names are untrusted: no URL reaches '..' segments, so nothing is copied; the reason stays."""
        _, ledger, blobs = fakes(deps)
        ref = blobs.put("incoming", "a/../../other/x.csv", GOOD_CSV)

        outcome = loop.ingest(blob_event(ref), deps)

        assert isinstance(outcome, loop.Skipped)
        assert "has a '.' or '..' folder" in outcome.reason and "nothing was copied" in outcome.reason
        assert [c for c, _ in blobs.blobs] == ["incoming"]
        record = ledger.get(WorkKey.for_blob(ref))
        assert record is not None and record.state is LedgerState.SKIPPED

    def test_copies_stay_inside_their_work_key_folder_and_under_the_name_limit(self) -> None:
        """Control characters are replaced, a '..' cannot climb, a 1,000-character name is cut."""
        key = WorkKey("a" * 24)
        assert BlobRef("incoming", "a/../b\x01.csv", "0x1").copy_name(key) == f"{key}/a/_/b_.csv"
        long = BlobRef("incoming", "x" * 996 + ".csv", "0x1").copy_name(key)
        assert long.startswith(f"{key}/xxx") and long.endswith("x.csv") and len(long) <= 275

    def test_event_from_another_storage_account_is_ignored(self, deps: loop.Deps) -> None:
        """A forged or foreign event is rejected without claiming anything."""
        _, ledger, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        other = LOCAL_STORAGE_TOPIC.replace("devstoreaccount1", "someoneelse")
        outcome = loop.ingest(blob_event(ref, topic=other), deps)
        assert isinstance(outcome, loop.Ignored) and "is not our storage account" in outcome.reason
        assert ledger.rows == {}

    def test_uncommitted_api_and_other_containers_are_ignored(self, deps: loop.Deps) -> None:
        """Only committed writes to incoming/ are work."""
        _, ledger, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        assert isinstance(loop.ingest(blob_event(ref, api="CreateFile"), deps), loop.Ignored)
        elsewhere = blobs.put("datasets", "a.csv", GOOD_CSV)
        assert isinstance(loop.ingest(blob_event(elsewhere), deps), loop.Ignored)
        assert ledger.rows == {}

    def test_blob_replaced_before_read_is_skipped_not_lost(self, deps: loop.Deps) -> None:
        """The old version is gone; it is recorded as skipped, and the new one has its own event."""
        workspace, ledger, blobs = fakes(deps)
        old = blobs.put("incoming", "a.csv", GOOD_CSV)
        blobs.put("incoming", "a.csv", GOOD_CSV + b"9,9,z,no\n")

        outcome = loop.ingest(blob_event(old), deps)

        assert isinstance(outcome, loop.Skipped)
        record = ledger.get(WorkKey.for_blob(old))
        assert record is not None and record.state is LedgerState.SKIPPED
        assert "replaced or deleted" in (record.reason or "")
        assert workspace.submitted == []

    def test_an_event_for_a_blob_that_does_not_exist_leaves_no_record(
        self, deps: loop.Deps, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A phantom event (no blob of that name: deleted, or never there) is one WARNING line,
        `ingest.ignored`, and no ledger record, however often it is delivered."""
        workspace, ledger, _ = fakes(deps)
        ghost = BlobRef("incoming", "ghost.csv", "0x8DEADBEEF000001")
        caplog.set_level(logging.WARNING, logger="autoretrain")

        outcomes = [loop.ingest(blob_event(ghost, event_id=f"ev-{i}"), deps) for i in range(2)]
        for outcome in outcomes:
            loop.log_outcome(outcome)

        assert all(isinstance(o, loop.Ignored) and o.event == "ingest.ignored" for o in outcomes)
        assert "incoming/ghost.csv (eTag 0x8DEADBEEF000001): " in outcomes[0].reason  # type: ignore[union-attr]
        assert ledger.rows == {} and workspace.submitted == []
        assert [r.event for r in caplog.records if hasattr(r, "event")] == ["ingest.ignored", "ingest.ignored"]

    def test_a_bad_name_for_a_blob_that_does_not_exist_quarantines_nothing(self, deps: loop.Deps) -> None:
        """Existence comes first: a phantom with a name ingest would refuse is ignored, not recorded."""
        _, ledger, blobs = fakes(deps)

        outcome = loop.ingest(blob_event(BlobRef("incoming", "ghost.exe", "0x1")), deps)

        assert isinstance(outcome, loop.Ignored) and ledger.rows == {} and blobs.blobs == {}

    def test_each_step_is_logged_with_the_bound_context(
        self, deps: loop.Deps, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Ops can follow one work key through every step."""
        from autoretrain.logs import bound, fields_of

        _, _, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        key = WorkKey.for_blob(ref)
        caplog.set_level(logging.INFO, logger="autoretrain")
        with bound(work_key=key.value):
            loop.log_outcome(loop.ingest(blob_event(ref), deps))
        steps = [(r.event, fields_of(r)["work_key"]) for r in caplog.records if hasattr(r, "event")]
        assert steps == [
            ("ingest.claimed", key.value),
            ("ingest.contract_ok", key.value),
            ("ingest.data_registered", key.value),
            ("ingest.training_set", key.value),
            ("ingest.pipeline_submitted", key.value),
            ("ingest.submitted", key.value),
        ]


class TestComplete:
    def _submitted(self, deps: loop.Deps) -> WorkKey:
        _, _, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        loop.ingest(blob_event(ref), deps)
        return WorkKey.for_blob(ref)

    def test_a_running_event_ahead_of_ingests_ledger_move_is_in_progress_and_a_finished_one_retried(
        self, deps: loop.Deps
    ) -> None:
        """The job's Running event can arrive before ingest recorded the job: nothing to do, and no
        error to retry. Its Completed event that early must come back, so it raises."""
        workspace, ledger, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        key = WorkKey.for_blob(ref)
        ledger.claim(ref, key, "ev-1", ledger.now + deps.config.lease)
        workspace.statuses[key.job_name] = JobStatus(key.job_name, JobState.RUNNING)

        running = loop.complete(run_event(key, event_type="Microsoft.MachineLearningServices.RunStatusChanged",
                                          status="Running"), deps)

        assert isinstance(running, loop.InProgress) and running.status.state is JobState.RUNNING
        workspace.finish(key.job_name, JobState.COMPLETED, METRICS)
        with pytest.raises(NotReadyError, match="ingest has not recorded job"):
            loop.complete(run_event(key), deps)
        record = ledger.get(key)
        assert record is not None and record.state is LedgerState.CLAIMED and workspace.models == {}

    def test_a_finished_job_whose_ingest_worker_is_gone_is_recorded_and_completed_by_its_event(
        self, deps: loop.Deps
    ) -> None:
        """Its worker submitted the job and died before recording it; once the claim's lease ran out,
        the job's Completed event finishes the ingest (which finds the job) and then the job."""
        workspace, ledger, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        key = WorkKey.for_blob(ref)
        ledger.claim(ref, key, "ev-1", ledger.now + deps.config.lease)
        workspace.submit(DataVersion("autoretrain-data-trainset", "1", "azureml:x"), key, {JOB_TAG: key.value})
        workspace.finish(key.job_name, JobState.COMPLETED, METRICS)
        ledger.now += deps.config.lease

        outcome = loop.complete(run_event(key), deps)

        assert isinstance(outcome, loop.Registered) and outcome.promoted
        record = ledger.get(key)
        assert record is not None
        assert (record.state, record.job) == (LedgerState.DONE, key.job_name)
        assert [m.state for m in record.history][:3] == ["claimed", "taken_over", "submitted"]

    def test_completed_run_registers_model_with_metrics_and_promotes_first(self, deps: loop.Deps) -> None:
        """The first model has no champion to beat: it is registered and promoted."""
        workspace, ledger, _ = fakes(deps)
        key = self._submitted(deps)
        workspace.finish(key.job_name, JobState.COMPLETED, METRICS)

        outcome = loop.complete(run_event(key), deps)

        assert isinstance(outcome, loop.Registered) and outcome.promoted
        model = workspace.models[key.value]
        assert model.properties == {
            "blob": "incoming/a.csv", "etag": outcome.record.blob.etag, "work_key": key.value,
            "job": key.job_name, "data_version": "autoretrain-data:1",
            "training_set": "autoretrain-data-trainset:1", "training_files": "1", "trained_on_files": "1",
        }
        record = ledger.get(key)
        assert record is not None
        assert (record.state, record.model_version, record.metrics, record.promoted) == (
            LedgerState.DONE, "autoretrain-model:1", METRICS, True
        )

    def test_worse_model_is_registered_but_not_promoted(self, deps: loop.Deps) -> None:
        """The champion gate compares the primary metric in its direction."""
        workspace, _, blobs = fakes(deps)
        first = self._submitted(deps)
        workspace.finish(first.job_name, JobState.COMPLETED, METRICS)
        loop.complete(run_event(first), deps)
        ref = blobs.put("incoming", "b.csv", GOOD_CSV)
        loop.ingest(blob_event(ref, event_id="ev-b"), deps)
        second = WorkKey.for_blob(ref)
        workspace.finish(second.job_name, JobState.COMPLETED,
                         Metrics({"f1_macro": 0.5}, primary="f1_macro", champion={"f1_macro": 0.9}, test_rows=40))

        outcome = loop.complete(run_event(second, event_id="run-ev-2"), deps)

        assert isinstance(outcome, loop.Registered) and not outcome.promoted
        assert workspace.promoted == ["1"]
        assert outcome.record.decision == (
            "kept v1: f1_macro 0.5000 vs v1's 0.9000 on the same 40 test rows; needs better (a tie keeps the champion)"
        )

    def test_gate_compares_again_when_another_completion_promoted_meanwhile(self, deps: loop.Deps) -> None:
        """promote() is a compare-and-swap: a better rival that won the race stays champion."""
        workspace, _, _ = fakes(deps)
        key = self._submitted(deps)
        workspace.finish(key.job_name, JobState.COMPLETED, METRICS)
        rival_key = WorkKey("f" * 24)
        rival = workspace.register_model("rival-job", rival_key, Metrics({"f1_macro": 0.99}, primary="f1_macro"), {})
        racing_promote = workspace.promote

        def promote_after_the_rival(model: ModelVersion, *, replacing: ModelVersion | None) -> ModelVersion | None:
            if not workspace.promoted:
                racing_promote(rival, replacing=None)  # the other completion wins the race
            return racing_promote(model, replacing=replacing)

        workspace.promote = promote_after_the_rival  # type: ignore[method-assign]
        outcome = loop.complete(run_event(key), deps)

        assert isinstance(outcome, loop.Registered) and not outcome.promoted
        champion = workspace.champion()
        assert champion is not None and champion.version == rival.version

    def test_lower_error_beats_champion_when_smaller_is_better(self) -> None:
        """rmse-like metrics promote the smaller value."""
        champion = Metrics({"rmse": 3.0}, primary="rmse", greater_is_better=False)
        assert Metrics({"rmse": 2.0}, primary="rmse", greater_is_better=False).beats(champion)
        assert not Metrics({"rmse": 4.0}, primary="rmse", greater_is_better=False).beats(champion)

    def test_our_job_is_completed_whatever_runtype_the_event_says(self, deps: loop.Deps) -> None:
        """The docs' sample has runType null: the tag and the job name identify our job."""
        workspace, _, _ = fakes(deps)
        key = self._submitted(deps)
        workspace.finish(key.job_name, JobState.COMPLETED, METRICS)
        outcome = loop.complete(run_event(key, job_type=""), deps)
        assert isinstance(outcome, loop.Registered)

    def test_second_completion_event_registers_nothing_more(self, deps: loop.Deps) -> None:
        """RunCompleted and RunStatusChanged(Completed) both arrive; one model results."""
        workspace, _, _ = fakes(deps)
        key = self._submitted(deps)
        workspace.finish(key.job_name, JobState.COMPLETED, METRICS)
        loop.complete(run_event(key), deps)

        again = loop.complete(
            run_event(key, event_type="Microsoft.MachineLearningServices.RunStatusChanged", event_id="run-ev-2"), deps
        )

        assert isinstance(again, loop.Duplicate)
        assert len(workspace.models) == 1

    def test_failed_run_is_recorded_with_step_and_log(self, deps: loop.Deps) -> None:
        """A failed run has no RunCompleted; its RunStatusChanged records where it failed."""
        workspace, ledger, _ = fakes(deps)
        key = self._submitted(deps)
        workspace.finish(key.job_name, JobState.FAILED, failed_step="prep",
                         error="column 'a' has 'x' on line 90", log="/logs/prep.log")

        outcome = loop.complete(
            run_event(key, event_type="Microsoft.MachineLearningServices.RunStatusChanged", status="Failed"), deps
        )

        assert isinstance(outcome, loop.JobFailed)
        record = ledger.get(key)
        assert record is not None and record.state is LedgerState.FAILED
        assert record.reason == "Failed in step 'prep': column 'a' has 'x' on line 90 (log: /logs/prep.log)"
        assert workspace.models == {}

    def test_a_data_fault_prep_found_deep_in_the_file_is_quarantined_not_failed(self, deps: loop.Deps) -> None:
        """Prep exited 65: the file's fault. The bytes the job read go to quarantine with prep's reason,
        even though the customer replaced the blob since; the customer's blob is not touched."""
        workspace, ledger, blobs = fakes(deps)
        key = self._submitted(deps)
        replaced = blobs.put("incoming", "a.csv", b"a newer upload")
        reason = "a.csv: column 'a' has 'x' on line 50000; expected a number. Fix the file and upload it again."
        workspace.finish(key.job_name, JobState.FAILED, failed_step="prep", error=f"{reason} (exit code 65)",
                         log="/logs/prep.log", rejected=reason)

        outcome = loop.complete(
            run_event(key, event_type="Microsoft.MachineLearningServices.RunStatusChanged", status="Failed"), deps
        )

        assert isinstance(outcome, loop.Quarantined)
        record = ledger.get(key)
        assert record is not None and record.state is LedgerState.QUARANTINED
        assert record.reason == f"{reason} (found by step 'prep'; log: /logs/prep.log)"
        _, data, metadata = blobs.blobs[("quarantine", f"{key}/a.csv")]
        assert data == GOOD_CSV and metadata["reason"] == record.reason
        assert blobs.blobs[("incoming", "a.csv")][:2] == (replaced.etag, b"a newer upload")
        assert workspace.models == {}
        # A second delivery of the failure finds the record final.
        again = loop.complete(run_event(key, status="Failed", event_id="run-ev-2"), deps)
        assert isinstance(again, loop.Duplicate)
        assert [k for k in blobs.blobs if k[0] == "quarantine"] == [("quarantine", f"{key}/a.csv")]

    def test_running_status_is_in_progress_and_changes_nothing(self, deps: loop.Deps) -> None:
        """A RunStatusChanged to Running is noted; the record stays submitted."""
        workspace, ledger, _ = fakes(deps)
        key = self._submitted(deps)
        workspace.finish(key.job_name, JobState.RUNNING)
        outcome = loop.complete(
            run_event(key, event_type="Microsoft.MachineLearningServices.RunStatusChanged", status="Running"), deps
        )
        assert isinstance(outcome, loop.InProgress)
        record = ledger.get(key)
        assert record is not None and record.state is LedgerState.SUBMITTED

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"job": "step-run-of-our-job"}, "is not job autoretrain-"),
            ({"tags": {}}, "has no 'autoretrain' tag"),
            ({"tags": {JOB_TAG: "not-a-key"}}, "not a work key"),
            ({"topic": LOCAL_WORKSPACE_TOPIC.replace("/local", "/other")}, "is not our workspace"),
        ],
    )
    def test_jobs_that_are_not_ours_are_ignored(self, deps: loop.Deps, changes: dict[str, object], reason: str) -> None:
        """Step runs of our job, runs without our tag and other workspaces' events change nothing, whatever
    their runType (Microsoft does not document what v2 pipeline jobs send there)."""
        workspace, _, _ = fakes(deps)
        key = self._submitted(deps)
        workspace.finish(key.job_name, JobState.COMPLETED, METRICS)
        outcome = loop.complete(run_event(key, **changes), deps)  # type: ignore[arg-type]
        assert isinstance(outcome, loop.Ignored) and reason in outcome.reason
        assert workspace.models == {}


class TestChampionGate:
    """Both numbers come from the same test rows (evaluate scores the champion too); the contract's
    promote rule decides; a tie keeps the champion."""

    def _with_champion(self, deps: loop.Deps, contract: str = CONTRACT) -> WorkKey:
        workspace, _, blobs = fakes(deps)
        first = blobs.put("incoming", "a.csv", GOOD_CSV)
        loop.ingest(blob_event(first), deps)
        key = WorkKey.for_blob(first)
        first_metrics = Metrics({"f1_macro": 0.90}, primary="f1_macro", test_rows=30)
        workspace.finish(key.job_name, JobState.COMPLETED, first_metrics)
        loop.complete(run_event(key), deps)
        second = blobs.put("incoming", "b.csv", GOOD_CSV)
        loop.ingest(blob_event(second, event_id="ev-b"), deps)
        return WorkKey.for_blob(second)

    def _finish(self, deps: loop.Deps, key: WorkKey, mine: float, theirs: float) -> loop.Registered:
        workspace, _, _ = fakes(deps)
        workspace.finish(key.job_name, JobState.COMPLETED,
                         Metrics({"f1_macro": mine}, primary="f1_macro", champion={"f1_macro": theirs}, test_rows=50))
        outcome = loop.complete(run_event(key, event_id="run-ev-2"), deps)
        assert isinstance(outcome, loop.Registered)
        return outcome

    def test_an_easy_test_split_no_longer_wins(self, deps: loop.Deps) -> None:
        """0.99 on its own rows beat the champion's stored 0.90 before; on the same rows the champion
        scores 0.995, so it stays."""
        workspace, _, _ = fakes(deps)
        key = self._with_champion(deps)
        assert workspace.champions[key.job_name] == "1"  # the job was given the champion to score

        outcome = self._finish(deps, key, mine=0.99, theirs=0.995)

        assert not outcome.promoted and workspace.promoted == ["1"]
        record = outcome.record
        assert (record.promoted, record.metrics.champion_value, record.metrics.test_rows) == (False, 0.995, 50)
        assert record.as_row()["decision"].startswith("kept v1: f1_macro 0.9900 vs v1's 0.9950 on the same 50")
        assert workspace.decisions["2"] == record.decision  # the model's `gate` tag

    @pytest.mark.parametrize(
        ("mine", "theirs", "promoted"),
        [(0.905, 0.90, False), (0.92, 0.90, True), (0.90, 0.90, False)],
        ids=["within-min-delta", "beyond-min-delta", "tie"],
    )
    def test_min_delta_decides_and_a_tie_keeps_the_champion(
        self, tmp_path: Path, mine: float, theirs: float, promoted: bool
    ) -> None:
        deps = _deps_with(tmp_path, CONTRACT + "promote: {min_delta: 0.01}\n")
        key = self._with_champion(deps)
        outcome = self._finish(deps, key, mine, theirs)
        assert outcome.promoted is promoted

    def test_a_first_model_below_min_value_is_not_promoted(self, tmp_path: Path) -> None:
        deps = _deps_with(tmp_path, CONTRACT + "promote: {min_value: 0.95}\n")
        workspace, _, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        loop.ingest(blob_event(ref), deps)
        key = WorkKey.for_blob(ref)
        workspace.finish(key.job_name, JobState.COMPLETED, Metrics({"f1_macro": 0.9}, primary="f1_macro"))
        outcome = loop.complete(run_event(key), deps)
        assert isinstance(outcome, loop.Registered) and not outcome.promoted
        assert workspace.champion() is None
        assert outcome.record.decision == "kept: f1_macro 0.9000 does not reach the contract's min_value 0.95"

    def test_a_champion_this_job_did_not_score_is_not_compared_with(self, deps: loop.Deps) -> None:
        """Two jobs submitted before either finished: the second scored no champion, so when the
        first becomes champion meanwhile, the second is kept out rather than compared unfairly."""
        workspace, _, blobs = fakes(deps)
        a, b = blobs.put("incoming", "a.csv", GOOD_CSV), blobs.put("incoming", "b.csv", GOOD_CSV)
        loop.ingest(blob_event(a), deps)
        loop.ingest(blob_event(b, event_id="ev-b"), deps)
        first, second = WorkKey.for_blob(a), WorkKey.for_blob(b)
        for key in (first, second):
            workspace.finish(key.job_name, JobState.COMPLETED, Metrics({"f1_macro": 0.9}, primary="f1_macro"))
        loop.complete(run_event(first), deps)

        outcome = loop.complete(run_event(second, event_id="run-ev-2"), deps)

        assert isinstance(outcome, loop.Registered) and not outcome.promoted
        assert "it became champion after this job was submitted" in (outcome.record.decision or "")


def _deps_with(tmp_path: Path, contract_text: str) -> loop.Deps:
    contract = tmp_path / "contract.yaml"
    contract.write_text(contract_text)
    ledger = FakeLedger()
    return loop.Deps(
        config=loop.LoopConfig(storage_topic=LOCAL_STORAGE_TOPIC, workspace_topic=LOCAL_WORKSPACE_TOPIC),
        contract=load_contract(contract), workspace=FakeWorkspace(), ledger=ledger, blobs=FakeBlobStore(),
        clock=lambda: ledger.now,
    )


class TestTrainingRule:
    """The exact data versions a job trains on are fixed when it is submitted, and recorded."""

    def _drop(self, deps: loop.Deps, name: str, *, done: bool = True) -> WorkKey:
        workspace, _, blobs = fakes(deps)
        ref = blobs.put("incoming", name, GOOD_CSV)
        loop.ingest(blob_event(ref, event_id=f"ev-{name}"), deps)
        key = WorkKey.for_blob(ref)
        if done:
            workspace.finish(key.job_name, JobState.COMPLETED, METRICS)
            loop.complete(run_event(key, event_id=f"run-{name}"), deps)
        return key

    def test_all_accepted_versions_and_never_a_quarantined_or_failed_one(self, deps: loop.Deps) -> None:
        workspace, ledger, blobs = fakes(deps)
        first = self._drop(deps, "a.csv")
        bad = blobs.put("incoming", "bad.csv", b"a,b\n1,2\n")
        loop.ingest(blob_event(bad, event_id="ev-bad"), deps)  # quarantined: never in a window
        failed = self._drop(deps, "f.csv", done=False)
        workspace.finish(failed.job_name, JobState.FAILED, failed_step="train", error="boom")
        loop.complete(run_event(failed, event_id="run-f"), deps)
        third = self._drop(deps, "c.csv")

        assert workspace.training_sets[third.value] == ("autoretrain-data:1", "autoretrain-data:3")
        record = ledger.get(third)
        assert record is not None and (record.members, record.trained_on) == (2, 2)
        assert record.training_set == "autoretrain-data-trainset:3"
        assert workspace.training_sets[first.value] == ("autoretrain-data:1",)

    def test_a_version_still_in_its_job_waits_for_the_next_window(self, deps: loop.Deps) -> None:
        """Prep may yet find it bad (and quarantine it): in a window now it would fail the new job
        for a fault that is not the new file's."""
        workspace, _, _ = fakes(deps)
        self._drop(deps, "a.csv")
        self._drop(deps, "running.csv", done=False)
        third = self._drop(deps, "c.csv")
        assert workspace.training_sets[third.value] == ("autoretrain-data:1", "autoretrain-data:3")

    def test_last_n_versions_train_and_every_version_tests(self, tmp_path: Path) -> None:
        """The job trains on the last two; its test rows come from all three, so a model that forgot
        the first month is judged on it too."""
        deps = _deps_with(tmp_path, BASE_CONTRACT + "training: {window: last, versions: 2, jobs_in_flight: 0}\n")
        keys = [self._drop(deps, f"{m}.csv") for m in ("a", "b", "c")]
        workspace, ledger, _ = fakes(deps)
        assert workspace.training_sets[keys[-1].value] == (
            "autoretrain-data:1", "autoretrain-data:2", "autoretrain-data:3"
        )
        assert workspace.train_last[keys[-1].job_name] == 2
        record = ledger.get(keys[-1])
        assert record is not None and (record.members, record.trained_on) == (3, 2)

    def test_the_model_s_lineage_names_the_window(self, deps: loop.Deps) -> None:
        workspace, _, _ = fakes(deps)
        keys = [self._drop(deps, f"{m}.csv") for m in ("a", "b", "c")]
        workspace.finish(keys[-1].job_name, JobState.COMPLETED, METRICS)
        loop.complete(run_event(keys[-1]), deps)
        model = workspace.models[keys[-1].value]
        assert (model.properties["training_files"], model.properties["trained_on_files"]) == ("3", "3")
        assert workspace.training_set_members(model.properties["training_set"]) == (
            "autoretrain-data:1", "autoretrain-data:2", "autoretrain-data:3"
        )
        assert model.properties["training_set"] == "autoretrain-data-trainset:3"


class TestRetrain:
    """`autoretrain retrain`: an operator's explicit re-run, numbered; nothing else re-runs a version."""

    def _finished(self, deps: loop.Deps, state: JobState, **status: str) -> tuple[BlobRef, WorkKey]:
        workspace, _, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        loop.ingest(blob_event(ref), deps)
        key = WorkKey.for_blob(ref)
        workspace.finish(key.job_name, state, METRICS if state is JobState.COMPLETED else None, **status)
        loop.complete(run_event(key, status=state.value), deps)
        return ref, key

    def test_a_failed_version_runs_again_as_retrain_1_with_its_own_job_and_model(self, deps: loop.Deps) -> None:
        workspace, ledger, _ = fakes(deps)
        ref, origin = self._finished(deps, JobState.FAILED, failed_step="train", error="out of memory")

        outcome = loop.retrain(ref, deps)

        assert isinstance(outcome, loop.Submitted)
        key = origin.attempt(1)
        assert key != origin and outcome.job.name == key.job_name != origin.job_name
        record = outcome.record
        assert (record.attempt, record.first_key, record.state) == (1, origin, LedgerState.SUBMITTED)
        # The same bytes: the data version registered for the blob version, not a second one.
        assert record.data_version == "autoretrain-data:1" and len(workspace.registered_data) == 1
        assert workspace.tags[key.job_name]["retrain_of"] == origin.value
        workspace.finish(key.job_name, JobState.COMPLETED, METRICS)
        done = loop.complete(run_event(key), deps)
        assert isinstance(done, loop.Registered)
        assert done.model.properties["retrain_of"] == origin.value
        # The ledger keeps both runs: the first stays failed with its reason.
        first = ledger.get(origin)
        assert first is not None and first.state is LedgerState.FAILED and first.reason
        assert [r.attempt for r in ledger.records() if r.origin == origin] == [0, 1]

    def test_a_done_version_runs_again_even_after_the_blob_was_replaced(self, deps: loop.Deps) -> None:
        """Its data version is used again, so no read of the (replaced) blob is needed; it is the
        newest member of its own window, not counted twice."""
        workspace, ledger, blobs = fakes(deps)
        ref, origin = self._finished(deps, JobState.COMPLETED)
        blobs.put("incoming", "a.csv", b"replaced")

        outcome = loop.retrain(ref, deps)

        assert isinstance(outcome, loop.Submitted)
        assert (outcome.record.members, outcome.record.trained_on) == (1, 1)
        assert workspace.training_sets[origin.attempt(1).value] == ("autoretrain-data:1",)
        workspace.finish(outcome.job.name, JobState.COMPLETED, METRICS)
        done = loop.complete(run_event(origin.attempt(1)), deps)
        assert isinstance(done, loop.Registered) and done.model.version != ledger.get(origin).model_version  # type: ignore[union-attr]
        assert len(workspace.models) == 2

    def test_a_version_still_in_work_or_unknown_is_refused_with_one_line(self, deps: loop.Deps) -> None:
        _, _, blobs = fakes(deps)
        ref = blobs.put("incoming", "a.csv", GOOD_CSV)
        with pytest.raises(RetrainRefused, match="the ledger has no record of this blob version"):
            loop.retrain(ref, deps)
        loop.ingest(blob_event(ref), deps)
        with pytest.raises(RetrainRefused, match=r"its first run is still submitted \(job autoretrain-"):
            loop.retrain(ref, deps)

    def test_retrains_are_numbered_and_the_next_waits_for_the_last(self, deps: loop.Deps) -> None:
        workspace, _, _ = fakes(deps)
        ref, origin = self._finished(deps, JobState.FAILED, error="x")
        first = loop.retrain(ref, deps)
        with pytest.raises(RetrainRefused, match="its retrain 1 is still submitted"):
            loop.retrain(ref, deps)
        assert isinstance(first, loop.Submitted)
        workspace.finish(first.job.name, JobState.FAILED, error="y")
        loop.complete(run_event(origin.attempt(1), status="Failed"), deps)
        second = loop.retrain(ref, deps)
        assert isinstance(second, loop.Submitted) and second.record.attempt == 2
        assert second.record.key == origin.attempt(2) != origin.attempt(1)

    def test_nothing_but_retrain_runs_a_version_again(self, deps: loop.Deps) -> None:
        """A redelivery of the first event, and reconcile, see the failed version and stop."""
        workspace, _, _ = fakes(deps)
        ref, origin = self._finished(deps, JobState.FAILED, error="x")
        again = loop.ingest(blob_event(ref, event_id="ev-late"), deps)
        report = loop.reconcile(deps, grace=timedelta(0))
        assert isinstance(again, loop.Duplicate) and report.found == ()
        assert [k for _, k, _ in workspace.submitted] == [origin]

    def test_a_retrain_stopped_after_submitting_gives_its_lease_back_and_its_job_finishes_it(
        self, deps: loop.Deps
    ) -> None:
        """Ctrl-C between the job's submission and its record: the claim's lease is given back at
        once, so the job's Completed event records the retrain and completes it (not a retry storm
        that dead-letters while the lease runs out)."""
        workspace, ledger, _ = fakes(deps)
        ref, origin = self._finished(deps, JobState.FAILED, error="x")
        key = origin.attempt(1)
        moving = ledger.move

        def ctrl_c_before_the_submission_is_recorded(record: LedgerRecord, move: Move) -> LedgerRecord:
            if isinstance(move, Submit):
                raise KeyboardInterrupt
            return moving(record, move)

        ledger.move = ctrl_c_before_the_submission_is_recorded  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            loop.retrain(ref, deps)
        ledger.move = moving  # type: ignore[method-assign]
        stopped = ledger.get(key)
        assert stopped is not None and stopped.state is LedgerState.CLAIMED
        assert stopped.lease_expired(ledger.now) and (stopped.reason or "").startswith("KeyboardInterrupt")
        assert workspace.statuses[key.job_name].state is JobState.QUEUED  # the job was submitted

        workspace.finish(key.job_name, JobState.COMPLETED, METRICS)
        outcome = loop.complete(run_event(key), deps)

        assert isinstance(outcome, loop.Registered)
        record = ledger.get(key)
        assert record is not None and (record.state, record.job) == (LedgerState.DONE, key.job_name)
        assert record.data_version == "autoretrain-data:1" and len(workspace.registered_data) == 1

    def test_a_retrain_whose_worker_died_is_finished_by_reconcile(self, deps: loop.Deps) -> None:
        workspace, ledger, _ = fakes(deps)
        ref, origin = self._finished(deps, JobState.FAILED, error="x")
        key = origin.attempt(1)
        ledger.claim(ref, key, "retrain-1", ledger.now + deps.config.lease, attempt=1, first_key=origin)
        ledger.now += deps.config.lease

        report = loop.reconcile(deps, grace=timedelta(0))

        assert [(f.what, f.work_key) for f in report.found] == [("stale_claim", key.value)]
        record = ledger.get(key)
        assert record is not None and record.state is LedgerState.SUBMITTED and record.takers == 2
        assert [k for _, k, _ in workspace.submitted] == [origin, key]


class TestBoundedRecord:
    """A ledger record keeps the training set and two counts, never the list of its members."""

    def test_a_record_after_5000_versions_fits_azure_table_limits(self, deps: loop.Deps) -> None:
        """5,000 accepted versions, then one more file: its record (as the Table ledger writes it)
        and its model's lineage stay far under Table's 64 KiB a property and 1 MiB an entity, and
        the training set still names all 5,001 versions."""
        from autoretrain.adapters.ledger import _entity
        from autoretrain.domain import Finish, LedgerRecord, StartCompleting, Submit

        workspace, ledger, blobs = fakes(deps)
        for i in range(5000):
            ref = BlobRef("incoming", f"2026/day-{i:05d}.csv", f"0x8D{i:012X}")
            key = WorkKey.for_blob(ref)
            record = LedgerRecord.claimed(ref, key, f"ev-{i}", ledger.now, ledger.now)
            for move in (Submit(f"autoretrain-data:{key}", key.job_name, None, f"autoretrain-data-trainset:{key}",
                                i + 1, i + 1),
                         StartCompleting(ledger.now), Finish(f"autoretrain-model:{i + 1}", METRICS, False)):
                record = record.after(move, ledger.now)
            ledger.rows[key.value] = record
        ref = blobs.put("incoming", "2026/day-05000.csv", GOOD_CSV)
        key = WorkKey.for_blob(ref)

        outcome = loop.ingest(blob_event(ref), deps)
        workspace.finish(key.job_name, JobState.COMPLETED, METRICS)
        loop.complete(run_event(key), deps)

        assert isinstance(outcome, loop.Submitted)
        assert len(workspace.training_sets[key.value]) == 5001
        record = ledger.get(key)
        assert record is not None and (record.members, record.trained_on) == (5001, 5001)
        entity = _entity(record)
        sizes = {name: len(str(value).encode("utf-16-le")) for name, value in entity.items()}
        assert max(sizes.values()) < 64 * 1024, max(sizes.items(), key=lambda kv: kv[1])
        assert sum(sizes.values()) < 1024 * 1024
        lineage = workspace.models[key.value].properties
        assert max(len(v) for v in lineage.values()) < 1024 and lineage["training_files"] == "5001"
