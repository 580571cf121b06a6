"""One retrain on the Azure adapters, call by call: ingest, then completion, then the champion gate.

The loop runs as the function app runs it on Azure: `AzureMLWorkspace` over the real azure-ai-ml
SDK with the app's bounded retry policy, `AzureBlobStore` and `TableLedger` over the real storage
SDKs. Storage is Azurite (the real component; every request is recorded on its way); Azure ML's
REST API is `FakeAzureML`, the only fake, at the HTTP edge. The events are parsed from the bodies
Event Grid sends.

The tests pin every call of one retrain (method, path, api-version), and what one invocation does
when a call fails: a 503, a 429 with a long Retry-After or a timeout is retried at most three times
within a bounded wait, then raised (Event Grid redelivers the event); a 409 for a job another
delivery created is that job; a 400 is a permanent error, recorded with its reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from fake_azureml import API, ARM, COMPONENT, COMPUTE, DATASTORE, WS_ID, FakeAzureML, _error, ml_client
from mlmodules import wine
from requests.adapters import HTTPAdapter

from autoretrain import loop
from autoretrain.adapters.azureml import (
    CALL_RETRIES,
    RETRY_AFTER_CAP_SECONDS,
    AzureMLWorkspace,
)
from autoretrain.adapters.azureml import client_options as ml_client_options
from autoretrain.adapters.ledger import TableLedger
from autoretrain.adapters.storage import AzureBlobStore, client_options
from autoretrain.contract import load_contract
from autoretrain.domain import BlobRef, LedgerState, Metrics, WorkKey
from autoretrain.domain.errors import TransientError
from autoretrain.domain.events import parse_blob_created, parse_job_finished

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STORAGE_TOPIC = "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg-autoretrain/providers/" \
                "Microsoft.Storage/storageAccounts/stautoretrain"


class RecordingAdapter(HTTPAdapter):
    """requests' own adapter (the request really goes to Azurite), with each request noted."""

    def __init__(self, seen: list[tuple[str, str]]) -> None:
        super().__init__()
        self.seen = seen

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.seen.append((str(request.method), str(request.url)))
        return super().send(request, **kwargs)


@dataclass
class Azure:
    service: FakeAzureML
    deps: loop.Deps
    blobs: AzureBlobStore
    store: BlobServiceClient
    storage_calls: list[tuple[str, str]] = field(default_factory=list)

    @property
    def slept(self) -> list[float]:
        return list(self.deps.workspace._client.fake_transport.slept)  # type: ignore[attr-defined]


# The demo contract with a job per file (no limit on jobs in flight): the calls of one ingest, as these
# tests pin them. A burst under the default (one job in flight) has its own test below.
ONE_JOB_PER_FILE = (ROOT / "ml" / "contract.yaml").read_text(encoding="utf-8") + "training: {jobs_in_flight: 0}\n"


@pytest.fixture
def azure(azurite: str, unique: str, tmp_path: Path) -> Iterator[Azure]:
    seen: list[tuple[str, str]] = []
    session = requests.Session()
    session.mount("http://", RecordingAdapter(seen))

    def transport() -> RequestsTransport:
        return RequestsTransport(session=session, session_owner=False)

    blob_service = BlobServiceClient.from_connection_string(azurite, transport=transport(), **client_options())
    blobs = AzureBlobStore(blob_service)
    ledger = TableLedger.connect(
        TableServiceClient.from_connection_string(azurite, transport=transport()), f"ledger{unique}"
    )
    service = FakeAzureML()
    service.store_container = f"ws{unique}"  # the workspace's own store, served by Azurite
    store = BlobServiceClient.from_connection_string(azurite, transport=transport(), **client_options())
    store.create_container(service.store_container)
    workspace = AzureMLWorkspace(
        ml_client(service, **ml_client_options()), blobs=blobs, datastore=DATASTORE,
        datasets_container=f"ds{unique}", compute=COMPUTE, contract=ROOT / "ml" / "contract.yaml",
        pipeline_component=COMPONENT, workspace_store=lambda _account, _endpoint: AzureBlobStore(store),
    )
    config = loop.LoopConfig(
        storage_topic=STORAGE_TOPIC, workspace_topic=WS_ID, incoming_container=f"in{unique}",
        quarantine_container=f"q{unique}", datasets_container=f"ds{unique}",
    )
    contract = tmp_path / "contract.yaml"
    contract.write_text(ONE_JOB_PER_FILE, encoding="utf-8")
    deps = loop.Deps(config=config, contract=load_contract(contract), workspace=workspace,
                     ledger=ledger, blobs=blobs, clock=lambda: datetime.now(UTC))
    yield Azure(service, deps, blobs, store, seen)


def _blob_created(azure: Azure, name: str, data: bytes) -> Any:
    ref = azure.blobs.upload(azure.deps.config.incoming_container, name, data)
    return parse_blob_created({
        "id": f"ev-{ref.etag}", "topic": STORAGE_TOPIC, "eventType": "Microsoft.Storage.BlobCreated",
        "subject": f"/blobServices/default/containers/{ref.container}/blobs/{ref.name}",
        "eventTime": "2026-11-26T09:00:00.0000000Z", "dataVersion": "", "metadataVersion": "1",
        "data": {"api": "PutBlob", "clientRequestId": "c-1", "requestId": "r-1", "eTag": f'"{ref.etag}"',
                 "contentType": "text/csv", "contentLength": len(data), "blobType": "BlockBlob",
                 "url": f"https://stautoretrain.blob.core.windows.net/{ref.path}", "sequencer": "01",
                 "storageDiagnostics": {"batchId": "b-1"}},
    })


def _run_completed(key: WorkKey) -> Any:
    return parse_job_finished({
        "id": f"run-{key}", "topic": WS_ID, "eventType": "Microsoft.MachineLearningServices.RunCompleted",
        "subject": f"experiments/e-1/runs/{key.job_name}", "eventTime": "2026-11-26T09:05:00Z",
        "dataVersion": "2", "metadataVersion": "1",
        "data": {"experimentId": "e-1", "experimentName": "autoretrain", "runId": key.job_name,
                 "runType": None, "runTags": {"autoretrain": key.value}, "runProperties": {}},
    })


def _job_wrote(azure: Azure, key: WorkKey, output: str, file: str, data: bytes) -> None:
    """A step of key's job wrote `file` into `output`, at the path the adapter bound it to."""
    azure.store.get_blob_client(azure.service.store_container, f"autoretrain/jobs/{key.job_name}/{output}/{file}") \
        .upload_blob(data, overwrite=True)


def _finish_job(azure: Azure, key: WorkKey, f1: float = 0.93) -> None:
    """The job completes: train wrote its model and evaluate metrics.json, at the paths bound at
    submission. The job resource names no path for them (the recorded shape)."""
    azure.service.finish(key.job_name, "Completed")
    metrics = {"metrics": {"f1_macro": f1, "accuracy": 0.95}, "primary_metric": "f1_macro",
               "greater_is_better": True, "test_rows": 12}
    _job_wrote(azure, key, "metrics", "metrics.json", json.dumps(metrics).encode())
    _job_wrote(azure, key, "model", "MLmodel", (ROOT / "ml" / "sample" / "no-champion" / "MLmodel").read_bytes()
               .replace(b"flavors: {}", b"flavors: {sklearn: {pickled_model: model.skops}}"))


def _month() -> bytes:
    frame = wine().wine_frame()
    return bytes(frame.sample(frac=0.3, random_state=4).to_csv(index=False).encode())


def _calls(azure: Azure, key: WorkKey) -> list[str]:
    """Azure ML calls as `METHOD path ?api-version`, with the workspace and names made generic."""
    out = []
    for sent in azure.service.sent:
        parts = urlsplit(sent.url)
        version = parse_qs(parts.query).get("api-version", [""])[0]
        path = f"{parts.scheme}://{parts.netloc}{parts.path}".replace(ARM + WS_ID, "{workspace}")
        path = path.replace(API + "/history/v1.0" + WS_ID, "{history}").replace(API, "{api}")
        path = re.sub(r"autoretrain-[0-9a-f]{24}", "{job}", path).replace(key.value, "{key}")
        out.append(f"{sent.method} {path}" + (f" ?api-version={version}" if version else ""))
    return out


# Every call one retrain makes on Azure ML, in order (the first ingest builds the client's view of
# the workspace). infra/README.md lists them.
INGEST_CALLS = [
    "PUT {workspace}/data/autoretrain-data/versions/{key} ?api-version=2023-04-01-preview",
    # The training set names its members' snapshots from the ledger: no call per member.
    # The SDK reads a new MLTable back through its datastore to validate it (and on Azure also reads
    # the MLTable file from storage and fetches its JSON schema from azuremlschemas.azureedge.net);
    # it goes on when it cannot, as against this fake.
    "GET {workspace}/datastores/autoretrain_datasets ?api-version=2024-10-01-preview",
    "PUT {workspace}/data/autoretrain-data-trainset/versions/{key} ?api-version=2023-04-01-preview",
    "GET {workspace}/models/autoretrain-model/versions ?api-version=2023-08-01-preview",  # the champion
    "GET {workspace}/jobs/{job} ?api-version=2024-01-01-preview",  # submitted before? (a redelivery)
    "GET {workspace}/components/autoretrain_pipeline/versions ?api-version=2024-01-01-preview",  # latest
    "PUT {workspace}/jobs/{job} ?api-version=2024-01-01-preview",
]
COMPLETE_CALLS = [
    "GET {workspace}/jobs/{job} ?api-version=2024-01-01-preview",  # its status
    # The store its outputs were bound to (then blob GETs of metrics.json and the model's MLmodel).
    "GET {workspace}/datastores/workspaceblobstore ?api-version=2024-10-01-preview",
    "GET {workspace}/models/autoretrain-model/versions ?api-version=2023-08-01-preview",  # registered?
    "GET {workspace}/models/autoretrain-model/versions ?api-version=2023-08-01-preview",  # SDK: next version
    "GET {workspace}/models/autoretrain-model ?api-version=2023-08-01-preview",
    "PUT {workspace}/models/autoretrain-model/versions/1 ?api-version=2023-08-01-preview",
    "GET {workspace}/models/autoretrain-model/versions ?api-version=2023-08-01-preview",  # a twin?
    "GET {workspace}/models/autoretrain-model/versions ?api-version=2023-08-01-preview",  # the champion
    "GET {workspace}/models/autoretrain-model/versions ?api-version=2023-08-01-preview",  # promote: still it?
    "GET {workspace}/models/autoretrain-model/versions/1 ?api-version=2023-08-01-preview",
    "GET {workspace}/models/autoretrain-model/versions ?api-version=2023-08-01-preview",
    "PUT {workspace}/models/autoretrain-model/versions/1 ?api-version=2023-08-01-preview",  # champion=true
    "GET {workspace}/models/autoretrain-model/versions ?api-version=2023-08-01-preview",  # gate: untag others
    "GET {workspace}/models/autoretrain-model/versions/1 ?api-version=2023-08-01-preview",
    "GET {workspace}/models/autoretrain-model/versions ?api-version=2023-08-01-preview",
    "PUT {workspace}/models/autoretrain-model/versions/1 ?api-version=2023-08-01-preview",  # gate tag
]


def test_one_retrain_makes_these_calls_and_no_others(azure: Azure) -> None:
    event = _blob_created(azure, "2026-03.csv", _month())
    key = WorkKey.for_blob(event.blob)

    submitted = loop.ingest(event, azure.deps)
    ingest_calls = _calls(azure, key)
    azure.service.sent.clear()
    _finish_job(azure, key)
    done = loop.complete(_run_completed(key), azure.deps)
    complete_calls = _calls(azure, key)

    print("\n".join(["ingest:", *ingest_calls, "complete:", *complete_calls]))
    assert isinstance(submitted, loop.Submitted) and isinstance(done, loop.Registered) and done.promoted
    workspace_view = [c for c in ingest_calls if not c.startswith(("GET {workspace} ", "GET {api}/discovery"))]
    assert workspace_view == INGEST_CALLS
    assert complete_calls == COMPLETE_CALLS
    # The bodies that matter: the job binds the training set and the contract and carries our tag;
    # the model comes from the path the job names and carries the metrics and the gate's decision.
    job = azure.service.jobs[key.job_name]["properties"]
    assert job["tags"]["autoretrain"] == key.value and job["experimentName"] == "autoretrain"
    data = job["inputs"]["data"]
    assert (data["jobInputType"], data["uri"]) == ("mltable", f"{WS_ID}/data/autoretrain-data-trainset/versions/{key}")
    assert job["outputs"]["model"]["uri"] == (
        f"azureml://datastores/workspaceblobstore/paths/autoretrain/jobs/{key.job_name}/model/"
    )
    model = azure.service.models["1"]["properties"]
    assert model["modelUri"].endswith(f"/datastores/workspaceblobstore/paths/autoretrain/jobs/{key.job_name}/model/")
    assert model["tags"]["champion"] == "true" and model["tags"]["gate"].startswith("promoted")
    record = azure.deps.ledger.get(key)
    assert record is not None and record.state is LedgerState.DONE and record.model_version == "autoretrain-model:1"
    # Storage: the customer's account (head read, the snapshot copy, the training set's MLTable, the
    # ledger row) and the workspace store (metrics.json), each a request the storage SDKs really made.
    storage = {f"{method} {urlsplit(url).path.split('/', 3)[-1] if url.count('/') > 3 else url}"
               for method, url in azure.storage_calls}
    print("storage:", *[f"{m} {urlsplit(u).path} {urlsplit(u).query[:60]}" for m, u in azure.storage_calls], sep="\n")
    assert any(call.startswith("GET ") and "metrics.json" in call for call in storage)
    assert any(call.startswith("PUT ") and "/MLTable" in call for call in storage)


# Every call ingest makes except the SDK's MLTable validation read, which it skips when it fails.
@pytest.mark.parametrize("call", [c for c in dict.fromkeys(INGEST_CALLS) if "/datastores/" not in c])
def test_a_call_of_ingest_that_keeps_failing_is_retried_three_times_then_raised_and_redone_once(
    azure: Azure, call: str
) -> None:
    """503 at one call, every time: the call is tried 4 times with waits of at most 3.5 s in all, the
    invocation raises a TransientError (the trigger answers 500, Event Grid redelivers), and the
    redelivery does everything once: one data version, one job."""
    method, path = call.split()[:2]
    pattern = re.escape(path).replace(r"\{workspace\}", re.escape(WS_ID))
    pattern = pattern.replace(r"\{job\}", "autoretrain-[0-9a-f]{24}").replace(r"\{key\}", "[0-9a-f]{24}") + "$"
    busy = (503, _error("ServiceUnavailable", "The service is busy."))
    azure.service.queued.extend([(method, pattern, busy)] * (CALL_RETRIES + 1))
    event = _blob_created(azure, "2026-03.csv", _month())
    key = WorkKey.for_blob(event.blob)

    with pytest.raises(TransientError, match=r"failed: HTTP 503: The service is busy\.; Azure ML is throttling"):
        loop.ingest(event, azure.deps)

    tries = [s for s in azure.service.sent if s.method == method and re.search(pattern, s.path)]
    assert len(tries) == CALL_RETRIES + 1
    assert sum(azure.slept) <= 0.5 + 1 + 2  # azure-core waits 0, 1 and 2 s
    released = azure.deps.ledger.get(key)
    assert released is not None and released.state is LedgerState.CLAIMED and released.lease_until is None
    puts_before = len(azure.service.requests_to("PUT", "/jobs/"))
    again = loop.ingest(event, azure.deps)
    assert isinstance(again, loop.Submitted)
    assert len(azure.service.requests_to("PUT", "/jobs/")) - puts_before == 1 and list(azure.service.jobs) == [
        key.job_name]
    assert list(azure.service.data) == [("autoretrain-data", key.value), ("autoretrain-data-trainset", key.value)]


def test_the_mltable_validation_read_failing_does_not_fail_ingest(azure: Azure) -> None:
    """The SDK's own read-back of a new MLTable is best effort: a 503 there changes nothing."""
    busy = (503, _error("ServiceUnavailable", "The service is busy."))
    azure.service.queued.extend([("GET", "/datastores/autoretrain_datasets$", busy)] * 8)
    outcome = loop.ingest(_blob_created(azure, "2026-03.csv", _month()), azure.deps)
    assert isinstance(outcome, loop.Submitted)


def test_a_429_with_a_long_retry_after_is_waited_out_only_up_to_the_cap(azure: Azure) -> None:
    slow = (429, _error("TooManyRequests", "Rate limit"), {"Retry-After": "60"})
    azure.service.queued.extend([("PUT", "/jobs/", slow)] * (CALL_RETRIES + 1))
    event = _blob_created(azure, "2026-03.csv", _month())

    with pytest.raises(TransientError, match="HTTP 429"):
        loop.ingest(event, azure.deps)

    assert azure.slept == [RETRY_AFTER_CAP_SECONDS] * CALL_RETRIES  # not 3 x 60 s


def test_a_timeout_is_retried_then_raised(azure: Azure) -> None:
    timeout = requests.exceptions.ReadTimeout("read timed out (10 s)")
    azure.service.queued.extend([("GET", "/models/autoretrain-model/versions$", timeout)] * (CALL_RETRIES + 1))
    event = _blob_created(azure, "2026-03.csv", _month())

    with pytest.raises(TransientError, match="read timed out"):
        loop.ingest(event, azure.deps)

    assert len(azure.service.requests_to("GET", "/models/autoretrain-model/versions$")) == CALL_RETRIES + 1
    assert sum(azure.slept) <= 0.5 + 1 + 2


def test_a_409_for_the_job_another_delivery_created_is_that_job(azure: Azure) -> None:
    exists = (409, _error("UserError", "A job with this name already exists."))
    azure.service.queued.append(("PUT", "/jobs/", exists))
    event = _blob_created(azure, "2026-03.csv", _month())
    key = WorkKey.for_blob(event.blob)
    azure.service.jobs[key.job_name] = {
        "id": f"{WS_ID}/jobs/{key.job_name}", "name": key.job_name, "systemData": {},
        "properties": {"jobType": "Pipeline", "status": "Running", "experimentName": "autoretrain",
                       "tags": {"autoretrain": key.value, "champion": ""}, "inputs": {}, "outputs": {}},
    }
    # The lookup before the create saw no job: the other delivery created it in between.
    azure.service.queued.append(("GET", f"/jobs/{key.job_name}$", (404, _error("UserError", "not found"))))

    outcome = loop.ingest(event, azure.deps)

    assert isinstance(outcome, loop.Submitted) and outcome.job.name == key.job_name


def test_a_400_is_permanent_and_recorded_as_failed_with_its_reason(azure: Azure) -> None:
    refused = (400, _error("UserError", "Asset paths cannot be updated."))
    azure.service.queued.append(("PUT", "/data/autoretrain-data/versions/", refused))
    event = _blob_created(azure, "2026-03.csv", _month())

    outcome = loop.ingest(event, azure.deps)

    assert isinstance(outcome, loop.Failed)
    assert outcome.reason.endswith("failed: HTTP 400: Asset paths cannot be updated.")
    assert "\n" not in outcome.reason and azure.service.requests_to("PUT", "/jobs/") == []


def _run_failed(key: WorkKey) -> Any:
    return parse_job_finished({
        "id": f"run-failed-{key}", "topic": WS_ID, "eventType": "Microsoft.MachineLearningServices.RunStatusChanged",
        "subject": f"experiments/e-1/runs/{key.job_name}", "eventTime": "2026-11-26T09:05:00Z",
        "dataVersion": "2", "metadataVersion": "1",
        "data": {"experimentId": "e-1", "experimentName": "autoretrain", "runId": key.job_name, "runType": None,
                 "runTags": {"autoretrain": key.value}, "runProperties": {}, "runStatus": "Failed"},
    })


def _earlier_versions(azure: Azure, count: int) -> None:
    """`count` blob versions already trained (done), as the ledger holds them."""
    from autoretrain.adapters.ledger import _entity
    from autoretrain.domain import Finish, LedgerRecord, StartCompleting, Submit

    now = datetime.now(UTC)
    for i in range(count):
        ref = BlobRef(azure.deps.config.incoming_container, f"old/{count}-{i:04d}.csv", f"0x8D{i:012X}")
        key = WorkKey.for_blob(ref)
        record = LedgerRecord.claimed(ref, key, f"ev-{i}", now, now)
        done = Finish("autoretrain-model:1", Metrics({"f1_macro": 0.9}, "f1_macro"), False)
        for move in (Submit(f"autoretrain-data:{key}", key.job_name, None, f"autoretrain-data-trainset:{key}", 1, 1),
                     StartCompleting(now), done):
            record = record.after(move, now)
        azure.deps.ledger._table.create_entity(_entity(record))  # type: ignore[attr-defined]


def test_ingest_makes_the_same_azure_ml_calls_with_1_and_with_500_earlier_versions(azure: Azure) -> None:
    """The training set's members come from the ledger, so the 501st file costs the calls of the 2nd:
    the same requests, method and path, and one MLTable naming every member."""
    def ingest_after(earlier: int, name: str) -> tuple[list[str], int]:
        _earlier_versions(azure, earlier)
        event = _blob_created(azure, name, _month())
        key = WorkKey.for_blob(event.blob)
        azure.service.sent.clear()
        assert isinstance(loop.ingest(event, azure.deps), loop.Submitted)
        mltable = azure.blobs.read(azure.deps.config.datasets_container, f"trainsets/{key}/MLTable", 1 << 20)
        assert mltable is not None
        members = sum(1 for line in mltable.decode().splitlines() if "file: " in line)
        return [c for c in _calls(azure, key) if not c.startswith(("GET {workspace} ", "GET {api}/discovery"))], members

    one, one_members = ingest_after(1, "2026-03.csv")
    many, many_members = ingest_after(499, "2026-04.csv")  # 1 + 499 + the first file, done or not

    assert one == many == INGEST_CALLS
    assert (one_members, many_members) == (2, 501)


def test_a_job_whose_run_event_never_came_is_completed_by_one_reconcile_pass(azure: Azure) -> None:
    """No RunCompleted at all (lost, or never sent for this job): one reconcile pass completes it."""
    event = _blob_created(azure, "2026-03.csv", _month())
    key = WorkKey.for_blob(event.blob)
    assert isinstance(loop.ingest(event, azure.deps), loop.Submitted)
    _finish_job(azure, key)

    report = loop.reconcile(azure.deps, grace=timedelta(minutes=10))

    assert [(f.what, f.work_key) for f in report.found] == [("finished_job", key.value)]
    record = azure.deps.ledger.get(key)
    assert record is not None and record.state is LedgerState.DONE and record.model_version == "autoretrain-model:1"


def test_a_file_prep_rejects_is_quarantined_on_what_its_report_says(azure: Azure) -> None:
    """prep wrote `rejected` into its report before it exited; the service's error text says
    something else entirely. The file is quarantined with prep's reason, and the customer's blob stays."""
    event = _blob_created(azure, "2026-03.csv", _month())
    key = WorkKey.for_blob(event.blob)
    assert isinstance(loop.ingest(event, azure.deps), loop.Submitted)
    reason = "2026-03.csv: column 'alcohol' has 'x' on line 40; expected a number. Fix the file and upload it again."
    azure.service.finish(key.job_name, "Failed")
    azure.service.child(key.job_name, "prep", "Failed", "Execution failed. A wording of the service's own.")
    _job_wrote(azure, key, "report", "report.json", json.dumps({"rejected": {"reason": reason, "line": 40}}).encode())

    outcome = loop.complete(_run_failed(key), azure.deps)

    assert isinstance(outcome, loop.Quarantined), outcome
    assert outcome.reason.startswith(reason + " (found by step 'prep'")
    record = azure.deps.ledger.get(key)
    assert record is not None and record.state is LedgerState.QUARANTINED
    assert azure.blobs.read(event.blob.container, event.blob.name, 1 << 20) == _month()


def test_the_first_job_binds_the_no_champion_marker_and_the_next_the_champion(azure: Azure) -> None:
    """Every input of the published component bound, on the first job too."""
    first = _blob_created(azure, "2026-03.csv", _month())
    first_key = WorkKey.for_blob(first.blob)
    loop.ingest(first, azure.deps)
    _finish_job(azure, first_key)
    assert isinstance(loop.complete(_run_completed(first_key), azure.deps), loop.Registered)
    second = _blob_created(azure, "2026-04.csv", _month())
    second_key = WorkKey.for_blob(second.blob)

    loop.ingest(second, azure.deps)

    champion = [azure.service.jobs[k.job_name]["properties"]["inputs"]["champion"] for k in (first_key, second_key)]
    assert champion[0]["uri"] == f"azureml://datastores/{DATASTORE}/paths/autoretrain/no-champion/"
    assert champion[1]["uri"] == f"{WS_ID}/models/autoretrain-model/versions/1"
    marker = azure.blobs.read(azure.deps.config.datasets_container, "autoretrain/no-champion/MLmodel", 1 << 20)
    assert marker is not None and b"autoretrain-no-champion: true" in marker


def test_a_burst_waits_for_the_job_in_flight_and_is_one_job_that_tells_prep_which_files_are_new(
    azure: Azure,
) -> None:
    """The default contract (one job in flight) on the Azure adapters: the first file's job runs, two
    more files wait; its completion submits one job for both, on a training set of all three, with
    `new_files: 2` (so prep quarantines a bad one of them instead of failing the job as our fault)."""
    deps = replace(azure.deps, contract=load_contract(ROOT / "ml" / "contract.yaml"))
    events = [_blob_created(azure, f"2026-0{n}.csv", _month()) for n in (3, 4, 5)]
    first, *burst = (WorkKey.for_blob(e.blob) for e in events)

    outcomes = [loop.ingest(event, deps) for event in events]

    assert [type(o) for o in outcomes] == [loop.Submitted, loop.Waiting, loop.Waiting]
    assert list(azure.service.jobs) == [first.job_name]
    _finish_job(azure, first)
    done = loop.complete(_run_completed(first), deps)
    assert isinstance(done, loop.Several) and isinstance(done.outcomes[-1], loop.Submitted)
    batch = WorkKey.for_batch(burst)
    job = azure.service.jobs[batch.job_name]["properties"]
    assert (job["inputs"]["new_files"]["jobInputType"], job["inputs"]["new_files"]["value"]) == ("literal", "2")
    assert job["tags"]["autoretrain"] == batch.value and job["tags"]["new_versions"] == "2"
    mltable = azure.blobs.read(deps.config.datasets_container, f"trainsets/{batch}/MLTable", 1 << 20)
    assert mltable is not None and sum("file: " in line for line in mltable.decode().splitlines()) == 3
    _finish_job(azure, batch)
    finished = loop.complete(_run_completed(batch), deps)
    assert isinstance(finished, loop.Several) and all(isinstance(o, loop.Registered) for o in finished.outcomes)
    records = [deps.ledger.get(key) for key in burst]
    assert {(r.state, r.job, r.model_version) for r in records if r} == {
        (LedgerState.DONE, batch.job_name, "autoretrain-model:2")}
    assert deps.ledger.schedule().jobs == {}
