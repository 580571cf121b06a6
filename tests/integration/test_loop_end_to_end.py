"""The whole loop, for real: `autoretrain up` (Azurite, the local Functions host over HTTP, the local
Event Grid) with the embedded workspace. Files go in through Blob Storage; models come out."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from mlmodules import wine

from autoretrain.domain import LedgerRecord, LedgerState, WorkKey
from autoretrain.ledger import TableLedger
from autoretrain.settings import LOCAL_STORAGE_TOPIC
from autoretrain.storage import AzureBlobStore
from autoretrain.workspace.local import catalog_rows

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Loop:
    home: Path
    url: str
    incoming: str
    quarantine: str
    blobs: AzureBlobStore
    ledger: TableLedger
    process: subprocess.Popen[str]

    def wait_final(self, keys: list[WorkKey], timeout: float) -> dict[WorkKey, LedgerRecord]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = {k: r for k in keys if (r := self.ledger.get(k)) is not None}
            if len(records) == len(keys) and all(r.state.final for r in records.values()):
                return records
            if self.process.poll() is not None:
                pytest.fail(f"autoretrain up exited with {self.process.returncode}")
            time.sleep(0.5)
        pytest.fail(f"not final after {timeout} s: {[(k.value, r.state) for k, r in records.items()]}")


def _start(tmp_path: Path, unique: str, azurite: str, extra_env: dict[str, str]) -> Iterator[Loop]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORETRAIN_")}
    env.update(
        AUTORETRAIN_HOME=str(tmp_path / "home"),
        AUTORETRAIN_HOST_URL=f"http://127.0.0.1:{port}",
        AUTORETRAIN_STORAGE=azurite,
        AUTORETRAIN_INCOMING_CONTAINER=f"in{unique}",
        AUTORETRAIN_QUARANTINE_CONTAINER=f"q{unique}",
        AUTORETRAIN_DATASETS_CONTAINER=f"ds{unique}",
        AUTORETRAIN_LEDGER_TABLE=f"ledger{unique}",
        **extra_env,
    )
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "autoretrain.cli", "up", "--poll-interval", "0.3"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/host/status", timeout=1) as answer:
                    if json.load(answer)["state"] == "Running":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"autoretrain up did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        ledger = TableLedger.connect(TableServiceClient.from_connection_string(azurite), f"ledger{unique}")
        yield Loop(
            home=tmp_path / "home", url=f"http://127.0.0.1:{port}", incoming=f"in{unique}",
            quarantine=f"q{unique}", blobs=AzureBlobStore(BlobServiceClient.from_connection_string(azurite)),
            ledger=ledger, process=process,
        )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        print(log_path.read_text()[-5000:])


@pytest.fixture
def running(tmp_path: Path, unique: str, azurite: str) -> Iterator[Loop]:
    yield from _start(tmp_path, unique, azurite, {})


def _wine_months(folder: Path, months: int) -> list[Path]:
    return list(wine().write_monthly_drops(folder, months=months, seed=1))


def _post_event(url: str, function: str, event: dict[str, object]) -> int:
    request = urllib.request.Request(
        f"{url}/runtime/webhooks/eventgrid?functionName={function}",
        data=json.dumps([event]).encode(),
        headers={"Content-Type": "application/json", "aeg-event-type": "Notification"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(answer.status)


def test_each_dropped_file_becomes_one_data_version_job_and_model(running: Loop, tmp_path: Path) -> None:
    """N good files -> N data versions, N jobs, N models with metrics; a bad file -> quarantine."""
    drops = _wine_months(tmp_path / "drops", 3)
    bad = b"alcohol,cultivar\n13.2,class_0\n"
    refs = [running.blobs.upload(running.incoming, p.name, p.read_bytes()) for p in drops]
    bad_ref = running.blobs.upload(running.incoming, "broken.csv", bad)
    keys = [WorkKey.for_blob(r) for r in refs]
    bad_key = WorkKey.for_blob(bad_ref)

    records = running.wait_final([*keys, bad_key], timeout=300)

    good = [records[k] for k in keys]
    assert [r.state for r in good] == [LedgerState.DONE] * 3, [r.reason for r in good]
    assert sorted(r.data_version for r in good) == [f"autoretrain-data:{i}" for i in (1, 2, 3)]  # type: ignore[misc]
    assert sorted(r.model_version for r in good) == [f"autoretrain-model:{i}" for i in (1, 2, 3)]  # type: ignore[misc]
    assert all(r.metrics and r.metrics.primary == "f1_macro" for r in good)
    assert sum(bool(r.promoted) for r in good) >= 1
    jobs = catalog_rows(running.home, "jobs")
    assert sorted(j["name"] for j in jobs) == sorted(k.job_name for k in keys)
    assert {j["status"] for j in jobs} == {"Completed"}
    models = catalog_rows(running.home, "models")
    assert len(models) == 3 and all("f1_macro" in m["metrics"] for m in models)
    assert sum(m["champion"] for m in models) == 1

    quarantined = records[bad_key]
    assert quarantined.state is LedgerState.QUARANTINED
    assert quarantined.reason == (
        f"{running.incoming}/broken.csv: missing column(s) 'malic_acid', 'ash', 'alcalinity_of_ash', 'magnesium', "
        "'total_phenols', 'flavanoids', 'nonflavanoid_phenols', 'proanthocyanins', 'color_intensity', 'hue', "
        "'od280_od315_of_diluted_wines', 'proline' required by contract.yaml; add them and upload the file again."
    )
    assert running.blobs.read_head(bad_ref, 1000) == bad  # the customer's file is untouched
    copy = BlobServiceClient.from_connection_string("UseDevelopmentStorage=true").get_blob_client(
        running.quarantine, f"{bad_key}/broken.csv"
    )
    assert copy.download_blob().readall() == bad
    assert copy.get_blob_properties().metadata["reason"] == quarantined.reason

    # Event Grid redelivers: the same blob version again, over HTTP, changes nothing.
    first = refs[0]
    duplicate = {
        "id": "redelivered-1", "topic": LOCAL_STORAGE_TOPIC, "eventType": "Microsoft.Storage.BlobCreated",
        "subject": f"/blobServices/default/containers/{first.container}/blobs/{first.name}",
        "eventTime": "2026-11-25T12:00:00Z", "dataVersion": "", "metadataVersion": "1",
        "data": {"api": "PutBlob", "eTag": first.etag, "contentLength": 100, "blobType": "BlockBlob",
                 "url": f"http://127.0.0.1:10000/devstoreaccount1/{first.path}"},
    }
    assert _post_event(running.url, "ingest", duplicate) == 200
    as_cloudevent = {
        "specversion": "1.0", "id": "redelivered-2", "source": duplicate["topic"], "type": duplicate["eventType"],
        "subject": duplicate["subject"], "time": duplicate["eventTime"], "data": duplicate["data"],
    }
    assert _post_event(running.url, "ingest", as_cloudevent) == 200
    time.sleep(1)
    assert len(catalog_rows(running.home, "jobs")) == 3
    assert running.ledger.get(keys[0]) == records[keys[0]]


@pytest.fixture
def running_diabetes(tmp_path: Path, unique: str, azurite: str) -> Iterator[Loop]:
    yield from _start(
        tmp_path, unique, azurite, {"AUTORETRAIN_CONTRACT": str(ROOT / "ml" / "contracts" / "diabetes.yaml")}
    )


def test_another_data_sets_contract_needs_no_code_change(running_diabetes: Loop, tmp_path: Path) -> None:
    """Pointing AUTORETRAIN_CONTRACT at a regression data set trains and registers a regressor."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
    frame["sex"] = frame["sex"].map({1.0: "f", 2.0: "m"})
    ref = running_diabetes.blobs.upload(running_diabetes.incoming, "diabetes.csv", frame.to_csv(index=False).encode())
    key = WorkKey.for_blob(ref)

    record = running_diabetes.wait_final([key], timeout=240)[key]

    assert record.state is LedgerState.DONE, record.reason
    assert record.metrics is not None and record.metrics.primary == "r2"
    assert {"r2", "rmse", "mae"} <= set(record.metrics.values)
