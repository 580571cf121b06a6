"""The Table ledger and the Blob store on Azurite: the real Azure SDKs against a real service."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from autoretrain.domain import BlobRef, LedgerState, Metrics, WorkKey
from autoretrain.errors import BlobChangedError, LedgerError
from autoretrain.ledger import TableLedger
from autoretrain.storage import AzureBlobStore

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(azurite: str, unique: str) -> TableLedger:
    return TableLedger.connect(TableServiceClient.from_connection_string(azurite), f"ledger{unique}")


@pytest.fixture
def store(azurite: str) -> AzureBlobStore:
    return AzureBlobStore(BlobServiceClient.from_connection_string(azurite))


class TestTableLedger:
    def test_claim_is_atomic_second_claim_returns_the_first(self, ledger: TableLedger) -> None:
        blob = BlobRef("incoming", "a.csv", "0x1")
        key = WorkKey.for_blob(blob)
        _, created = ledger.claim(blob, key, "ev-1")
        second, created_again = ledger.claim(blob, key, "ev-2")
        assert (created, created_again) == (True, False)
        assert (second.event_id, second.state, second.blob) == ("ev-1", LedgerState.CLAIMED, blob)

    def test_advance_needs_the_record_as_read(self, ledger: TableLedger) -> None:
        """Two deliveries that both read the claim: only the first advance wins."""
        blob = BlobRef("incoming", "a.csv", "0x2")
        record, _ = ledger.claim(blob, WorkKey.for_blob(blob), "ev-1")
        moved = ledger.advance(record, LedgerState.SUBMITTED, data_version="d:1", job="job-1")
        with pytest.raises(LedgerError, match="changed since it was read"):
            ledger.advance(record, LedgerState.SUBMITTED, job="job-2")
        stored = ledger.get(record.key)
        assert stored is not None
        assert (stored.state, stored.job, stored.data_version, stored.etag) == (
            LedgerState.SUBMITTED, "job-1", "d:1", moved.etag
        )

    def test_only_allowed_moves(self, ledger: TableLedger) -> None:
        blob = BlobRef("incoming", "b.csv", "0x3")
        record, _ = ledger.claim(blob, WorkKey.for_blob(blob), "ev-1")
        done = ledger.advance(record, LedgerState.QUARANTINED, reason="bad")
        with pytest.raises(LedgerError, match="cannot move from quarantined to submitted"):
            ledger.advance(done, LedgerState.SUBMITTED)

    def test_metrics_and_promotion_round_trip_and_list(self, ledger: TableLedger) -> None:
        blob = BlobRef("incoming", "c.csv", "0x4")
        record, _ = ledger.claim(blob, WorkKey.for_blob(blob), "ev-1")
        record = ledger.advance(record, LedgerState.SUBMITTED, job="j")
        metrics = Metrics({"r2": 0.5, "rmse": 3.25}, primary="rmse", greater_is_better=False)
        ledger.advance(record, LedgerState.DONE, model_version="m:1", metrics=metrics, promoted=False)
        [listed] = list(ledger.records())
        assert (listed.state, listed.metrics, listed.promoted, listed.model_version, listed.job) == (
            LedgerState.DONE, metrics, False, "m:1", "j"
        )


class TestAzureBlobStore:
    def test_reads_are_pinned_to_the_event_etag(self, store: AzureBlobStore, unique: str) -> None:
        ref = store.upload(f"in{unique}", "a.csv", b"x,y\n1,2\n")
        assert store.read_head(ref, 4) == b"x,y\n"
        store.upload(f"in{unique}", "a.csv", b"x,y\n3,4\n")
        with pytest.raises(BlobChangedError, match="was replaced or deleted before it was read"):
            store.read_head(ref, 4)

    def test_head_of_an_empty_blob_is_empty(self, store: AzureBlobStore, unique: str) -> None:
        """Zero-length uploads happen; their head is b'' (and the contract check quarantines it)."""
        ref = store.upload(f"in{unique}", "empty.csv", b"")
        assert store.read_head(ref, 100) == b""

    def test_copy_keeps_the_source_and_carries_metadata(self, store: AzureBlobStore, unique: str, azurite: str) -> None:
        source = store.upload(f"in{unique}", "dir/a.csv", b"x,y\n1,2\n")
        copy = store.copy_to(source, f"q{unique}", "k/dir/a.csv", {"reason": "column 'x' has 'é'\non line 2"})
        service = BlobServiceClient.from_connection_string(azurite)
        props = service.get_blob_client(f"q{unique}", "k/dir/a.csv").get_blob_properties()
        assert props.metadata == {"reason": "column 'x' has '?'?on line 2"}
        assert props.etag.strip('"') == copy.etag
        original = service.get_blob_client(f"in{unique}", "dir/a.csv")
        assert (original.download_blob().readall(), original.get_blob_properties().etag.strip('"')) == (
            b"x,y\n1,2\n", source.etag
        )

    def test_download_writes_exactly_that_version(self, store: AzureBlobStore, unique: str, tmp_path: Path) -> None:
        ref = store.upload(f"in{unique}", "a.csv", b"a" * 10_000)
        store.download_to(ref, tmp_path / "sub" / "a.csv")
        assert (tmp_path / "sub" / "a.csv").read_bytes() == b"a" * 10_000
        assert not list((tmp_path / "sub").glob("*.partial"))
