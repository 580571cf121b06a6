"""What a hostile or confused sender does to the running stack, and what is left afterwards:
phantom events leave no trace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from localstack import Loop, blob_created, post_event, start

from autoretrain.domain import BlobRef, WorkKey
from autoretrain.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def running(tmp_path: Path, unique: str, azurite: str) -> Iterator[Loop]:
    yield from start(tmp_path, unique, azurite, {})


def test_an_event_for_a_blob_that_never_existed_answers_200_and_leaves_no_record(running: Loop) -> None:
    """A BlobCreated for `incoming/ghost.csv` that the store never had: 200 (Event Grid must not
    retry it), one WARNING `ingest.ignored` per delivery, and no ledger record, even delivered twice
    and with a subject that holds a newline."""
    ghosts = [BlobRef(running.incoming, "ghost.csv", "0x8DEADBEEF000001"),
              BlobRef(running.incoming, "two\nlines.csv", "0x8DEADBEEF000002")]

    answers = [post_event(running.url, "ingest", blob_created(ghost, f"ghost-{i}-{n}"))
               for i, ghost in enumerate(ghosts) for n in range(2)]

    assert answers == [200, 200, 200, 200]
    assert wait_until(lambda: running.log.read_text().count("ingest.ignored") >= 4, 30), running.log.read_text()
    assert [running.ledger.get(WorkKey.for_blob(g)) for g in ghosts] == [None, None]
    assert "ingest.skipped" not in running.log.read_text()


def test_a_quarantine_reason_with_accents_reads_back_exactly(running: Loop, azurite: str) -> None:
    """Blob metadata is ASCII: the quarantine copy's reason is percent-encoded UTF-8, so it reads
    back (urllib.parse.unquote) as exactly the ledger's reason, accents included (not `donn?es`)."""
    from urllib.parse import unquote

    from azure.storage.blob import BlobServiceClient

    ref = running.blobs.upload(running.incoming, "données/été 2026.csv", b"alcohol,cultivar\n13.2,class_0\n")
    record = running.wait_final([WorkKey.for_blob(ref)], timeout=120)[WorkKey.for_blob(ref)]

    assert record.reason is not None and "données/été 2026.csv" in record.reason
    copy = BlobServiceClient.from_connection_string(azurite).get_blob_client(
        running.quarantine, ref.copy_name(WorkKey.for_blob(ref)))
    stored = copy.get_blob_properties().metadata["reason"]
    assert stored.isascii() and unquote(stored) == record.reason
