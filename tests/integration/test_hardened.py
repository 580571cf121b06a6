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


def _post(url: str, body: bytes) -> int:
    """POST raw bytes to the ingest webhook; the HTTP status, whatever it is."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url}/runtime/webhooks/eventgrid?functionName=ingest", data=body, method="POST",
        headers={"Content-Type": "application/json", "aeg-event-type": "Notification"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_garbage_and_oversized_bodies_are_refused_with_one_line_each(running: Loop) -> None:
    """Malformed JSON and garbage answer 400, a body over Event Grid's 1 MB answers 413 before it is
    read; each is one WARNING line `host.refused` (before, a 400 left no line at all)."""
    from autoretrain.local.webhook import MAX_BODY

    statuses = [_post(running.url, b"{not json"), _post(running.url, b"\x00\xff garbage"),
                _post(running.url, b"[" + b" " * (MAX_BODY + 10) + b"]")]

    assert statuses == [400, 400, 413]
    refused = [line for line in running.log.read_text().splitlines() if "host.refused" in line]
    assert len(refused) == 3 and "status=413" in refused[2] and all("status=400" in r for r in refused[:2])


def test_a_hundred_deliveries_at_once_are_all_answered(running: Loop) -> None:
    """A burst of 100 concurrent deliveries (Event Grid's retries, `replay --concurrency`): every one is
    answered, none reset (the host listened with a backlog of 5)."""
    from concurrent.futures import ThreadPoolExecutor

    ghost = BlobRef(running.incoming, "burst.csv", "0x8DEADBEEF000003")
    with ThreadPoolExecutor(100) as pool:
        statuses = list(pool.map(lambda i: post_event(running.url, "ingest", blob_created(ghost, f"burst-{i}")),
                                 range(100)))

    assert statuses == [200] * 100
    assert running.ledger.get(WorkKey.for_blob(ghost)) is None


def test_a_misspelt_contract_key_stops_up_in_one_line_before_anything_starts(
    tmp_path: Path, unique: str, azurite: str
) -> None:
    """`traning:` for `training:` was accepted (the window silently `all`); now `up` stops at once,
    naming the key and the keys allowed there, before Azurite or the host start."""
    from localstack import cli, free_port, stack_env

    from autoretrain.settings import PROJECT_ROOT

    contract = tmp_path / "contract.yaml"
    contract.write_text((PROJECT_ROOT / "ml" / "contract.yaml").read_text() + "traning: {window: last, versions: 2}\n")
    env = stack_env(tmp_path, unique, azurite, free_port(), {"AUTORETRAIN_CONTRACT": str(contract)})

    done = cli(env, "up", cwd=tmp_path, timeout=60)

    assert done.returncode != 0
    [line] = [line for line in done.stderr.splitlines() if line.strip()]
    assert "unknown key(s) traning; the keys allowed at the top level are target, task" in line
    assert "azurite" not in done.stdout.lower() and "listening" not in done.stdout


def test_status_lists_the_prefixes_under_which_a_name_cannot_be_listed(
    tmp_path: Path, unique: str, azurite: str
) -> None:
    """Azurite answers 500 to a listing that holds `ctl\\x01name.csv`: no listing (nor reconcile)
    finds it, so `status` names its prefix, escaped, with the way in (`autoretrain replay <name>`);
    `--json` keeps stdout the list of records and tells it on stderr."""
    import json

    from azure.storage.blob import BlobServiceClient
    from localstack import cli, free_port, stack_env

    env = stack_env(tmp_path, unique, azurite, free_port(), {})
    container = BlobServiceClient.from_connection_string(azurite).create_container(f"in{unique}")
    for name in ("a.csv", "ctl\x01name.csv"):
        container.upload_blob(name, b"alcohol,cultivar\n13.2,class_0\n")

    text = cli(env, "status", cwd=tmp_path, timeout=120)
    data = cli(env, "status", "--json", cwd=tmp_path, timeout=120)

    assert text.returncode == 0, text.stderr
    assert "No blob versions in the ledger yet" in text.stdout
    [heading] = [line for line in text.stdout.splitlines() if "cannot be listed" in line]
    assert f"'in{unique}'" in heading and "Azurite/Blob Storage refuse them" in heading
    [told] = [line for line in text.stdout.splitlines() if "prefix" in line]
    assert told.startswith("  prefix 'ctl': run `autoretrain replay <name>` with the full name"), told
    assert "\x01" not in text.stdout and "storage." not in text.stderr, text.stderr
    assert data.returncode == 0 and json.loads(data.stdout) == []
    assert "prefix 'ctl': run `autoretrain replay <name>`" in data.stderr
