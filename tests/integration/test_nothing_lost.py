"""No file is lost or silently skipped, on the real local stack (`autoretrain up` over HTTP, Azurite,
the embedded workspace): lost events, hostile names, redeliveries, dead letters, and a stack stopped
or killed at awkward moments."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from localstack import Loop, blob_created, cli, post_event, start
from mlmodules import wine

from autoretrain.adapters.localworkspace.workspace import catalog_rows
from autoretrain.domain import BlobRef, LedgerState, WorkKey

pytestmark = pytest.mark.integration

BAD = b"alcohol,cultivar\n13.2,class_0\n"
# How long a file is watched to show that nothing claims it without its event. A negative check has no
# condition to wait for, only time to let pass: bounded, and many times what a delivered event takes to
# be claimed (`up` looks at incoming/ every 0.3 s in these tests).
QUIET_SECONDS = 2.0


@pytest.fixture
def running(tmp_path: Path, unique: str, azurite: str) -> Iterator[Loop]:
    yield from start(tmp_path, unique, azurite, {})


@pytest.fixture
def without_eventgrid(tmp_path: Path, unique: str, azurite: str) -> Iterator[Loop]:
    # The stack's own reconcile timer (every 5 minutes) stays out of the way: a tick in the middle of
    # the test's `autoretrain reconcile` started its job first, and the command printed `waiting`.
    env = {"AUTORETRAIN_RECONCILE_SCHEDULE": "0 0 0 1 1 *"}
    yield from start(tmp_path, unique, azurite, env, args=["--without-eventgrid"])


def _month(tmp_path: Path) -> bytes:
    [path] = wine().write_monthly_drops(tmp_path / "drops", months=1, seed=3)
    return bytes(path.read_bytes())




def _stays_unclaimed(loop: Loop, key: WorkKey, seconds: float) -> None:
    """Watch the ledger for `seconds` while the stack runs: no record for `key` may appear."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert loop.process.poll() is None, f"autoretrain up exited with {loop.process.returncode}"
        record = loop.ledger.get(key)
        assert record is None, f"claimed with no event and no reconcile: {record}"
        time.sleep(0.2)


def test_a_file_uploaded_while_event_grid_is_off_is_found_by_reconcile(
    without_eventgrid: Loop, tmp_path: Path
) -> None:
    """A lost BlobCreated: nothing happens until reconcile, which trains the file once."""
    loop = without_eventgrid
    ref = loop.blobs.upload(loop.incoming, "2026-01.csv", _month(tmp_path))
    key = WorkKey.for_blob(ref)
    _stays_unclaimed(loop, key, QUIET_SECONDS)  # deliberately lets time pass: nothing may happen in it

    result = cli(loop.env, "reconcile", "--grace", "0", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert f"unannounced      {ref.path}  work_key={key}" in result.stdout
    assert f"-> submitted {key.job_name} on autoretrain-data:1" in result.stdout
    assert "-> done: model autoretrain-model:1, promoted" in result.stdout
    record = loop.ledger.get(key)
    assert record is not None and record.state is LedgerState.DONE
    again = cli(loop.env, "reconcile", "--grace", "0", cwd=tmp_path)
    assert again.returncode == 0 and "found 0, errors 0" in again.stdout
    assert len(catalog_rows(loop.home, "jobs")) == 1 and len(catalog_rows(loop.home, "models")) == 1


def test_hostile_blobs_each_get_a_final_state_and_no_500(running: Loop, azurite: str, tmp_path: Path) -> None:
    """1,000-character names (a good file and a bad one), an event for a vanished blob with a bad
    name, '../' in a subject: each ends with a recorded reason, answered 200, holding no claim."""
    long_name = "x" * 996 + ".csv"
    long_ref = running.blobs.upload(running.incoming, long_name, BAD)
    long_good = running.blobs.upload(running.incoming, "y" * 996 + ".csv", _month(tmp_path))
    vanished = BlobRef(running.incoming, "gone/../..\x07.csv", "0x8DE00000000000A")
    climbing = BlobRef(running.incoming, "a/../../etc/passwd.csv", "0x8DE00000000000B")

    assert post_event(running.url, "ingest", blob_created(vanished, "vanished")) == 200
    assert post_event(running.url, "ingest", blob_created(climbing, "climbing")) == 200
    records = running.wait_final([WorkKey.for_blob(long_ref), WorkKey.for_blob(vanished),
                                  WorkKey.for_blob(climbing), WorkKey.for_blob(long_good)], timeout=120)

    assert records[WorkKey.for_blob(long_good)].state is LedgerState.DONE  # local paths come from the key

    long_record = records[WorkKey.for_blob(long_ref)]
    assert long_record.state is LedgerState.QUARANTINED
    assert "missing column(s)" in (long_record.reason or "")
    copy_name = long_ref.copy_name(WorkKey.for_blob(long_ref))
    assert len(copy_name) < 300
    copy = BlobServiceClient.from_connection_string(azurite).get_blob_client(running.quarantine, copy_name)
    assert copy.download_blob().readall() == BAD
    for key in (WorkKey.for_blob(vanished), WorkKey.for_blob(climbing)):
        record = records[key]
        assert record.state is LedgerState.SKIPPED
        assert "could not be quarantined" in (record.reason or "") and "\n" not in (record.reason or "")
    log = running.log.read_text()
    assert "Executed 'Functions.ingest' (Failed" not in log


def test_ten_concurrent_redeliveries_of_one_event_change_nothing(running: Loop, tmp_path: Path) -> None:
    """`autoretrain replay BLOB --times 10 --concurrency 10`: all answered 200, one data version, one job."""
    ref = running.blobs.upload(running.incoming, "2026-01.csv", _month(tmp_path))
    key = WorkKey.for_blob(ref)

    result = cli(running.env, "replay", ref.name, "--times", "10", "--concurrency", "10", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 time(s), 10 at once: HTTP 200 x10" in result.stdout
    record = running.wait_final([key], timeout=120)[key]
    assert record.state is LedgerState.DONE
    assert len(catalog_rows(running.home, "data")) == 1
    assert len(catalog_rows(running.home, "jobs")) == 1 and len(catalog_rows(running.home, "models")) == 1


def test_a_name_that_cannot_be_listed_does_not_hold_up_a_good_file(running: Loop, tmp_path: Path) -> None:
    """Azurite cannot list a name with a control character; the file dropped after it still goes
    through at once, and the log says which prefix could not be listed."""
    running.blobs.upload(running.incoming, "bad\x01name.csv", BAD)
    started = time.monotonic()
    good = running.blobs.upload(running.incoming, "after.csv", BAD)
    key = WorkKey.for_blob(good)

    record = running.wait_final([key], timeout=60)[key]

    assert record.state is LedgerState.QUARANTINED
    elapsed = time.monotonic() - started
    print(f"good file behind an unlistable name: final after {elapsed:.1f} s")
    assert elapsed < 30
    assert "storage.listing_split" in running.log.read_text()


def test_replay_redelivers_dead_letters_from_the_folder_and_the_container(
    running: Loop, tmp_path: Path, unique: str, azurite: str
) -> None:
    """Dead-lettered events go to the function they were meant for; replayed ones are kept, marked."""
    from_folder = running.blobs.upload(running.incoming, "folder.csv", BAD)
    from_container = running.blobs.upload(running.incoming, "container.csv", BAD)
    dead = running.home / "deadletter"
    dead.mkdir(parents=True, exist_ok=True)
    record = {**blob_created(from_folder, "dl-1"), "deadLetterReason": "MaxDeliveryAttemptsExceeded",
              "deliveryAttempts": 6, "lastDeliveryOutcome": "InternalServerError", "lastHttpStatusCode": 500}
    (dead / "20261125T120000-dl-1.json").write_text(json.dumps(record))
    container = f"dl{unique}"
    service = BlobServiceClient.from_connection_string(azurite)
    service.create_container(container)
    azure_record = [{**blob_created(from_container, "dl-2"), "deadLetterReason": "TimeToLiveExceeded",
                     "deliveryAttempts": 30}]
    service.get_blob_client(container, "topic/sub/2026/11/25/12/dl-2.json").upload_blob(json.dumps(azure_record))

    result = cli(running.env, "replay", "--container", container, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "replayed 2 dead-letter record(s), 0 failed" in result.stdout
    assert not list(dead.glob("*.json")) and (dead / "replayed" / "20261125T120000-dl-1.json").is_file()
    props = service.get_blob_client(container, "topic/sub/2026/11/25/12/dl-2.json").get_blob_properties()
    assert "replayed_at" in props.metadata
    for ref in (from_folder, from_container):
        key = WorkKey.for_blob(ref)
        assert running.wait_final([key], timeout=30)[key].state is LedgerState.QUARANTINED
    again = cli(running.env, "replay", "--container", container, cwd=tmp_path)
    assert "replayed 0 dead-letter record(s), 0 failed" in again.stdout
