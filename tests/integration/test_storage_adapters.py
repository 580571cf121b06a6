"""The Table ledger and the Blob store on Azurite: the real Azure SDKs against a real service."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from autoretrain.adapters.ledger import TableLedger
from autoretrain.adapters.storage import AzureBlobStore, client_options
from autoretrain.domain import (
    BlobRef,
    Finish,
    LedgerState,
    Metrics,
    Quarantine,
    Release,
    Skip,
    StartCompleting,
    Submit,
    TakeOver,
    Wait,
    WorkKey,
)
from autoretrain.domain.errors import BlobChangedError, BlobMissingError, LedgerError

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(azurite: str, unique: str) -> TableLedger:
    return TableLedger.connect(TableServiceClient.from_connection_string(azurite), f"ledger{unique}")


@pytest.fixture
def store(azurite: str) -> AzureBlobStore:
    # The app's retry budget (bootstrap), not the SDK's default of ten.
    return AzureBlobStore(BlobServiceClient.from_connection_string(azurite, **client_options()))


LEASE = datetime(2030, 1, 1, tzinfo=UTC)


class TestTableLedger:
    def test_claim_is_atomic_second_claim_returns_the_first(self, ledger: TableLedger) -> None:
        blob = BlobRef("incoming", "a.csv", "0x1")
        key = WorkKey.for_blob(blob)
        _, created = ledger.claim(blob, key, "ev-1", LEASE)
        second, created_again = ledger.claim(blob, key, "ev-2", LEASE)
        assert (created, created_again) == (True, False)
        assert (second.event_id, second.state, second.blob, second.lease_until, second.takers) == (
            "ev-1", LedgerState.CLAIMED, blob, LEASE, 1
        )

    def test_a_move_needs_the_record_as_read(self, ledger: TableLedger) -> None:
        """Two deliveries that both read the claim: only the first move wins."""
        blob = BlobRef("incoming", "a.csv", "0x2")
        record, _ = ledger.claim(blob, WorkKey.for_blob(blob), "ev-1", LEASE)
        moved = ledger.move(record, Submit("d:1", "job-1"))
        with pytest.raises(LedgerError, match="changed since it was read"):
            ledger.move(record, Submit("d:2", "job-2"))
        stored = ledger.get(record.key)
        assert stored is not None
        assert (stored.state, stored.job, stored.data_version, stored.etag, stored.lease_until) == (
            LedgerState.SUBMITTED, "job-1", "d:1", moved.etag, LEASE
        )

    def test_one_of_two_workers_takes_over_a_stale_claim(self, ledger: TableLedger) -> None:
        """Take-over is a compare-and-swap: the second taker of the same read loses."""
        blob = BlobRef("incoming", "t.csv", "0x5")
        record, _ = ledger.claim(blob, WorkKey.for_blob(blob), "ev-1", LEASE)
        released = ledger.move(record, Release("StorageError: timeout"))
        taken = ledger.move(released, TakeOver(LEASE))
        with pytest.raises(LedgerError):
            ledger.move(released, TakeOver(LEASE))
        stored = ledger.get(record.key)
        assert stored is not None
        assert (stored.state, stored.takers, stored.lease_until, stored.reason, stored.etag) == (
            LedgerState.CLAIMED, 2, LEASE, "StorageError: timeout", taken.etag
        )

    def test_only_allowed_moves(self, ledger: TableLedger) -> None:
        blob = BlobRef("incoming", "b.csv", "0x3")
        record, _ = ledger.claim(blob, WorkKey.for_blob(blob), "ev-1", LEASE)
        done = ledger.move(record, Quarantine("bad"))
        assert done.lease_until is None
        with pytest.raises(LedgerError, match="cannot move from quarantined to submitted"):
            ledger.move(done, Submit("d:1", "j"))
        with pytest.raises(LedgerError, match="holds no lease"):
            ledger.move(done, TakeOver(LEASE))

    def test_metrics_and_promotion_round_trip_and_list(self, ledger: TableLedger) -> None:
        blob = BlobRef("incoming", "c.csv", "0x4")
        record, _ = ledger.claim(blob, WorkKey.for_blob(blob), "ev-1", LEASE)
        record = ledger.move(record, Submit("d:1", "j"))
        record = ledger.move(record, StartCompleting(LEASE))
        metrics = Metrics({"r2": 0.5, "rmse": 3.25}, primary="rmse", greater_is_better=False)
        ledger.move(record, Finish("m:1", metrics, False))
        [listed] = list(ledger.records())
        seen = (listed.state, listed.metrics, listed.promoted, listed.model_version, listed.job, listed.lease_until)
        assert seen == (LedgerState.DONE, metrics, False, "m:1", "j", None)

    def test_records_in_one_state_are_filtered_by_the_table_and_keep_attempt_fields(self, ledger: TableLedger) -> None:
        """The training window reads done records only; an attempt's number and first key round-trip."""
        first = BlobRef("incoming", "d.csv", "0x5")
        origin = WorkKey.for_blob(first)
        record, _ = ledger.claim(first, origin, "ev-1", LEASE)
        ledger.move(record, Skip("replaced"))
        ledger.claim(first, origin.attempt(1), "retrain-1", LEASE, attempt=1, first_key=origin)
        assert [r.key for r in ledger.records(LedgerState.SKIPPED)] == [origin]
        [claimed] = list(ledger.records(LedgerState.CLAIMED))
        assert (claimed.key, claimed.attempt, claimed.first_key, claimed.origin) == (
            origin.attempt(1), 1, origin, origin,
        )
        assert list(ledger.records(LedgerState.DONE)) == [] and len(list(ledger.records())) == 2

    def test_a_row_written_before_the_rename_is_read_and_rewritten_with_the_new_names(
        self, azurite: str, unique: str
    ) -> None:
        """Older code wrote `retrain`, `retrain_of` and `attempts`: such a row reads as its attempt, first
        key and takers, and the next (ETag-matched) move writes `attempt`, `first_key` and `takers`."""
        table = TableServiceClient.from_connection_string(azurite).get_table_client(f"old{unique}")
        table.create_table()
        ledger = TableLedger(table)
        blob = BlobRef("incoming", "old.csv", "0x6")
        origin = WorkKey.for_blob(blob)
        key = origin.attempt(2)
        created = datetime(2026, 1, 1, tzinfo=UTC)
        table.create_entity({
            "PartitionKey": key.value[:2], "RowKey": key.value, "container": blob.container, "blob": blob.name,
            "blob_etag": blob.etag, "state": "claimed", "event_id": "retrain-2", "created": created,
            "updated": created, "lease_until": created, "attempts": 3, "retrain": 2, "retrain_of": origin.value,
            "history": '[{"state": "claimed", "at": "2026-01-01T00:00:00+00:00", "note": "retrain 2"}]',
        })
        table.create_entity({
            "PartitionKey": origin.value[:2], "RowKey": origin.value, "container": blob.container,
            "blob": blob.name, "blob_etag": blob.etag, "state": "skipped", "event_id": "ev-1", "created": created,
            "updated": created, "attempts": 1, "reason": "replaced",
        })

        old = ledger.get(key)
        first = ledger.get(origin)
        assert old is not None and first is not None
        assert (old.key, old.attempt, old.first_key, old.origin, old.takers, old.state) == (
            key, 2, origin, origin, 3, LedgerState.CLAIMED
        )
        assert (first.attempt, first.first_key, first.origin, first.takers) == (0, None, origin, 1)

        taken = ledger.move(old, TakeOver(LEASE))
        with pytest.raises(LedgerError, match="changed since it was read"):
            ledger.move(old, TakeOver(LEASE))
        assert (taken.attempt, taken.first_key, taken.takers, taken.history[-1].note) == (2, origin, 4, "taker 4")
        row = table.get_entity(key.value[:2], key.value)
        assert (row["attempt"], row["first_key"], row["takers"]) == (2, origin.value, 4)
        assert not {"retrain", "retrain_of", "attempts"} & set(row)
        assert ledger.get(key) == taken


class TestSchedule:
    """The jobs in flight: one row, written only if unchanged since read, beside the records."""

    def test_the_schedule_round_trips_and_a_stale_write_is_refused(self, ledger: TableLedger) -> None:
        keys = tuple(WorkKey.for_blob(BlobRef("incoming", name, "0x1")) for name in ("a.csv", "b.csv"))
        empty = ledger.schedule()
        assert (empty.jobs, empty.etag) == ({}, None)

        taken = datetime(2026, 12, 6, 5, 0, 1, 250_000, tzinfo=UTC)
        first = ledger.save_schedule(empty.with_job("autoretrain-job1", keys, taken))
        assert first is not None and ledger.schedule().jobs == {"autoretrain-job1": keys}
        assert ledger.schedule().since == {"autoretrain-job1": taken}, "when the job took its slot"
        assert ledger.save_schedule(empty.with_job("autoretrain-job2", keys[:1])) is None, "a second first write"
        assert ledger.save_schedule(first.without("autoretrain-job1")) is not None
        assert ledger.schedule().since == {}
        assert ledger.save_schedule(first) is None, "written from a stale read"
        assert ledger.schedule().jobs == {}

    def test_two_workers_taking_the_last_slot_at_once_one_wins(self, ledger: TableLedger) -> None:
        read = ledger.schedule()
        with ThreadPoolExecutor(8) as pool:
            written = list(pool.map(lambda n: ledger.save_schedule(read.with_job(f"autoretrain-j{n}", ())), range(8)))
        assert sum(w is not None for w in written) == 1
        assert len(ledger.schedule().jobs) == 1

    def test_the_schedule_is_no_record_and_records_are_found_by_job(self, ledger: TableLedger) -> None:
        blob = BlobRef("incoming", "w.csv", "0x9")
        key = WorkKey.for_blob(blob)
        record, _ = ledger.claim(blob, key, "ev-1", LEASE)
        record = ledger.move(record, Wait("d:1"))
        assert ledger.save_schedule(ledger.schedule().with_job("autoretrain-batch", (key,))) is not None
        assert [r.key for r in ledger.records()] == [key] and record.lease_until is None
        assert [r.state for r in ledger.records(LedgerState.WAITING)] == [LedgerState.WAITING]
        ledger.move(record, Submit("d:1", "autoretrain-batch"))
        assert [r.key for r in ledger.records(job="autoretrain-batch")] == [key]
        assert [r.key for r in ledger.records(LedgerState.SUBMITTED, job="autoretrain-batch")] == [key]
        assert list(ledger.records(LedgerState.DONE, job="autoretrain-batch")) == []


class TestAzureBlobStore:
    def test_reads_are_pinned_to_the_event_etag(self, store: AzureBlobStore, unique: str) -> None:
        ref = store.upload(f"in{unique}", "a.csv", b"x,y\n1,2\n")
        assert store.read_head(ref, 4) == b"x,y\n"
        store.upload(f"in{unique}", "a.csv", b"x,y\n3,4\n")
        with pytest.raises(BlobChangedError, match="was replaced or deleted before it was read"):
            store.read_head(ref, 4)

    def test_a_blob_that_does_not_exist_is_missing_not_replaced(self, store: AzureBlobStore, unique: str) -> None:
        """No blob of that name (a phantom event): BlobMissingError, which ingest records nothing for;
        a replaced one stays BlobChangedError (recorded as skipped)."""
        store.upload(f"in{unique}", "real.csv", b"x\n")
        with pytest.raises(BlobMissingError, match="no such blob"):
            store.read_head(BlobRef(f"in{unique}", "ghost.csv", "0x8DEADBEEF000001"), 4)
        replaced = store.upload(f"in{unique}", "a.csv", b"x\n")
        store.upload(f"in{unique}", "a.csv", b"y\n")
        with pytest.raises(BlobChangedError) as caught:
            store.read_head(replaced, 4)
        assert not isinstance(caught.value, BlobMissingError)

    def test_head_of_an_empty_blob_is_empty(self, store: AzureBlobStore, unique: str) -> None:
        """Zero-length uploads happen; their head is b'' (and the contract check quarantines it)."""
        ref = store.upload(f"in{unique}", "empty.csv", b"")
        assert store.read_head(ref, 100) == b""

    def test_copy_keeps_the_source_and_carries_metadata(self, store: AzureBlobStore, unique: str, azurite: str) -> None:
        source = store.upload(f"in{unique}", "dir/a.csv", b"x,y\n1,2\n")
        copy = store.copy_to(source, f"q{unique}", "k/dir/a.csv", {"reason": "column 'x' has 'é'\non line 2"})
        service = BlobServiceClient.from_connection_string(azurite)
        props = service.get_blob_client(f"q{unique}", "k/dir/a.csv").get_blob_properties()
        # Percent-encoded UTF-8 where not printable ASCII (it was 'has '?'?on line 2': the text was lost).
        assert props.metadata == {"reason": "column 'x' has '%C3%A9'%0Aon line 2", "source_etag": source.etag}
        assert unquote(props.metadata["reason"]) == "column 'x' has 'é'\non line 2"
        assert props.etag.strip('"') == copy.etag
        original = service.get_blob_client(f"in{unique}", "dir/a.csv")
        assert (original.download_blob().readall(), original.get_blob_properties().etag.strip('"')) == (
            b"x,y\n1,2\n", source.etag
        )

    def test_a_copy_of_the_bytes_in_hand_is_one_request_and_never_reads_the_source(
        self, unique: str, azurite: str
    ) -> None:
        """Ingest read the whole small file pinned to its eTag: the snapshot is one Put Blob of those
        bytes (If-None-Match: *), right even when the customer replaced the blob meanwhile; a second
        delivery's Put gets 409 and keeps the first copy."""
        sent: list[tuple[str, str, int]] = []
        service = BlobServiceClient.from_connection_string(azurite, **client_options(), raw_response_hook=lambda r: (
            sent.append((r.http_request.method, r.http_request.url.split("?")[0].split(f"/ds{unique}/")[-1],
                         r.http_response.status_code))))
        store = AzureBlobStore(service)
        first = b"x,y\n1,2\n"
        source = store.upload(f"in{unique}", "a.csv", first)
        store.upload(f"in{unique}", "a.csv", b"x,y\n3,4\n")  # replaced: `source` names a version that is gone
        store.upload(f"ds{unique}", "other.csv", b"")  # the container exists
        sent.clear()

        copy = store.copy_to(source, f"ds{unique}", "k/a.csv", {"work_key": "k"}, first)
        assert sent == [("PUT", "k/a.csv", 201)]
        props = service.get_blob_client(f"ds{unique}", "k/a.csv").get_blob_properties()
        assert (props.metadata, props.etag.strip('"')) == ({"work_key": "k", "source_etag": source.etag}, copy.etag)
        assert service.get_blob_client(f"ds{unique}", "k/a.csv").download_blob().readall() == first

        sent.clear()
        assert store.copy_to(source, f"ds{unique}", "k/a.csv", {"work_key": "k"}, first) == copy
        assert sent == [("PUT", "k/a.csv", 409), ("HEAD", "k/a.csv", 200)]

    def test_download_writes_exactly_that_version(self, store: AzureBlobStore, unique: str, tmp_path: Path) -> None:
        ref = store.upload(f"in{unique}", "a.csv", b"a" * 10_000)
        store.download_to(ref, tmp_path / "sub" / "a.csv")
        assert (tmp_path / "sub" / "a.csv").read_bytes() == b"a" * 10_000
        assert not list((tmp_path / "sub").glob("*.partial"))

    def test_concurrent_copies_of_one_version_keep_the_first(self, store: AzureBlobStore, unique: str) -> None:
        """Ten deliveries copying at once: one copy is written, all ten return it, none is overwritten."""
        source = store.upload(f"in{unique}", "a.csv", b"x,y\n" + b"1,2\n" * 50_000)
        with ThreadPoolExecutor(10) as pool:
            copies = list(pool.map(lambda _: store.copy_to(source, f"ds{unique}", "k/a.csv", {}), range(10)))
        assert len({c.etag for c in copies}) == 1

    def test_listing_goes_on_past_a_name_the_service_cannot_list(
        self, store: AzureBlobStore, unique: str, azurite: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Azurite answers 500 to a listing that holds a control character; the others are listed."""
        container = f"in{unique}"
        names = ["a.csv", "bad\x01name.csv", "b/c.csv", "z.csv", "é.csv"]
        for name in names:
            store.upload(container, name, b"x\n")
        listed = sorted(b.ref.name for b in store.list_blobs(container))
        assert listed == ["a.csv", "b/c.csv", "z.csv", "é.csv"]
        splits = [r.getMessage() for r in caplog.records if "storage.listing_split" in r.getMessage()]
        assert [m.split("prefix=")[1].split(" ")[0] for m in splits] == ["''", "'b'", "'ba'", "'bad'"]
        [told] = [r.getMessage() for r in caplog.records if "storage.unlistable" in r.getMessage()]
        assert "prefix='bad'" in told and "autoretrain replay '<name>'" in told
        assert store.unlistable(container) == ("bad",)

    def test_a_name_the_service_cannot_list_is_told_once_not_on_every_listing(
        self, store: AzureBlobStore, unique: str, azurite: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The local Event Grid lists every second: the warnings come with the first listing only,
        and a listing after the first does not wait for a retry of the failure it expects."""
        container = f"in{unique}"
        for name in ("a.csv", "ctl\x01name.csv"):
            store.upload(container, name, b"x\n")
        requests: list[str] = []  # each attempt, retries included
        hooked = AzureBlobStore(BlobServiceClient.from_connection_string(
            azurite, **client_options(), raw_response_hook=lambda r: requests.append(r.http_request.url)))
        list(hooked.list_blobs(container))
        first = {url for url in requests if "comp=list" in url}  # the listing's own (no container create)
        caplog.clear()

        for _ in range(3):
            requests.clear()
            assert [b.ref.name for b in hooked.list_blobs(container)] == ["a.csv"]
            assert len(requests) == len(set(requests)), "a request of the listing was retried"
            assert set(requests) == first

        assert [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and r.name.startswith("autoretrain")] == []
        assert hooked.unlistable(container) == ("ctl",)
