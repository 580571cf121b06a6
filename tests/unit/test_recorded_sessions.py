"""The Azure ML adapter on response bodies recorded against the real service.

Each test replays a body from tests/recordings/ (taken from azure-ai-ml's recorded e2e sessions in
Azure/azure-sdk-assets; tests/recordings/README.md names each source) through the real SDK and the
adapter's own parsing. A test fails if the adapter needs a field the service was not seen to send,
or reads a field the way the service does not fill it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from azure.ai.ml import MLClient
from fake_azureml import COMPONENT, COMPUTE, DATASTORE, ROOT, FakeAzureML, ml_client, recorded
from fakes import FakeBlobStore

from autoretrain.adapters.azureml import AzureMLWorkspace
from autoretrain.domain import JOB_TAG, BlobRef, DataVersion, JobState, Metrics, WorkKey
from autoretrain.domain.errors import JobNotFoundError

SOURCE = BlobRef("incoming", "2026/march.csv", "0x8DC0FFEE")
KEY = WorkKey.for_blob(SOURCE)
METRICS_JSON = {"metrics": {"f1_macro": 0.91, "accuracy": 0.93}, "primary_metric": "f1_macro",
                "greater_is_better": True}


@pytest.fixture(scope="module")
def client_and_service() -> tuple[MLClient, FakeAzureML]:
    service = FakeAzureML()
    return ml_client(service), service


@pytest.fixture
def service(client_and_service: tuple[MLClient, FakeAzureML]) -> Iterator[FakeAzureML]:
    _, fake = client_and_service
    yield fake
    for kept in (fake.sent, fake.data, fake.jobs, fake.children, fake.models, fake.queued):
        kept.clear()


@pytest.fixture
def stores() -> dict[str, FakeBlobStore]:
    """The storage accounts the adapter opened, by account name (as the datastore answer names them)."""
    return {}


@pytest.fixture
def workspace(client_and_service: tuple[MLClient, FakeAzureML], stores: dict[str, FakeBlobStore]) -> AzureMLWorkspace:
    client, _ = client_and_service
    return AzureMLWorkspace(
        client, blobs=FakeBlobStore(), datastore=DATASTORE, datasets_container="datasets", compute=COMPUTE,
        contract=ROOT / "ml" / "contract.yaml", pipeline_component=COMPONENT,
        workspace_store=lambda account, _endpoint: stores.setdefault(account, FakeBlobStore()),
    )


def answer(service: FakeAzureML, method: str, path: str, entry: dict[str, Any]) -> Any:
    """The recorded response goes first for the next `method` request whose path matches `path`."""
    body = entry["response_body"]
    service.queued.append((method, path, (entry["status"], body)))
    return body


def datastore_answer(service: FakeAzureML) -> dict[str, Any]:
    """The recorded workspaceblobstore answer, served for the adapter's one datastore lookup."""
    return answer(service, "GET", "/datastores/workspaceblobstore$", recorded("datastore_get.json", 0))["properties"]


class TestCompletedJob:
    def test_recorded_session_a_completed_job_names_no_path_for_an_output_submitted_without_one(
        self, client_and_service: tuple[MLClient, FakeAzureML], service: FakeAzureML
    ) -> None:
        """The fact behind binding every output: the SDK reads the recorded completed job's output
        with no path at all, so a completion that waited for one would fail on every good job."""
        client, _ = client_and_service
        body = answer(service, "GET", "/jobs/", recorded("pipeline_job_completed_unbound_outputs.json", 0))

        job = client.jobs.get(body["name"])

        assert job.status == "Completed"
        assert job.outputs["job_out_path_1"].path is None

    def test_recorded_session_completion_reads_metrics_and_registers_the_model_without_the_job_s_outputs(
        self, workspace: AzureMLWorkspace, service: FakeAzureML, stores: dict[str, FakeBlobStore]
    ) -> None:
        """Status, metrics and model of a job whose GET is the recorded completed job: each comes from
        what was recorded (the status) or from the paths bound at submission, never `outputs[].uri`."""
        body = answer(service, "GET", "/jobs/", recorded("pipeline_job_completed_unbound_outputs.json", 0))
        store_props = datastore_answer(service)
        job = body["name"]
        store = stores.setdefault(store_props["accountName"], FakeBlobStore())
        store.put(store_props["containerName"], f"autoretrain/jobs/{job}/metrics/metrics.json",
                  json.dumps(METRICS_JSON).encode())
        store.put(store_props["containerName"], f"autoretrain/jobs/{job}/model/MLmodel",
                  b"flavors:\n  sklearn: {pickled_model: model.skops, serialization_format: skops}\n")

        status = workspace.job_status(job)
        metrics = workspace.job_metrics(job)
        model = workspace.register_model(job, KEY, metrics, {"job": job})

        assert status.state is JobState.COMPLETED
        assert metrics == Metrics({"f1_macro": 0.91, "accuracy": 0.93}, primary="f1_macro")
        assert service.models[model.version]["properties"]["modelUri"].endswith(
            f"/datastores/workspaceblobstore/paths/autoretrain/jobs/{job}/model/"
        )


class TestSubmission:
    def test_recorded_session_an_output_bound_to_a_path_comes_back_with_that_path(
        self, client_and_service: tuple[MLClient, FakeAzureML], service: FakeAzureML, workspace: AzureMLWorkspace
    ) -> None:
        """The service echoes an output's `azureml://datastores/.../paths/...` uri unchanged, and our
        submission sends its outputs in the very shape that recording sent."""
        client, _ = client_and_service
        entry = recorded("pipeline_job_output_with_path.json", 0)
        sent_output = entry["request_body"]["properties"]["outputs"]["component_out_path"]
        entry["status"] = 200  # the PUT's answer, read back as a GET would
        body = answer(service, "GET", "/jobs/", entry)

        job = client.jobs.get(body["name"])

        assert job.outputs["component_out_path"].path == sent_output["uri"]
        service.queued.clear()
        workspace.submit(DataVersion("autoretrain-data-trainset", KEY.value, "x"), KEY, {JOB_TAG: KEY.value})
        [put] = service.requests_to("PUT", "/jobs/")
        ours = put.body["properties"]["outputs"]["metrics"]
        assert set(sent_output) <= set(ours) and ours["uri"].startswith("azureml://datastores/workspaceblobstore/paths/")

    def test_recorded_session_the_create_answer_is_a_queued_job_with_our_name(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The recorded create answer (status NotStarted, `inputs: null`) is read as a queued job."""
        entry = recorded("pipeline_job_create_put.json", 0)
        body = entry["response_body"]
        body["name"] = KEY.job_name
        body["properties"]["tags"] = {JOB_TAG: KEY.value}
        answer(service, "PUT", "/jobs/", entry)

        job = workspace.submit(DataVersion("autoretrain-data-trainset", KEY.value, "x"), KEY, {JOB_TAG: KEY.value})

        assert (job.name, job.status, dict(job.tags)) == (KEY.job_name, JobState.QUEUED, {JOB_TAG: KEY.value})
        assert job.experiment == body["properties"]["experimentName"]


class TestFailedJob:
    def test_recorded_session_the_failed_step_and_its_error_come_from_run_history_s_children(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The recorded failed job (its GET says only Failed) and its recorded children listing: the
        failed step is the first failed child's node name, its error that child's message, on one line."""
        job = answer(service, "GET", "/jobs/", recorded("pipeline_job_failed_step_error.json", 0))["name"]
        children = answer(service, "GET", "/children$", recorded("pipeline_job_failed_step_error.json", 2))
        datastore_answer(service)  # where prep's report would be: nothing there (it is not our job)
        [first, *_] = [c for c in children["value"] if c["status"] == "Failed"]

        status = workspace.job_status(job)

        assert (status.state, status.failed_step) == (JobState.FAILED, first["displayName"])
        assert status.error == " ".join(first["error"]["error"]["message"].split())[:497] + "..."
        assert status.rejected is None
        studio = recorded("pipeline_job_failed_step_error.json", 0)["response_body"]["properties"]["services"]["Studio"]
        assert status.log is not None and status.log.startswith(studio["endpoint"])

    def test_recorded_session_a_missing_job_is_job_not_found(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The recorded 404 body (a generic message, the specific one in `details`) is JobNotFoundError."""
        answer(service, "GET", "/jobs/", recorded("error_bodies.json", 0))

        with pytest.raises(JobNotFoundError, match=r"HTTP 404: The specified resource was not found\."):
            workspace.job_status(KEY.job_name)


class TestAssets:
    def test_recorded_session_a_data_version_answer_in_the_long_form_is_not_relied_on(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The service answers a data version with the long `azureml://subscriptions/...` path and the
        version as its `name`; the adapter returns the version and path it chose, whatever the answer."""
        entry = recorded("data_versions_uri_file_mltable.json", 0)
        answer(service, "PUT", "/data/", entry)
        snapshot = BlobRef("datasets", f"{KEY}/march.csv", "0x1")

        data = workspace.register_data(snapshot, KEY, {})

        assert entry["response_body"]["properties"]["dataUri"].startswith("azureml://subscriptions/")
        assert data == DataVersion("autoretrain-data", KEY.value, f"azureml://datastores/{DATASTORE}/paths/{KEY}/march.csv")

    def test_recorded_session_a_model_that_is_not_ours_is_no_champion(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """The recorded model list (someone's model, no champion tag, no metrics property) parses,
        and is not taken for a champion."""
        answer(service, "GET", "/models/autoretrain-model/versions$", recorded("model_versions_put_get_list.json", 3))

        assert workspace.champion() is None

    def test_recorded_session_an_empty_registry_answers_404_and_has_no_champion(
        self, workspace: AzureMLWorkspace, service: FakeAzureML
    ) -> None:
        """A model name never registered: the recorded 404 of the versions list means no champion."""
        answer(service, "GET", "/models/autoretrain-model/versions$", recorded("error_bodies.json", 0))

        assert workspace.champion() is None

    def test_recorded_session_the_store_is_the_account_and_container_the_datastore_names(
        self, workspace: AzureMLWorkspace, service: FakeAzureML, stores: dict[str, FakeBlobStore]
    ) -> None:
        """Outputs are read from the account and container of the recorded workspaceblobstore answer."""
        props = datastore_answer(service)
        job = KEY.job_name
        stores.setdefault(props["accountName"], FakeBlobStore()).put(
            props["containerName"], f"autoretrain/jobs/{job}/metrics/metrics.json", json.dumps(METRICS_JSON).encode()
        )

        assert workspace.job_metrics(job).primary_value == 0.91
        assert list(stores) == [props["accountName"]]
