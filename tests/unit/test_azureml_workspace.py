"""The Azure ML adapter on the real azure-ai-ml SDK, offline: the only fake is the HTTP edge
(`fake_azureml.FakeAzureML`), so the tests assert on the bodies the SDK really sends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from azure.ai.ml import MLClient
from fake_azureml import (
    ARM,
    COMPONENT,
    COMPONENT_VERSION,
    COMPUTE,
    DATASTORE,
    RG,
    ROOT,
    SUB,
    SYSTEM,
    WS,
    WS_ID,
    FakeAzureML,
    _error,
    ml_client,
)
from fakes import FakeBlobStore

from autoretrain.adapters.azureml import (
    CHAMPION_TAG,
    METRICS_PROPERTY,
    WORK_KEY_PROPERTY,
    AzureMLWorkspace,
    BoundedRetryPolicy,
    job_state,
)
from autoretrain.adapters.ledger import TableLedger
from autoretrain.adapters.storage import AzureBlobStore
from autoretrain.bootstrap import bootstrap
from autoretrain.datacontract import NO_CHAMPION_FILES, is_no_champion
from autoretrain.domain import (
    JOB_TAG,
    BlobRef,
    DataVersion,
    JobMode,
    JobState,
    Metrics,
    ModelVersion,
    TrainingMember,
    WorkKey,
)
from autoretrain.domain.errors import JobNotFoundError, WorkspaceError, WorkspaceRejectedError
from autoretrain.settings import Settings, WorkspaceKind

SOURCE = BlobRef("incoming", "2026/march.csv", '"0x8DC0FFEE"')
KEY = WorkKey.for_blob(SOURCE)
SNAPSHOT = BlobRef("datasets", f"{KEY}/{SOURCE.name}", "0x8DSNAP")
LINEAGE = {"blob": SOURCE.path, "etag": SOURCE.etag, "work_key": KEY.value, "event_id": "ev-1"}
METRICS = Metrics({"f1_macro": 0.91, "accuracy": 0.93}, primary="f1_macro")


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_and_service() -> tuple[MLClient, FakeAzureML]:
    """One MLClient per module (building one costs little; importing azure-ai-ml costs ~2 s)."""
    service = FakeAzureML()
    return ml_client(service), service


@pytest.fixture
def service(client_and_service: tuple[MLClient, FakeAzureML]) -> Iterator[FakeAzureML]:
    _, fake = client_and_service
    yield fake
    fake.sent.clear()
    fake.data.clear()
    fake.jobs.clear()
    fake.children.clear()
    fake.models.clear()
    fake.queued.clear()


@pytest.fixture
def blobs() -> FakeBlobStore:
    return FakeBlobStore()


@pytest.fixture
def store() -> FakeBlobStore:
    """The workspace's own store (workspaceblobstore), where jobs write their outputs."""
    return FakeBlobStore()


@pytest.fixture
def workspace(
    client_and_service: tuple[MLClient, FakeAzureML], blobs: FakeBlobStore, store: FakeBlobStore
) -> AzureMLWorkspace:
    client, service = client_and_service
    return AzureMLWorkspace(
        client, blobs=blobs, datastore=DATASTORE, datasets_container="datasets", compute=COMPUTE,
        contract=ROOT / "ml" / "contract.yaml", experiment="autoretrain", data_asset="autoretrain-data",
        model_name="autoretrain-model", pipeline_component=COMPONENT,
        workspace_store=lambda account, _endpoint: store if account == service.store_account else FakeBlobStore(),
    )


def job_wrote(store: FakeBlobStore, job: str, output: str, file: str, data: bytes) -> None:
    """A step of `job` wrote `file` into `output`, at the path the adapter bound it to."""
    store.put(FakeAzureML.store_container, f"autoretrain/jobs/{job}/{output}/{file}", data)


def data_version() -> DataVersion:
    return DataVersion("autoretrain-data", KEY.value, f"azureml://datastores/{DATASTORE}/paths/{SNAPSHOT.name}")


TAGS = {JOB_TAG: KEY.value, "blob": SOURCE.path, "etag": SOURCE.etag}


def _failed_in_prep(workspace: AzureMLWorkspace, service: FakeAzureML, error: str) -> None:
    """KEY's job, submitted, failed in its prep step (whose error in run history's children listing
    is `error`, as recorded; the train step after it canceled)."""
    workspace.submit(data_version(), KEY, TAGS)
    service.finish(KEY.job_name, "Failed")
    service.child(KEY.job_name, "prep", "Failed", error)
    service.child(KEY.job_name, "train", "Canceled")


# -- tests ---------------------------------------------------------------------------------------


class TestRegisterData:
    def test_puts_the_snapshot_as_a_data_version_named_by_the_work_key(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """One PUT of data version = work key, pointing at the snapshot's path on our datastore."""
        data = workspace.register_data(SNAPSHOT, KEY, LINEAGE)

        assert data == data_version()
        [put] = service.sent
        assert (put.method, put.path) == ("PUT", f"{ARM}{WS_ID}/data/autoretrain-data/versions/{KEY}")
        assert put.body["properties"]["dataUri"] == f"azureml://datastores/{DATASTORE}/paths/{KEY}/2026/march.csv"
        assert put.body["properties"]["dataType"] == "uri_file"
        assert put.body["properties"]["tags"] == LINEAGE
        assert put.body["properties"]["properties"] == LINEAGE

    def test_same_key_again_sends_the_same_body(self, workspace: AzureMLWorkspace, service: FakeAzureML) -> None:
        """A retry is the same PUT, which the service takes as an update that changes nothing."""
        assert workspace.register_data(SNAPSHOT, KEY, LINEAGE) == workspace.register_data(SNAPSHOT, KEY, LINEAGE)

        first, second = service.requests_to("PUT", "/data/")
        assert first.url == second.url and first.body == second.body

    def test_a_version_with_another_path_is_a_one_line_workspace_error(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The service refuses to move an existing version; the error names the key and the path."""
        workspace.register_data(SNAPSHOT, KEY, LINEAGE)
        moved = BlobRef("datasets", f"{KEY}/other.csv", "0x1")

        with pytest.raises(WorkspaceError) as caught:
            workspace.register_data(moved, KEY, LINEAGE)

        message = str(caught.value)
        assert "\n" not in message
        assert f"autoretrain-data:{KEY}" in message and "other.csv" in message
        assert "Asset paths cannot be updated" in message

    def test_a_blob_outside_the_datastore_container_is_refused(self, workspace: AzureMLWorkspace,
                                                               service: FakeAzureML) -> None:
        """Only the container the datastore reads can be registered; nothing is sent."""
        with pytest.raises(WorkspaceError, match=re.escape(SOURCE.path)):
            workspace.register_data(SOURCE, KEY, LINEAGE)
        assert service.sent == []


class TestTrainingSet:
    def members(self, count: int) -> list[TrainingMember]:
        return [TrainingMember(f"autoretrain-data:{WorkKey(f'{i:024x}')}", f"{WorkKey(f'{i:024x}')}/2026-{i:04d}.csv")
                for i in range(count)]

    def test_registers_an_mltable_naming_exactly_the_window_s_files(
        self, workspace: AzureMLWorkspace, service: FakeAzureML, blobs: FakeBlobStore
    ) -> None:
        """Upload trainsets/<key>/MLTable naming the members' snapshots on the datastore (and
        members.json, their data versions), PUT the training set as an mltable data asset version
        named by the key. No GET of any member: its snapshot comes with it."""
        members = self.members(3)

        training_set = workspace.register_training_set(KEY, members)

        assert [s.method for s in service.sent if "/data/" in s.path] == ["PUT"]
        [put] = service.requests_to("PUT", "/data/")
        assert put.path == f"{ARM}{WS_ID}/data/autoretrain-data-trainset/versions/{KEY}"
        assert put.body["properties"]["dataType"] == "mltable"
        assert put.body["properties"]["dataUri"] == f"azureml://datastores/{DATASTORE}/paths/trainsets/{KEY}/"
        _, mltable, _ = blobs.blobs[("datasets", f"trainsets/{KEY}/MLTable")]
        files = [line.split("file: ")[1].strip('"') for line in mltable.decode().splitlines() if "file: " in line]
        # In the long form the service answers with: the only one `mltable` (in prep) reads.
        assert files == [f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WS}/datastores/{DATASTORE}/"
                         f"paths/{m.snapshot}" for m in members]
        assert (training_set.name, training_set.version) == ("autoretrain-data-trainset", KEY.value)
        assert workspace.training_set_members(f"autoretrain-data-trainset:{KEY}") == tuple(
            m.data_version for m in members
        )

    def test_500_members_cost_the_same_azure_calls_as_1(
        self, workspace: AzureMLWorkspace, service: FakeAzureML, blobs: FakeBlobStore
    ) -> None:
        """The calls of a registration do not grow with the training set: the same requests (method
        and path) for 1 member and for 500, and the same number of blob uploads."""
        def calls(count: int, key: WorkKey) -> tuple[list[tuple[str, str]], int]:
            service.sent.clear()
            before = len(blobs.blobs)
            workspace.register_training_set(key, self.members(count))
            return [(s.method, s.path.replace(key.value, "{key}")) for s in service.sent], len(blobs.blobs) - before

        one = calls(1, WorkKey("a" * 24))
        many = calls(500, WorkKey("b" * 24))

        assert one == many
        assert one[1] == 2  # MLTable and members.json


class TestSubmit:
    def test_creates_the_pipeline_job_from_the_registered_component(
        self, workspace: AzureMLWorkspace, service: FakeAzureML, blobs: FakeBlobStore
    ) -> None:
        """One PUT of job key.job_name: our tags, the data version and contract bound, compute set."""
        run = workspace.submit(data_version(), KEY, TAGS)

        assert (run.name, run.experiment, run.status) == (KEY.job_name, "autoretrain", JobState.QUEUED)
        [put] = service.requests_to("PUT", "/jobs/")
        assert put.path == f"{ARM}{WS_ID}/jobs/{KEY.job_name}"
        job = put.body["properties"]
        assert job["jobType"] == "Pipeline"
        assert job["componentId"] == f"{WS_ID}/components/{COMPONENT}/versions/{COMPONENT_VERSION}"
        assert job["experimentName"] == "autoretrain"
        assert job["tags"] == TAGS
        assert job["settings"]["default_compute"] == f"{WS_ID}/computes/{COMPUTE}"
        [contract_name] = [n for (c, n) in blobs.blobs if c == "datasets" and n.startswith("contracts/")]
        assert job["inputs"] == {
            "train_last": {"jobInputType": "literal", "value": "0"},
            "new_files": {"jobInputType": "literal", "value": "1"},
            "mode": {"jobInputType": "literal", "value": "train"},
            "data": {"jobInputType": "mltable", "uri": f"{WS_ID}/data/autoretrain-data/versions/{KEY}"},
            "contract": {"jobInputType": "uri_file", "uri": f"azureml://datastores/{DATASTORE}/paths/{contract_name}"},
            # Every input bound: a first model's job binds the "no champion yet" marker.
            "champion": {"jobInputType": "mlflow_model",
                         "uri": f"azureml://datastores/{DATASTORE}/paths/autoretrain/no-champion/"},
        }
        # Every output at a path of ours, where completion reads it: nothing waits for the service.
        assert job["outputs"] == {
            output: {"jobOutputType": kind, "mode": "ReadWriteMount",
                     "uri": f"azureml://datastores/workspaceblobstore/paths/autoretrain/jobs/{KEY.job_name}/{output}/"}
            for output, kind in (("model", "mlflow_model"), ("metrics", "uri_folder"), ("report", "uri_folder"))
        }

    def test_the_no_champion_marker_is_what_evaluate_recognises(
        self, workspace: AzureMLWorkspace, service: FakeAzureML, blobs: FakeBlobStore, tmp_path: Path
    ) -> None:
        """The marker folder uploaded for a first job is the one `is_no_champion` (evaluate) accepts,
        and ml/sample/no-champion (the pipeline's placeholder) is the same folder."""
        workspace.submit(data_version(), KEY, TAGS)

        marker = {n.removeprefix("autoretrain/no-champion/"): b for (c, n), (_, b, _) in blobs.blobs.items()
                  if n.startswith("autoretrain/no-champion/")}
        assert marker == {n: t.encode() for n, t in NO_CHAMPION_FILES.items()}
        for name, data in marker.items():
            (tmp_path / name).write_bytes(data)
        assert is_no_champion(tmp_path) and is_no_champion(ROOT / "ml" / "sample" / "no-champion")
        assert not is_no_champion(ROOT / "ml" / "sample")

    def test_binds_the_champion_model_for_evaluate_to_score_on_the_same_rows(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The champion model asset version is the pipeline's `champion` input."""
        champion = ModelVersion("autoretrain-model", "3", "autoretrain-old", Metrics({"r2": 0.5}, primary="r2"))

        workspace.submit(data_version(), KEY, TAGS, champion=champion)

        [put] = service.requests_to("PUT", "/jobs/")
        assert put.body["properties"]["inputs"]["champion"] == {
            "jobInputType": "mlflow_model", "uri": f"{WS_ID}/models/autoretrain-model/versions/3",
        }

    def test_a_scoring_job_binds_mode_score_and_the_champion_it_scores(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The job that scores the champion on new data (`retrain_when: champion_slips`) is the same
        published pipeline with `mode: score`, the champion bound, and says so in its description."""
        champion = ModelVersion("autoretrain-model", "3", "autoretrain-old", Metrics({"r2": 0.5}, primary="r2"))

        workspace.submit(data_version(), KEY, TAGS, champion=champion, mode=JobMode.SCORE)

        [put] = service.requests_to("PUT", "/jobs/")
        job = put.body["properties"]
        assert job["inputs"]["mode"] == {"jobInputType": "literal", "value": "score"}
        assert job["inputs"]["champion"]["uri"] == f"{WS_ID}/models/autoretrain-model/versions/3"
        assert job["description"].startswith("Score the champion on autoretrain-data:")

    def test_uploads_the_contract_content_addressed_to_the_datastore_container(
        self, workspace: AzureMLWorkspace, service: FakeAzureML, blobs: FakeBlobStore
    ) -> None:
        """The contract the job reads is the app's, byte for byte, under a name its digest fixes."""
        workspace.submit(data_version(), KEY, TAGS)

        [((container, name), (_, content, _))] = [(k, v) for k, v in blobs.blobs.items() if "contract" in k[1]]
        assert container == "datasets"
        assert re.fullmatch(r"contracts/[0-9a-f]{16}/contract\.yaml", name)
        assert content == (ROOT / "ml" / "contract.yaml").read_bytes()

    def test_jobs_lists_only_ours_by_tag_for_reconcile(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """GET .../jobs?tag=autoretrain: the service filters by our tag; each job carries its tags."""
        workspace.submit(data_version(), KEY, TAGS)
        service.jobs["someone-else"] = {
            "id": f"{WS_ID}/jobs/someone-else", "name": "someone-else", "systemData": SYSTEM,
            "properties": {**service.jobs[KEY.job_name]["properties"], "tags": {"team": "other"}},
        }
        service.sent.clear()

        jobs = list(workspace.jobs())

        assert [(j.name, j.status, dict(j.tags)) for j in jobs] == [(KEY.job_name, JobState.QUEUED, TAGS)]
        [listing] = service.requests_to("GET", "/jobs$")
        query = parse_qs(listing.url.split("?", 1)[1])
        assert query["tag"] == ["autoretrain"] and query["api-version"] == ["2024-01-01-preview"]

    def test_second_submit_of_an_existing_job_sends_no_put(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The job name is the key: a resubmit finds the job and creates nothing."""
        first = workspace.submit(data_version(), KEY, TAGS)
        # Preparing (not NotStarted, not the fallback) shows the status is read from the SDK's entity.
        service.finish(KEY.job_name, "Preparing")
        service.sent.clear()

        second = workspace.submit(data_version(), KEY, TAGS)

        assert (second.name, second.experiment, second.status) == (first.name, first.experiment, JobState.QUEUED)
        assert [(s.method, s.path) for s in service.sent] == [("GET", f"{ARM}{WS_ID}/jobs/{KEY.job_name}")]

    def test_a_409_on_create_returns_the_job_another_delivery_created(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """Lost race: the PUT says the name exists, so the adapter reads and returns that job."""
        theirs = {"id": f"{WS_ID}/jobs/{KEY.job_name}", "name": KEY.job_name, "systemData": SYSTEM,
                  "properties": {"jobType": "Pipeline", "status": "Queued", "experimentName": "autoretrain",
                                 "componentId": f"{WS_ID}/components/{COMPONENT}/versions/{COMPONENT_VERSION}",
                                 "jobs": {}, "inputs": {}, "outputs": {}, "settings": {}, "tags": TAGS}}
        service.queued.append(("PUT", "/jobs/", (409, _error("UserError", "A job with this name already exists."))))
        service.queued.append(("GET", "/jobs/", (404, _error("UserError", "not found"))))
        service.jobs[KEY.job_name] = theirs  # what the GET after the 409 finds

        run = workspace.submit(data_version(), KEY, TAGS)

        assert run.status is JobState.QUEUED
        assert [s.method for s in service.requests_to("PUT", "/jobs/")] == ["PUT"]
        assert len(service.requests_to("GET", f"/jobs/{KEY.job_name}$")) == 2

    def test_a_missing_pipeline_component_says_how_to_publish_it(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """No registered component: one line naming it and the command that publishes it; no job PUT."""
        service.queued.append(("GET", "/components/", (200, {"value": []})))

        with pytest.raises(WorkspaceError) as caught:
            workspace.submit(data_version(), KEY, TAGS)

        assert "autoretrain_pipeline" in str(caught.value) and "autoretrain publish" in str(caught.value)
        assert service.requests_to("PUT", "/jobs/") == []

    def test_a_429_is_retried_by_the_sdk_retry_policy(self, workspace: AzureMLWorkspace, service: FakeAzureML) -> None:
        """Throttled once, the SDK's own retry policy sends the PUT again and it succeeds."""
        service.queued.append(("PUT", "/jobs/", (429, _error("TooManyRequests", "slow down"), {"Retry-After": "0.01"})))

        run = workspace.submit(data_version(), KEY, TAGS)

        assert run.name == KEY.job_name
        first, second = service.requests_to("PUT", "/jobs/")
        assert first.body == second.body

    def test_throttling_that_persists_is_a_workspace_error_that_says_it_is_retried(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """When the SDK's retries run out the error propagates (Event Grid retries the event)."""
        busy = (503, _error("ServiceUnavailable", "busy"), {"Retry-After": "0.01"})
        service.queued.extend([("GET", "/jobs/", busy)] * 4)

        with pytest.raises(WorkspaceError) as caught:
            workspace.submit(data_version(), KEY, TAGS)

        assert str(caught.value) == (
            f"submit {KEY.job_name} failed: HTTP 503: busy; Azure ML is throttling or unavailable; the event is retried"
        )
        assert len(service.requests_to("GET", "/jobs/")) == 4


class TestRunStatus:
    def test_maps_azure_ml_statuses_to_run_states(self) -> None:
        """Every documented status has a state; unknown ones count as running, never as finished."""
        assert {s: job_state(s) for s in ("NotStarted", "Queued", "Preparing", "Provisioning", "Starting")} == {
            s: JobState.QUEUED for s in ("NotStarted", "Queued", "Preparing", "Provisioning", "Starting")
        }
        assert {job_state(s) for s in ("Running", "Finalizing", "CancelRequested", "NotResponding", "Paused")} == {
            JobState.RUNNING
        }
        assert (job_state("Completed"), job_state("Failed"), job_state("Canceled")) == (
            JobState.COMPLETED, JobState.FAILED, JobState.CANCELED,
        )
        assert job_state("SomethingNew") is JobState.RUNNING

    def test_a_completed_job(self, workspace: AzureMLWorkspace, service: FakeAzureML) -> None:
        """Completed, with the studio link as the place to look."""
        workspace.submit(data_version(), KEY, TAGS)
        service.finish(KEY.job_name, "Completed")

        status = workspace.job_status(KEY.job_name)

        assert (status.name, status.state, status.failed_step, status.error) == (
            KEY.job_name, JobState.COMPLETED, None, None,
        )
        assert status.log is not None and status.log.startswith(f"https://ml.azure.com/runs/{KEY.job_name}")

    def test_a_failed_job_names_the_failed_step_and_its_error(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The failed child step (run history's children listing) gives the step name and its
        one-line error; the job's studio link is where to look. One listing, no call per step."""
        _failed_in_prep(workspace, service,
                        "Execution failed.\nUser process 'python' exited with status code 2:\ncolumn 'price'")
        service.sent.clear()

        status = workspace.job_status(KEY.job_name)

        assert (status.state, status.failed_step) == (JobState.FAILED, "prep")
        assert status.error == "Execution failed. User process 'python' exited with status code 2: column 'price'"
        assert status.rejected is None  # exit code 2 is our fault (contract, argument): the job failed
        assert status.log is not None and status.log.startswith(f"https://ml.azure.com/runs/{KEY.job_name}")
        assert [s.path.rsplit("/", 2)[-2:] for s in service.sent if "/history/" in s.path] == [
            [KEY.job_name, "children"]
        ]

    def test_the_data_s_fault_is_what_prep_wrote_in_its_report(
        self, workspace: AzureMLWorkspace, service: FakeAzureML, store: FakeBlobStore
    ) -> None:
        """prep writes `rejected` into its report output before it exits; the adapter reads it at the
        path bound at submission, whatever the service's error text says."""
        reason = ("march.csv: column 'alcohol' has 'x' on line 50000; expected a number. "
                  "Fix the file and upload it again.")
        _failed_in_prep(workspace, service, "Something the service words its own way.")
        job_wrote(store, KEY.job_name, "report", "report.json",
                  json.dumps({"rejected": {"reason": reason, "line": 50000, "byte": None}}).encode())

        status = workspace.job_status(KEY.job_name)

        assert (status.state, status.failed_step, status.rejected) == (JobState.FAILED, "prep", reason)

    def test_a_report_without_a_rejection_is_not_the_data_s_fault_whatever_the_error_says(
        self, workspace: AzureMLWorkspace, service: FakeAzureML, store: FakeBlobStore
    ) -> None:
        """prep passed the data (its report has counts, no `rejected`): a later step's exit 65 text is
        not read as a data error."""
        _failed_in_prep(workspace, service, "User process 'python' exited with status code 65. Error: x")
        job_wrote(store, KEY.job_name, "report", "report.json", json.dumps({"rows_in": 40}).encode())

        assert workspace.job_status(KEY.job_name).rejected is None

    def test_without_a_report_the_exit_code_in_the_error_text_is_a_logged_fallback(
        self, workspace: AzureMLWorkspace, service: FakeAzureML, caplog: pytest.LogCaptureFixture
    ) -> None:
        """No report output at all (it was not written, or not uploaded): the step's exit code 65 in the
        service's error text still quarantines the file, with a warning that says so."""
        reason = "march.csv: line 7 has 3 fields, the header has 14; fix the row and upload the file again."
        _failed_in_prep(workspace, service, (
            "Execution failed. User process '/azureml-envs/azureml_1/bin/python' exited with status code 65. "
            f"Please check log file 'user_logs/std_log.txt' for error details. Error: {reason}"
        ))

        with caplog.at_level("WARNING", logger="autoretrain.adapters.azureml"):
            status = workspace.job_status(KEY.job_name)

        assert status.rejected == reason
        assert any("workspace.rejection_from_error_text" in r.getMessage() for r in caplog.records)

    def test_an_unknown_job_is_a_one_line_workspace_error(self, workspace: AzureMLWorkspace,
                                                          service: FakeAzureML) -> None:
        """A 404 names the job, as the permanent JobNotFoundError reconcile resubmits on."""
        with pytest.raises(JobNotFoundError) as caught:
            workspace.job_status("autoretrain-000000000000000000000000")

        # The recorded 404 body: a generic message (its specific one is in `details`).
        assert str(caught.value) == (
            "status of job autoretrain-000000000000000000000000 failed: HTTP 404: The specified resource was not found."
        )


class TestModels:
    @pytest.fixture(autouse=True)
    def _service(self, service: FakeAzureML, store: FakeBlobStore) -> None:
        self.service = service
        self.store = store

    def register(self, workspace: AzureMLWorkspace, key: WorkKey = KEY, metrics: Metrics = METRICS) -> Any:
        """Register the model of key's job, which has completed (submitted and finished first)."""
        if key.job_name not in self.service.jobs:
            data = DataVersion("autoretrain-data", key.value, f"azureml://datastores/{DATASTORE}/paths/{key}/f.csv")
            workspace.submit(data, key, {JOB_TAG: key.value})
            self.service.finish(key.job_name, "Completed")
            job_wrote(self.store, key.job_name, "model", "MLmodel",
                      b"flavors: {sklearn: {pickled_model: model.skops, env: {conda: conda.yaml}}}\n")
        lineage = {**LINEAGE, "work_key": key.value, "job": key.job_name, "data_version": f"autoretrain-data:{key}"}
        return workspace.register_model(key.job_name, key, metrics, lineage)

    def test_registers_the_job_model_output_with_metrics_as_tags_and_lineage_as_properties(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """One PUT: mlflow_model from the path the job's model output was bound to at submission (no
        GET of the job: the service names no path for it), tags = metrics, properties = lineage."""
        model = self.register(workspace)

        assert (model.name, model.version, model.job, model.metrics, model.champion) == (
            "autoretrain-model", "1", KEY.job_name, METRICS, False,
        )
        [put] = service.requests_to("PUT", "/models/")
        assert put.path == f"{ARM}{WS_ID}/models/autoretrain-model/versions/1"
        body = put.body["properties"]
        # The SDK sends the datastore path in its long form, scoped to the workspace.
        assert body["modelUri"] == (
            f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WS}/datastores/workspaceblobstore/"
            f"paths/autoretrain/jobs/{KEY.job_name}/model/"
        )
        assert body["modelType"] == "mlflow_model"
        # The flavors the job's MLmodel declares, sent (the SDK reads them back from every answer).
        assert body["flavors"] == {"sklearn": {"data": {"pickled_model": "model.skops"}}}
        assert body["tags"] == {"f1_macro": "0.91", "accuracy": "0.93"}
        assert body["properties"] == {
            **LINEAGE, "job": KEY.job_name, "data_version": f"autoretrain-data:{KEY}",
            WORK_KEY_PROPERTY: KEY.value, METRICS_PROPERTY: METRICS.to_json(),
        }
        assert model.properties == {**LINEAGE, "job": KEY.job_name, "data_version": f"autoretrain-data:{KEY}"}

    def test_registering_the_same_key_again_returns_the_first_version(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """Found by its work_key property: no second PUT, the same version."""
        first = self.register(workspace)
        second = self.register(workspace)

        assert second == first
        assert len(service.requests_to("PUT", "/models/")) == 1

    def test_two_workers_past_the_lookup_at_once_end_with_one_model(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The second worker's lookup ran before the first one's create: it registers version 2, sees
        two versions with its key, archives the higher one and returns the first."""
        first = self.register(workspace)
        service.queued.append(("GET", "/models/autoretrain-model/versions$", (200, {"value": []})))

        second = self.register(workspace)

        assert second == first and first.version == "1"
        puts = [s.path.rsplit("/", 1)[1] for s in service.requests_to("PUT", "/models/")]
        assert puts == ["1", "2", "2"]  # 1 and 2 registered, then 2 archived
        assert service.models["2"]["properties"].get("isArchived") is True
        assert not service.models["1"]["properties"].get("isArchived")
        assert self.register(workspace) == first  # and the archived twin stays out of sight

    def test_a_job_that_wrote_no_model_has_no_model_to_register(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """No MLmodel at the bound path (the job has not completed, or train wrote nothing): a one-line
        permanent error that names the path, and no PUT."""
        workspace.submit(data_version(), KEY, TAGS)
        with pytest.raises(WorkspaceRejectedError, match=rf"no MLflow model at azureml://datastores/workspaceblobstore/"
                                                          rf"paths/autoretrain/jobs/{KEY.job_name}/model/"):
            workspace.register_model(KEY.job_name, KEY, METRICS, LINEAGE)
        assert service.requests_to("PUT", "/models/") == []

    def test_a_new_key_gets_the_next_version(self, workspace: AzureMLWorkspace, service: FakeAzureML) -> None:
        """The service numbers model versions; the second key is version 2."""
        self.register(workspace)
        other = WorkKey.for_blob(BlobRef("incoming", "2026/april.csv", "0x2"))

        assert self.register(workspace, other).version == "2"

    def test_promote_tags_the_new_champion_then_untags_the_old(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """Exactly one version carries champion=true afterwards; the metrics tags stay."""
        first = workspace.promote(self.register(workspace), replacing=None)
        assert first is not None
        better = Metrics({"f1_macro": 0.95, "accuracy": 0.96}, primary="f1_macro")
        second = self.register(workspace, WorkKey.for_blob(BlobRef("incoming", "2026/april.csv", "0x2")), better)
        service.sent.clear()

        promoted = workspace.promote(second, replacing=first)

        assert promoted is not None
        assert (first.champion, promoted.champion, promoted.version) == (True, True, "2")
        assert workspace.champion() == promoted
        tags = {v: m["properties"]["tags"] for v, m in service.models.items()}
        assert tags == {"1": {"f1_macro": "0.91", "accuracy": "0.93"},
                        "2": {"f1_macro": "0.95", "accuracy": "0.96", CHAMPION_TAG: "true"}}
        puts = [s.path.rsplit("/", 1)[1] for s in service.requests_to("PUT", "/models/")]
        assert puts == ["2", "1"]

    def test_the_gate_s_decision_is_a_tag_on_the_model(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """One PUT of the same version with a `gate` tag: the decision, kept beside the metrics."""
        model = self.register(workspace)
        service.sent.clear()

        workspace.record_decision(model, "kept v1: f1_macro 0.9100 vs v1's 0.9300 on the same 40 test rows")

        [put] = service.requests_to("PUT", "/models/")
        assert put.path.endswith("/models/autoretrain-model/versions/1")
        assert service.models["1"]["properties"]["tags"] == {
            "f1_macro": "0.91", "accuracy": "0.93",
            "gate": "kept v1: f1_macro 0.9100 vs v1's 0.9300 on the same 40 test rows",
        }

    def test_champion_is_the_newest_tagged_version_after_a_half_done_promote(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """A crash between tagging and untagging leaves two tagged; the newer one is the champion."""
        workspace.promote(self.register(workspace), replacing=None)
        newer = self.register(workspace, WorkKey.for_blob(BlobRef("incoming", "2026/april.csv", "0x2")))
        service.models[newer.version]["properties"]["tags"][CHAMPION_TAG] = "true"

        champion = workspace.champion()

        assert champion is not None and champion.version == "2"

    def test_promote_refuses_when_the_champion_changed_since_it_was_read(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The gate compared against 'no champion'; another completion promoted meanwhile."""
        workspace.promote(self.register(workspace), replacing=None)
        other = self.register(workspace, WorkKey.for_blob(BlobRef("incoming", "2026/april.csv", "0x2")))
        service.sent.clear()

        assert workspace.promote(other, replacing=None) is None
        assert service.requests_to("PUT", "/models/") == []

    def test_no_models_means_no_champion(self, workspace: AzureMLWorkspace, service: FakeAzureML) -> None:
        """An empty registry has no champion."""
        assert workspace.champion() is None


class TestBootstrap:
    def test_azureml_settings_build_the_azure_ml_adapter_without_network(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """bootstrap wires the Azure adapters from settings; building them sends nothing."""
        def no_network(*_: Any, **__: Any) -> Any:
            raise AssertionError("bootstrap must not reach the network")

        monkeypatch.setattr(requests.Session, "send", no_network)
        settings = Settings(
            workspace=WorkspaceKind.AZUREML, home=tmp_path, storage_connection=None,
            blob_service_uri="https://st.blob.core.windows.net", table_service_uri="https://st.table.core.windows.net",
            storage_topic="/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/st",
            azureml_subscription_id=SUB, azureml_resource_group=RG, azureml_workspace=WS,
            azureml_datastore=DATASTORE, azureml_compute=COMPUTE,
            azure_client_id="11111111-2222-3333-4444-555555555555",
        )

        deps = bootstrap(settings)

        # On Azure the containers and the table exist (infra/): nothing is created at start.
        assert isinstance(deps.ledger, TableLedger) and isinstance(deps.blobs, AzureBlobStore)
        assert isinstance(deps.workspace, AzureMLWorkspace)
        assert (deps.workspace.datastore, deps.workspace.compute, deps.workspace.pipeline_component) == (
            DATASTORE, COMPUTE, "autoretrain_pipeline",
        )
        # Its calls retry within the bounds an Event Grid trigger needs, not the SDK's defaults.
        pipeline = deps.workspace._client._service_client_08_2023_preview._client._pipeline
        assert any(isinstance(p, BoundedRetryPolicy) for p in pipeline._impl_policies)


class TestRunMetrics:
    def test_metrics_are_read_at_the_path_bound_at_submission(
        self, workspace: AzureMLWorkspace, service: FakeAzureML, store: FakeBlobStore
    ) -> None:
        """evaluate's metrics.json at autoretrain/jobs/<job>/metrics/ on the workspace store: found with
        one datastore lookup, and no GET of the job (which names no path for the output)."""
        workspace.submit(data_version(), KEY, TAGS)
        service.finish(KEY.job_name, "Completed")
        job_wrote(store, KEY.job_name, "metrics", "metrics.json", json.dumps(
            {"metrics": {"f1_macro": 0.91, "accuracy": 0.93}, "primary_metric": "f1_macro", "greater_is_better": True}
        ).encode())
        service.sent.clear()

        assert workspace.job_metrics(KEY.job_name) == METRICS
        assert [(s.method, s.path.rsplit("/", 1)[-1]) for s in service.sent] == [("GET", "workspaceblobstore")]

    def test_a_job_that_has_not_finished_has_no_metrics(self, workspace: AzureMLWorkspace,
                                                         service: FakeAzureML) -> None:
        """Nothing at the bound path yet: one line naming the job and where it looked."""
        workspace.submit(data_version(), KEY, TAGS)
        service.finish(KEY.job_name, "Running")

        with pytest.raises(WorkspaceError) as caught:
            workspace.job_metrics(KEY.job_name)

        message = str(caught.value)
        assert message.startswith(f"read metrics of job {KEY.job_name} failed: no metrics.json at "
                                  f"azureml://datastores/workspaceblobstore/paths/autoretrain/jobs/{KEY.job_name}/metrics/")
        assert "\n" not in message
