"""The local Event Grid: BlobCreated events from a real Azurite container, and webhook delivery."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient, ContentSettings

from autoretrain.local.eventgrid import (
    BlobWatcher,
    EventGridDelivery,
    eventgrid_webhook_url,
    poke,
    publish_to_function,
)
from autoretrain.settings import LOCAL_STORAGE_TOPIC

pytestmark = pytest.mark.integration

FAST = (0.01, 0.02, 0.03)


@dataclass
class Endpoint:
    """A webhook that answers the scripted statuses in turn (then 200) and records every request."""

    statuses: list[int]
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint(statuses=[])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def delivery(tmp_path: Path) -> Iterator[EventGridDelivery]:
    with EventGridDelivery(tmp_path, retry_schedule=FAST, timeout=5) as running:
        yield running


EVENT = {
    "topic": LOCAL_STORAGE_TOPIC,
    "subject": "/blobServices/default/containers/incoming/blobs/march.csv",
    "eventType": "Microsoft.Storage.BlobCreated",
    "eventTime": "2026-11-25T15:04:23.0000000Z",
    "id": "6f1b2c4e-0000-4000-8000-000000000001",
    "data": {"api": "PutBlob", "eTag": "0x8DE0000000000001", "contentLength": 12},
    "dataVersion": "",
    "metadataVersion": "1",
}
DEAD_LETTER_KEYS = {
    "deadLetterReason", "deliveryAttempts", "lastDeliveryOutcome", "lastHttpStatusCode",
    "publishTime", "lastDeliveryAttemptTime",
}


class TestDelivery:
    def test_each_event_settles_once_delivered_or_dead_lettered(
        self, endpoint: Endpoint, delivery: EventGridDelivery
    ) -> None:
        """on_settled hears True after the retries succeed, False when the event is dead-lettered."""
        endpoint.statuses = [500, 400]
        settled: list[tuple[str, bool]] = []
        delivery.publish(EVENT, f"{endpoint.url}/a", lambda ok: settled.append(("a", ok)))
        assert delivery.drain(5)
        delivery.publish(EVENT, f"{endpoint.url}/b", lambda ok: settled.append(("b", ok)))
        assert delivery.drain(5)
        assert settled == [("a", False), ("b", True)]

    def test_delivers_once_after_transient_failures(
        self, endpoint: Endpoint, delivery: EventGridDelivery
    ) -> None:
        """Two 500s then 200: three attempts, each a one-event array with Event Grid's headers."""
        endpoint.statuses = [500, 503]

        delivery.publish(EVENT, f"{endpoint.url}/hook")

        assert delivery.drain(5)
        assert (delivery.delivered, delivery.dead_lettered) == (1, [])
        sent = [(path, h["aeg-event-type"], h["content-type"], body) for path, h, body in endpoint.requests]
        assert sent == [("/hook", "Notification", "application/json", [EVENT])] * 3

    def test_always_failing_endpoint_dead_letters_after_the_last_attempt(
        self, endpoint: Endpoint, delivery: EventGridDelivery, tmp_path: Path
    ) -> None:
        """Four 500s with a three-step schedule: four attempts, then a dead-letter record."""
        endpoint.statuses = [500] * 10

        delivery.publish(EVENT, f"{endpoint.url}/hook")

        assert delivery.drain(5)
        assert len(endpoint.requests) == 4
        [path] = delivery.dead_lettered
        assert path.parent == tmp_path / "deadletter"
        record = json.loads(path.read_text())
        assert set(record) == set(EVENT) | DEAD_LETTER_KEYS
        assert {k: record[k] for k in EVENT} == EVENT
        assert {k: record[k] for k in ("deadLetterReason", "deliveryAttempts", "lastDeliveryOutcome",
                                       "lastHttpStatusCode")} == {
            "deadLetterReason": "MaxDeliveryAttemptsExceeded", "deliveryAttempts": 4,
            "lastDeliveryOutcome": "InternalServerError", "lastHttpStatusCode": 500,
        }
        assert record["publishTime"] <= record["lastDeliveryAttemptTime"]

    def test_bad_request_dead_letters_at_once(
        self, endpoint: Endpoint, delivery: EventGridDelivery
    ) -> None:
        """A 400 is not retried: one attempt, dead-lettered with the status."""
        endpoint.statuses = [400]

        delivery.publish(EVENT, f"{endpoint.url}/hook")

        assert delivery.drain(5)
        assert len(endpoint.requests) == 1
        record = json.loads(delivery.dead_lettered[0].read_text())
        assert (record["deliveryAttempts"], record["lastDeliveryOutcome"], record["lastHttpStatusCode"]) == (
            1, "BadRequest", 400
        )

    def test_unreachable_endpoint_is_retried_then_dead_lettered(self, tmp_path: Path) -> None:
        """No listener at all counts as a failed attempt (status 0), like a timeout."""
        with EventGridDelivery(tmp_path, retry_schedule=(0.01,), timeout=1) as delivery:
            delivery.publish(EVENT, "http://127.0.0.1:9/hook")
            assert delivery.drain(5)
            record = json.loads(delivery.dead_lettered[0].read_text())

        assert (record["deliveryAttempts"], record["lastDeliveryOutcome"], record["lastHttpStatusCode"]) == (
            2, "Aborted", 0
        )

    def test_a_retrying_event_does_not_hold_up_others(
        self, endpoint: Endpoint, tmp_path: Path
    ) -> None:
        """While one event waits out a long backoff, a later event is delivered at once (one sender)."""
        endpoint.statuses = [500]
        with EventGridDelivery(tmp_path, retry_schedule=(0.5,), timeout=5, max_in_flight=1) as delivery:
            delivery.publish(EVENT, f"{endpoint.url}/slow")
            delivery.publish({**EVENT, "id": "second"}, f"{endpoint.url}/fast")
            assert delivery.drain(0.3) is False
            assert [path for path, _, _ in endpoint.requests] == ["/slow", "/fast"]
            assert delivery.drain(5)

        assert [path for path, _, _ in endpoint.requests] == ["/slow", "/fast", "/slow"]

    def test_publish_to_function_uses_the_hosts_webhook_url(
        self, endpoint: Endpoint, delivery: EventGridDelivery
    ) -> None:
        """The helper posts to /runtime/webhooks/eventgrid?functionName=NAME."""
        publish_to_function(delivery, endpoint.url + "/", "completion", EVENT)

        assert delivery.drain(5)
        assert [path for path, _, _ in endpoint.requests] == [
            "/runtime/webhooks/eventgrid?functionName=completion"
        ]
        assert eventgrid_webhook_url("http://h:7071", "ingest") == (
            "http://h:7071/runtime/webhooks/eventgrid?functionName=ingest"
        )


@dataclass
class Published:
    """A stand-in delivery that records what the watcher publishes; it settles each event at once
    (as delivered) unless `settle` is False, which is a delivery still waiting for a retry."""

    events: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    settle: bool = True

    def publish(self, event: dict[str, Any], url: str, on_settled: Any = None) -> None:
        self.events.append((event, url))
        if self.settle and on_settled is not None:
            on_settled(True)


@pytest.fixture
def container(azurite: str, unique: str) -> Iterator[ContainerClient]:
    client = ContainerClient.from_connection_string(azurite, f"watch{unique}")
    yield client
    client.delete_container()


def watcher(azurite: str, container: ContainerClient, published: Published, home: Path) -> BlobWatcher:
    return BlobWatcher(
        azurite, container.container_name, published, "http://127.0.0.1:7071/hook", home  # type: ignore[arg-type]
    )


def expected_event(container: ContainerClient, name: str, event: dict[str, Any]) -> dict[str, Any]:
    """The docs' BlobCreated shape with this blob's real values (generated ids taken from `event`)."""
    props = container.get_blob_client(name).get_blob_properties()
    data = event["data"]
    return {
        "topic": LOCAL_STORAGE_TOPIC,
        "subject": f"/blobServices/default/containers/{container.container_name}/blobs/{name}",
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": props.last_modified.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z",
        "id": event["id"],
        "data": {
            "api": "PutBlob",
            "clientRequestId": data["clientRequestId"],
            "requestId": data["requestId"],
            "eTag": props.etag.strip('"'),
            "contentType": props.content_settings.content_type,
            "contentLength": props.size,
            "blobType": "BlockBlob",
            "url": f"http://127.0.0.1:10000/devstoreaccount1/{container.container_name}/"
            + name.replace(" ", "%20"),
            "sequencer": data["sequencer"],
            "storageDiagnostics": {"batchId": data["storageDiagnostics"]["batchId"]},
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


class TestBlobWatcher:
    def test_each_blob_is_announced_once_with_its_real_properties(
        self, azurite: str, container: ContainerClient, tmp_path: Path
    ) -> None:
        """Two uploads, two BlobCreated events matching the blobs; a second poll announces nothing."""
        published = Published()
        watch = watcher(azurite, container, published, tmp_path)
        watch.poll_once()  # creates the missing container
        container.upload_blob("march.csv", b"a,b\n1,2\n",
                              content_settings=ContentSettings(content_type="text/csv"))
        container.upload_blob("drops/april 2026.csv", b"")

        events = watch.poll_once()

        assert [e for e, _ in published.events] == events
        assert {url for _, url in published.events} == {"http://127.0.0.1:7071/hook"}
        by_subject = {e["subject"].rsplit("/blobs/", 1)[1]: e for e in events}
        assert sorted(by_subject) == ["drops/april 2026.csv", "march.csv"]
        for name, event in by_subject.items():
            assert event == expected_event(container, name, event)
        assert all(len(e["data"]["sequencer"]) == 32 for e in events)
        assert len({e["id"] for e in events}) == 2
        assert watch.poll_once() == []

    def test_overwrite_announces_the_new_etag_with_a_later_sequencer(
        self, azurite: str, container: ContainerClient, tmp_path: Path
    ) -> None:
        """Replacing a blob is a new version: one new event with the new eTag."""
        published = Published()
        watch = watcher(azurite, container, published, tmp_path)
        watch.poll_once()
        container.upload_blob("march.csv", b"v1")
        [first] = watch.poll_once()
        container.upload_blob("march.csv", b"version 2", overwrite=True)

        [second] = watch.poll_once()

        assert second == expected_event(container, "march.csv", second)
        assert second["data"]["eTag"] != first["data"]["eTag"]
        assert second["data"]["sequencer"] > first["data"]["sequencer"]

    def test_state_survives_a_new_watcher(
        self, azurite: str, container: ContainerClient, tmp_path: Path
    ) -> None:
        """A restarted watcher announces only what changed since, from its state file."""
        watch = watcher(azurite, container, Published(), tmp_path)
        watch.poll_once()
        container.upload_blob("march.csv", b"v1")
        watch.poll_once()
        container.upload_blob("april.csv", b"v1")

        restarted = Published()
        events = watcher(azurite, container, restarted, tmp_path).poll_once()

        assert [e["subject"].rsplit("/", 1)[1] for e in events] == ["april.csv"]
        state = json.loads(watch.state_path.read_text())
        assert state["emitted"] == {
            name: container.get_blob_client(name).get_blob_properties().etag.strip('"')
            for name in ("april.csv", "march.csv")
        }

    def test_unsettled_events_are_announced_again_after_a_restart(
        self, azurite: str, container: ContainerClient, tmp_path: Path
    ) -> None:
        """An event still retrying when the process stops is not lost: the next watcher sends it."""
        pending = Published(settle=False)
        watch = watcher(azurite, container, pending, tmp_path)
        watch.poll_once()
        container.upload_blob("march.csv", b"v1")
        assert len(watch.poll_once()) == 1
        assert watch.poll_once() == []  # in flight: not published twice by the same watcher

        again = watcher(azurite, container, Published(), tmp_path).poll_once()

        assert [e["subject"].rsplit("/", 1)[1] for e in again] == ["march.csv"]
        assert watcher(azurite, container, Published(), tmp_path).poll_once() == []

    def test_lost_state_announces_again(
        self, azurite: str, container: ContainerClient, tmp_path: Path
    ) -> None:
        """Without its state file the watcher announces every blob again (at least once)."""
        watch = watcher(azurite, container, Published(), tmp_path)
        watch.poll_once()
        container.upload_blob("march.csv", b"v1")
        watch.poll_once()
        watch.state_path.unlink()

        again = watcher(azurite, container, Published(), tmp_path).poll_once()

        assert [e["subject"].rsplit("/", 1)[1] for e in again] == ["march.csv"]

    def test_background_watcher_delivers_to_a_webhook(
        self, azurite: str, container: ContainerClient, endpoint: Endpoint,
        delivery: EventGridDelivery, tmp_path: Path
    ) -> None:
        """start(): an upload reaches the webhook as a one-event Notification array."""
        container.create_container()
        with BlobWatcher(azurite, container.container_name, delivery, f"{endpoint.url}/hook", tmp_path,
                         interval=0.05):
            container.upload_blob("march.csv", b"v1")
            for _ in range(100):
                if endpoint.requests:
                    break
                threading.Event().wait(0.05)

        assert delivery.drain(5)
        [(path, headers, body)] = endpoint.requests
        assert (path, headers["aeg-event-type"], len(body)) == ("/hook", "Notification", 1)
        assert body[0] == expected_event(container, "march.csv", body[0])

    def test_a_poked_watcher_looks_at_once_instead_of_at_its_next_poll(
        self, azurite: str, container: ContainerClient, endpoint: Endpoint,
        delivery: EventGridDelivery, tmp_path: Path
    ) -> None:
        """`poke` (what `autoretrain drop` does after its upload, from any process on the same home):
        a watcher polling every 30 s delivers the upload well before then; without it, not yet."""
        container.create_container()
        with BlobWatcher(azurite, container.container_name, delivery, f"{endpoint.url}/hook", tmp_path,
                         interval=30):
            threading.Event().wait(0.5)  # its first poll, of an empty container, is over
            container.upload_blob("march.csv", b"v1")
            threading.Event().wait(1.0)
            assert not endpoint.requests, "unpoked, the upload waits for the next poll"
            poked = time.monotonic()
            poke(tmp_path, container.container_name)
            while not endpoint.requests and time.monotonic() - poked < 10:
                threading.Event().wait(0.02)
            announced = time.monotonic() - poked
            assert delivery.drain(5)

        assert [body[0]["subject"].rsplit("/", 1)[1] for _, _, body in endpoint.requests] == ["march.csv"]
        assert announced < 2, f"announced {announced:.2f} s after the poke"

