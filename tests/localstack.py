"""`autoretrain up` as a subprocess with its own home, host port, containers and table: the real
local stack, as a user runs it, for the integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from autoretrain.adapters.ledger import TableLedger
from autoretrain.adapters.storage import AzureBlobStore, client_options
from autoretrain.domain import BlobRef, LedgerRecord, WorkKey
from autoretrain.local import host_answers
from autoretrain.local.azurite import azurite_connection, free_port
from autoretrain.settings import LOCAL_STORAGE_TOPIC

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Loop:
    home: Path
    url: str
    incoming: str
    quarantine: str
    blobs: AzureBlobStore
    ledger: TableLedger
    process: subprocess.Popen[str]
    env: dict[str, str] = field(default_factory=dict)
    log: Path = Path("up.log")

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


def own_storage() -> str:
    """A connection string to an Azurite on ports of its own (Azurite's documented dev account), which
    the stack (or the test) starts and stops itself."""
    blob = free_port()
    table = free_port()
    while table in (blob, blob + 1):
        table = free_port()
    return azurite_connection(blob, table)


def per_file_contract(folder: Path) -> dict[str, str]:
    """The settings of a stack whose contract is the demo's with a job per file (no limit on jobs in
    flight): what a test of each file's own job, data version and model pins."""
    contract = folder / "per-file" / "contract.yaml"  # the demo's file name, as messages name it
    contract.parent.mkdir(exist_ok=True)
    contract.write_text((ROOT / "ml" / "contract.yaml").read_text(encoding="utf-8")
                        + "training: {jobs_in_flight: 0}\n", encoding="utf-8")
    return {"AUTORETRAIN_CONTRACT": str(contract)}


def stack_env(tmp_path: Path, unique: str, azurite: str, port: int, extra_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORETRAIN_")}
    env.update(
        AUTORETRAIN_HOME=str(tmp_path / "home"),
        AUTORETRAIN_HOST_URL=f"http://127.0.0.1:{port}",
        AUTORETRAIN_STORAGE=azurite,
        AUTORETRAIN_INCOMING_CONTAINER=f"in{unique}",
        AUTORETRAIN_QUARANTINE_CONTAINER=f"q{unique}",
        AUTORETRAIN_DATASETS_CONTAINER=f"ds{unique}",
        AUTORETRAIN_LEDGER_TABLE=f"ledger{unique}",
        # The tests' one Azurite serves every test's home, each with its own containers and table.
        **({"AUTORETRAIN_AZURITE": "shared"} if azurite == "UseDevelopmentStorage=true" else {}),
        **extra_env,
    )
    return env


def cli(env: dict[str, str], *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `autoretrain ARGS` as a user would, in the stack's environment."""
    return subprocess.run(
        [sys.executable, "-m", "autoretrain.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def start(
    tmp_path: Path, unique: str, azurite: str, extra_env: dict[str, str], *, args: Sequence[str] = (),
    port: int | None = None, log_name: str = "up.log",
) -> Iterator[Loop]:
    port = port or free_port()
    env = stack_env(tmp_path, unique, azurite, port, extra_env)
    log_path = tmp_path / log_name
    with log_path.open("w") as log:
        # Its own process group, as a terminal's foreground job: a test can Ctrl-C it as a terminal does.
        process = subprocess.Popen(
            [sys.executable, "-m", "autoretrain.cli", "up", "--poll-interval", "0.3", *args],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not host_answers(f"http://127.0.0.1:{port}"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"autoretrain up did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        ledger = TableLedger.connect(TableServiceClient.from_connection_string(azurite), f"ledger{unique}")
        yield Loop(
            home=tmp_path / "home", url=f"http://127.0.0.1:{port}", incoming=f"in{unique}",
            quarantine=f"q{unique}",
            blobs=AzureBlobStore(BlobServiceClient.from_connection_string(azurite, **client_options())),
            ledger=ledger, process=process, env=env, log=log_path,
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            asked = time.monotonic()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                # What it started in sessions of their own (its Azurite, its warm runner) goes too.
                subprocess.run(["pkill", "-KILL", "-f", str(tmp_path / "home")], check=False)
            took = time.monotonic() - asked
            if took > 30:  # not a failure (a stop may wait for a hung function), but shown in the run's summary
                warnings.warn(f"autoretrain up took {took:.0f} s to stop after Ctrl-C; its log: {log_path}",
                              stacklevel=1)
        print(log_path.read_text()[-5000:])


def blob_created(
    ref: BlobRef, event_id: str, *, length: int = 100, topic: str = LOCAL_STORAGE_TOPIC
) -> dict[str, Any]:
    """The BlobCreated event Blob Storage sends for `ref` (Event Grid schema), as a redelivery or a
    test's own delivery."""
    return {
        "id": event_id, "topic": topic, "eventType": "Microsoft.Storage.BlobCreated",
        "subject": f"/blobServices/default/containers/{ref.container}/blobs/{ref.name}",
        "eventTime": "2026-11-25T12:00:00Z", "dataVersion": "", "metadataVersion": "1",
        "data": {"api": "PutBlob", "eTag": ref.etag, "contentLength": length, "blobType": "BlockBlob",
                 "url": f"http://127.0.0.1:10000/devstoreaccount1/{ref.path}"},
    }


def post_event(url: str, function: str, event: dict[str, object]) -> int:
    request = urllib.request.Request(
        f"{url}/runtime/webhooks/eventgrid?functionName={function}",
        data=json.dumps([event]).encode(),
        headers={"Content-Type": "application/json", "aeg-event-type": "Notification"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(answer.status)


