"""Azure's own sample events (Microsoft Learn), shared by the tests that parse or deliver them."""

from __future__ import annotations

from typing import Any

STORAGE_TOPIC = (
    "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/my-storage-account"
)
WORKSPACE_TOPIC = (
    "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}"
    "/providers/Microsoft.MachineLearningServices/workspaces/{workspace-name}"
)

# event-schema-blob-storage.md, "Microsoft.Storage.BlobCreated event", Event Grid event schema.
BLOB_CREATED_EVENTGRID: list[dict[str, Any]] = [{
    "topic": STORAGE_TOPIC,
    "subject": "/blobServices/default/containers/test-container/blobs/new-file.txt",
    "eventType": "Microsoft.Storage.BlobCreated",
    "eventTime": "2017-06-26T18:41:00.9584103Z",
    "id": "831e1650-001e-001b-66ab-eeb76e069631",
    "data": {
        "api": "PutBlockList",
        "clientRequestId": "6d79dbfb-0e37-4fc4-981f-442c9ca65760",
        "requestId": "831e1650-001e-001b-66ab-eeb76e000000",
        "eTag": "\"0x8D4BCC2E4835CD0\"",
        "contentType": "text/plain",
        "contentLength": 524288,
        "blobType": "BlockBlob",
        "url": "https://my-storage-account.blob.core.windows.net/testcontainer/new-file.txt",
        "sequencer": "00000000000004420000000000028963",
        "storageDiagnostics": {"batchId": "b68529f3-68cd-4744-baa4-3c0498ec19f0"},
    },
    "dataVersion": "",
    "metadataVersion": "1",
}]

# The same event in the CloudEvents 1.0 schema.
BLOB_CREATED_CLOUDEVENT: dict[str, Any] = {
    "source": STORAGE_TOPIC,
    "subject": "/blobServices/default/containers/test-container/blobs/new-file.txt",
    "type": "Microsoft.Storage.BlobCreated",
    "time": "2017-06-26T18:41:00.9584103Z",
    "id": "831e1650-001e-001b-66ab-eeb76e069631",
    "data": dict(BLOB_CREATED_EVENTGRID[0]["data"]),
    "specversion": "1.0",
}

# event-schema-machine-learning.md, "Microsoft.MachineLearningServices.RunCompleted event".
RUN_COMPLETED: list[dict[str, Any]] = [{
    "topic": WORKSPACE_TOPIC,
    "subject": "experiments/0fa9dfaa-cba3-4fa7-b590-23e48548f5c1/runs/AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5",
    "eventType": "Microsoft.MachineLearningServices.RunCompleted",
    "eventTime": "2017-06-26T18:41:00.9584103Z",
    "id": "831e1650-001e-001b-66ab-eeb76e069631",
    "data": {
        "experimentId": "0fa9dfaa-cba3-4fa7-b590-23e48548f5c1",
        "experimentName": "automl-local-regression",
        "runId": "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5",
        "runType": None,
        "runTags": {},
        "runProperties": {"runTemplate": "automl_child", "training_percent": "100", "predicted_cost": None},
    },
    "dataVersion": "2",
    "metadataVersion": "1",
}]
