"""Parsing the events exactly as Azure sends them: the docs' sample events, in both schemas."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from samples import BLOB_CREATED_CLOUDEVENT, BLOB_CREATED_EVENTGRID, RUN_COMPLETED, STORAGE_TOPIC, WORKSPACE_TOPIC

from autoretrain.domain import BlobRef
from autoretrain.domain.errors import EventError
from autoretrain.domain.events import BlobCreated, JobFinished, parse_blob_created, parse_event, parse_job_finished


def run_status_changed(status: str) -> dict[str, Any]:
    event = json.loads(json.dumps(RUN_COMPLETED[0]))
    event["eventType"] = "Microsoft.MachineLearningServices.RunStatusChanged"
    event["data"].update(runType="azureml.PipelineRun", runTags={"autoretrain": "ab" * 12}, runStatus=status)
    return event


EXPECTED_BLOB = BlobCreated(
    event_id="831e1650-001e-001b-66ab-eeb76e069631",
    topic=STORAGE_TOPIC,
    subject="/blobServices/default/containers/test-container/blobs/new-file.txt",
    event_time=datetime(2017, 6, 26, 18, 41, 0, 958410, tzinfo=UTC),
    api="PutBlockList",
    blob=BlobRef("test-container", "new-file.txt", "0x8D4BCC2E4835CD0"),
    url="https://my-storage-account.blob.core.windows.net/testcontainer/new-file.txt",
    content_length=524288,
    content_type="text/plain",
    blob_type="BlockBlob",
    sequencer="00000000000004420000000000028963",
)


class TestBlobCreated:
    def test_docs_sample_in_event_grid_schema(self) -> None:
        """The array Event Grid delivers parses to the whole expected value."""
        assert parse_blob_created(BLOB_CREATED_EVENTGRID) == EXPECTED_BLOB

    def test_docs_sample_in_cloudevents_schema(self) -> None:
        """source/type/time stand for topic/eventType/eventTime."""
        assert parse_blob_created(BLOB_CREATED_CLOUDEVENT) == EXPECTED_BLOB

    def test_json_text_and_single_object_parse_the_same(self) -> None:
        assert parse_blob_created(json.dumps(BLOB_CREATED_EVENTGRID)) == EXPECTED_BLOB
        assert parse_blob_created(BLOB_CREATED_EVENTGRID[0]) == EXPECTED_BLOB

    def test_keys_match_whatever_their_case_and_etag_may_be_unquoted(self) -> None:
        """The docs spell some keys two ways; the eTag comes quoted and unquoted."""
        event = json.loads(json.dumps(BLOB_CREATED_EVENTGRID[0]))
        event["data"] = {k.upper(): v for k, v in event["data"].items()}
        event["data"]["ETAG"] = "0x8D4BCC2E4835CD0"
        event["EventType"] = event.pop("eventType")
        assert parse_blob_created(event) == EXPECTED_BLOB

    def test_blob_path_with_folders_keeps_them(self) -> None:
        event = json.loads(json.dumps(BLOB_CREATED_EVENTGRID[0]))
        event["subject"] = "/blobServices/default/containers/incoming/blobs/customer-a/2026/jan.csv"
        assert parse_blob_created(event).blob.name == "customer-a/2026/jan.csv"

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            (lambda e: e.pop("id"), "'id' is missing"),
            (lambda e: e.update(eventType="Microsoft.Storage.BlobDeleted"), "is not Microsoft.Storage.BlobCreated"),
            (lambda e: e.update(subject="/blobServices/default/containers/x"), "is not /blobServices/default/"),
            (lambda e: e["data"].pop("eTag"), "'eTag' is missing"),
            (lambda e: e["data"].update(contentLength=-1), "contentLength -1 is not a non-negative integer"),
            (lambda e: e.update(data="text"), "'data' is missing or not an object"),
        ],
    )
    def test_malformed_event_raises_one_line_error(self, change: Any, message: str) -> None:
        event = json.loads(json.dumps(BLOB_CREATED_EVENTGRID[0]))
        change(event)
        with pytest.raises(EventError) as info:
            parse_blob_created(event)
        assert message in str(info.value) and "\n" not in str(info.value)

    def test_not_json_and_batches_are_refused(self) -> None:
        with pytest.raises(EventError, match="not JSON"):
            parse_blob_created("{nope")
        with pytest.raises(EventError, match="array of 2"):
            parse_blob_created(BLOB_CREATED_EVENTGRID * 2)


class TestRunFinished:
    def test_docs_sample_run_completed(self) -> None:
        """RunCompleted carries no runStatus: it means Completed. A null runType reads as ''."""
        assert parse_job_finished(RUN_COMPLETED) == JobFinished(
            event_id="831e1650-001e-001b-66ab-eeb76e069631",
            event_type="Microsoft.MachineLearningServices.RunCompleted",
            topic=WORKSPACE_TOPIC,
            subject=RUN_COMPLETED[0]["subject"],
            event_time=datetime(2017, 6, 26, 18, 41, 0, 958410, tzinfo=UTC),
            experiment_id="0fa9dfaa-cba3-4fa7-b590-23e48548f5c1",
            experiment_name="automl-local-regression",
            job="AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5",
            job_type="",
            job_status="Completed",
            job_tags={},
            job_properties={"runTemplate": "automl_child", "training_percent": "100", "predicted_cost": ""},
        )

    def test_run_status_changed_in_cloudevents_schema(self) -> None:
        event = run_status_changed("Failed")
        cloud = {"specversion": "1.0", "source": event["topic"], "type": event["eventType"],
                 "time": event["eventTime"], "id": event["id"], "subject": event["subject"], "data": event["data"]}
        parsed = parse_job_finished(cloud)
        assert (parsed.job_status, parsed.job_type, dict(parsed.job_tags)) == (
            "Failed", "azureml.PipelineRun", {"autoretrain": "ab" * 12}
        )

    def test_status_changed_without_status_is_malformed(self) -> None:
        event = run_status_changed("Running")
        del event["data"]["runStatus"]
        with pytest.raises(EventError, match="RunStatusChanged without 'runStatus'"):
            parse_job_finished(event)

    def test_parse_event_picks_the_type(self) -> None:
        assert isinstance(parse_event(BLOB_CREATED_EVENTGRID), BlobCreated)
        assert isinstance(parse_event(RUN_COMPLETED), JobFinished)
        other = dict(BLOB_CREATED_EVENTGRID[0], eventType="Microsoft.Storage.BlobTierChanged")
        with pytest.raises(EventError, match="not one autoretrain handles"):
            parse_event(other)
