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
