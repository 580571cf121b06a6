"""The local Functions host over HTTP, with a real FunctionApp built here (not the project's app)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
import pytest
import requests
from azure.functions.timer import TimerRequest
from samples import BLOB_CREATED_EVENTGRID

from autoretrain.local.host import LocalHost

pytestmark = pytest.mark.integration

# The docs' sample BlobCreated event (event-schema-blob-storage.md), and a second one.
BLOB_EVENT: dict[str, Any] = BLOB_CREATED_EVENTGRID[0]
SECOND_EVENT: dict[str, Any] = {
    **BLOB_EVENT,
    "id": "4c2359fe-001e-00ba-0e04-58586806d298",
    "subject": "/blobServices/default/containers/test-container/blobs/other.csv",
    "data": {**BLOB_EVENT["data"], "contentLength": 7},
}
CLOUD_EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "caee971c-3ca0-4254-8f99-1395b394588e",
    "source": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/w",
    "subject": "experiments/e1/runs/r1",
    "type": "Microsoft.MachineLearningServices.RunCompleted",
    "time": "2026-11-25T15:04:23.1234567Z",
    "datacontenttype": "application/json",
    "data": {"runId": "r1", "experimentName": "autoretrain"},
}


@dataclass
class Recorder:
    """What the test functions saw, appended from the host's request threads."""

    events: list[Any] = field(default_factory=list)
    timers: list[func.TimerRequest] = field(default_factory=list)
    timer_ran: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def host(recorder: Recorder) -> Iterator[LocalHost]:
    bp = func.Blueprint()  # type: ignore[no-untyped-call]

    @bp.function_name("record")
    @bp.event_grid_trigger(arg_name="event")
    def record(event: func.EventGridEvent) -> None:
        logging.info("recording %s", event.id)
        recorder.events.append(event)

    @bp.function_name("explode")
    @bp.event_grid_trigger(arg_name="event")
    def explode(event: func.EventGridEvent) -> None:
        raise RuntimeError(f"cannot handle {event.id}")

    @bp.function_name("arecord")
    @bp.event_grid_trigger(arg_name="event")
    async def arecord(event: func.EventGridEvent) -> None:
        recorder.events.append(event)

    # New Year at midnight: never during a test run, so only the admin endpoint runs it.
    @bp.function_name("tick")
    @bp.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *")
    def tick(timer: func.TimerRequest) -> None:
        recorder.timers.append(timer)
        recorder.timer_ran.set()

    app = func.FunctionApp()
    app.register_functions(bp)
    with LocalHost(app, port=0) as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # never through a proxy: the host is on 127.0.0.1
    yield session
    session.close()


def webhook(host: LocalHost, name: str) -> str:
    return f"{host.url}/runtime/webhooks/eventgrid?functionName={name}"


NOTIFY = {"aeg-event-type": "Notification", "Content-Type": "application/json"}


def seen(event: Any) -> dict[str, Any]:
    """The parts of a decoded event the functions use, as one comparable value."""
    if isinstance(event, func.EventGridEvent):
        return {
            "kind": "EventGridEvent", "id": event.id, "topic": event.topic, "subject": event.subject,
            "eventType": event.event_type, "eventTime": event.event_time, "data": event.get_json(),
            "dataVersion": event.data_version,
        }
    return {
        "kind": type(event).__name__, "id": event.id, "source": event.source, "subject": event.subject,
        "type": event.type, "time": event.time, "data": event.get_json(),
    }


class TestEventGridWebhook:
    def test_array_of_two_events_calls_the_function_once_per_event(
        self, host: LocalHost, http: requests.Session, recorder: Recorder
    ) -> None:
        """An Event Grid array of two events answers 200 and the function sees each once, decoded."""
        answer = http.post(webhook(host, "record"), json=[BLOB_EVENT, SECOND_EVENT], headers=NOTIFY)

        assert answer.status_code == 200
        assert [seen(e) for e in recorder.events] == [
            {
                "kind": "EventGridEvent", "id": event["id"], "topic": event["topic"],
                "subject": event["subject"], "eventType": "Microsoft.Storage.BlobCreated",
                "eventTime": datetime(2017, 6, 26, 18, 41, 0, 958410, tzinfo=UTC),
                "data": event["data"], "dataVersion": "",
            }
            for event in (BLOB_EVENT, SECOND_EVENT)
        ]

    def test_async_function_is_awaited(
        self, host: LocalHost, http: requests.Session, recorder: Recorder
    ) -> None:
        """An async def function runs to completion before the host answers."""
        answer = http.post(webhook(host, "arecord"), json=[BLOB_EVENT], headers=NOTIFY)

        assert (answer.status_code, [e.id for e in recorder.events]) == (200, [BLOB_EVENT["id"]])

    @pytest.mark.parametrize(
        ("content_type", "body"),
        [
            ("application/cloudevents+json", CLOUD_EVENT),
            ("application/cloudevents-batch+json", [CLOUD_EVENT]),
            ("application/json", CLOUD_EVENT),
        ],
    )
    def test_cloud_event_is_decoded_by_the_library(
        self, host: LocalHost, http: requests.Session, recorder: Recorder, content_type: str, body: Any
    ) -> None:
        """A CloudEvents 1.0 event (single or batch) reaches the function as func.CloudEvent."""
        answer = http.post(
            webhook(host, "record"), data=json.dumps(body), headers={"Content-Type": content_type}
        )

        assert answer.status_code == 200
        assert [seen(e) for e in recorder.events] == [
            {
                "kind": "CloudEvent", "id": CLOUD_EVENT["id"], "source": CLOUD_EVENT["source"],
                "subject": "experiments/e1/runs/r1", "type": "Microsoft.MachineLearningServices.RunCompleted",
                "time": datetime(2026, 11, 25, 15, 4, 23, 123456, tzinfo=UTC), "data": CLOUD_EVENT["data"],
            }
        ]

    def test_subscription_validation_echoes_the_code(
        self, host: LocalHost, http: requests.Session, recorder: Recorder
    ) -> None:
        """The validation handshake answers the code and does not call the function."""
        validation: dict[str, Any] = {
            "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
            "topic": "/subscriptions/s",
            "subject": "",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": "2018-01-25T22:12:19.4556811Z",
            "metadataVersion": "1",
            "dataVersion": "1",
        }
        answer = http.post(
            webhook(host, "record"), json=[validation], headers={"aeg-event-type": "SubscriptionValidation"}
        )

        assert (answer.status_code, answer.json()) == (
            200, {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
        )
        assert recorder.events == []

    def test_cloudevents_options_validation_allows_the_origin(
        self, host: LocalHost, http: requests.Session
    ) -> None:
        """OPTIONS with WebHook-Request-Origin answers WebHook-Allowed-Origin with that origin."""
        answer = http.options(
            webhook(host, "record"), headers={"WebHook-Request-Origin": "eventemitter.example.com"}
        )

        assert (answer.status_code, answer.headers["WebHook-Allowed-Origin"]) == (
            200, "eventemitter.example.com"
        )

    def test_failing_function_answers_500_so_the_sender_retries(
        self, host: LocalHost, http: requests.Session, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An exception answers 500 and is logged with its traceback as a Failed execution."""
        with caplog.at_level(logging.INFO, logger="autoretrain.host"):
            answer = http.post(webhook(host, "explode"), json=[BLOB_EVENT], headers=NOTIFY)

        assert (answer.status_code, answer.json()) == (
            500, {"error": f"function 'explode' failed on event '{BLOB_EVENT['id']}'"}
        )
        messages = [r.getMessage() for r in caplog.records if r.name == "autoretrain.host"]
        assert messages[0].startswith("Executing 'Functions.explode' (Reason='EventGrid trigger fired at ")
        assert messages[1].startswith("Executed 'Functions.explode' (Failed, Id=")
        failure = [r for r in caplog.records if r.getMessage().startswith("Exception while executing")]
        assert failure[0].exc_info is not None
        assert failure[0].getMessage() == (
            "Exception while executing function: Functions.explode. "
            f"RuntimeError: cannot handle {BLOB_EVENT['id']}"
        )

    def test_success_is_logged_in_the_host_shape(
        self, host: LocalHost, http: requests.Session, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Executing / the function's own line / Executed (Succeeded ...) with one invocation id."""
        with caplog.at_level(logging.INFO):
            http.post(webhook(host, "record"), json=[BLOB_EVENT], headers=NOTIFY)

        lines = [r.getMessage() for r in caplog.records if r.name in ("autoretrain.host", "root")]
        invocation = lines[0].split("Id=")[1].rstrip(")")
        assert lines[0].startswith("Executing 'Functions.record' (Reason='EventGrid trigger fired at ")
        assert lines[1] == f"recording {BLOB_EVENT['id']}"
        assert lines[2].startswith(f"Executed 'Functions.record' (Succeeded, Id={invocation}, Duration=")
        assert lines[2].endswith("ms)")

    @pytest.mark.parametrize(
        ("name", "body", "status", "error"),
        [
            ("nosuch", [BLOB_EVENT], 404, "function 'nosuch' is not in this app"),
            ("tick", [BLOB_EVENT], 400, "function 'tick' has a timerTrigger, not an eventGridTrigger"),
            ("record", "[{not json", 400, "the body is not JSON: "),
            ("record", "[]", 400, "the body must be an event object or a non-empty array of them"),
        ],
    )
    def test_bad_requests_answer_one_line_json_errors(
        self,
        host: LocalHost,
        http: requests.Session,
        recorder: Recorder,
        name: str,
        body: Any,
        status: int,
        error: str,
    ) -> None:
        """Unknown function 404, wrong trigger and malformed bodies 400, none reaches a function."""
        data = body if isinstance(body, str) else json.dumps(body)
        answer = http.post(webhook(host, name), data=data, headers=NOTIFY)

        assert answer.status_code == status
        assert answer.json()["error"].startswith(error)
        assert recorder.events == []


class TestAdmin:
    def test_status_and_function_list(self, host: LocalHost, http: requests.Session) -> None:
        """The readiness and listing endpoints show the indexed functions and their triggers."""
        assert http.get(f"{host.url}/admin/host/status").json() == {"state": "Running"}
        assert http.get(f"{host.url}/admin/functions").json() == [
            {"name": "record", "trigger": "eventGridTrigger"},
            {"name": "explode", "trigger": "eventGridTrigger"},
            {"name": "arecord", "trigger": "eventGridTrigger"},
            {"name": "tick", "trigger": "timerTrigger"},
        ]

    def test_admin_endpoint_runs_the_timer_once(
        self, host: LocalHost, http: requests.Session, recorder: Recorder
    ) -> None:
        """POST /admin/functions/tick answers 202 and the timer runs once with a TimerRequest."""
        answer = http.post(f"{host.url}/admin/functions/tick", json={"input": ""})

        assert answer.status_code == 202
        assert recorder.timer_ran.wait(5)
        time.sleep(0.1)
        assert [(type(t), t.past_due) for t in recorder.timers] == [(TimerRequest, False)]

    def test_admin_endpoint_for_unknown_function_is_404(
        self, host: LocalHost, http: requests.Session
    ) -> None:
        """Running a function the app lacks answers 404 with the name."""
        answer = http.post(f"{host.url}/admin/functions/nosuch", json={"input": ""})

        assert (answer.status_code, answer.json()) == (404, {"error": "function 'nosuch' is not in this app"})


class TestTimers:
    def test_run_on_startup_and_schedule_fire_the_timer(self, http: requests.Session) -> None:
        """A timer with run_on_startup runs at start, then on its every-second schedule."""
        runs: list[TimerRequest] = []
        app = func.FunctionApp()

        @app.function_name("every_second")
        @app.timer_trigger(arg_name="timer", schedule="* * * * * *", run_on_startup=True)
        def every_second(timer: TimerRequest) -> None:
            runs.append(timer)

        with LocalHost(app, port=0):
            deadline = time.monotonic() + 5
            while len(runs) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)

        assert len(runs) >= 3
        assert all(isinstance(r, func.TimerRequest) and not r.past_due for r in runs)
        assert runs[1].schedule_status["Next"] > runs[0].schedule_status["Last"]

    def test_one_app_object_serves_two_hosts(self) -> None:
        """get_functions() may run once per app; a second host on the same app reuses the index."""
        app = func.FunctionApp()

        @app.function_name("only")
        @app.event_grid_trigger(arg_name="event")
        def only(event: func.EventGridEvent) -> None:
            pass

        first = LocalHost(app, port=0, timers=False)
        second = LocalHost(app, port=0, timers=False)

        assert list(first.functions) == list(second.functions) == ["only"]


def test_stop_lets_a_running_function_finish_and_answer(http: requests.Session) -> None:
    """Ctrl-C while a function runs: the host stops taking requests, but the running one finishes
    and its sender gets its answer (an ingest cut half-way would only be retried later)."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    app = func.FunctionApp()

    @app.function_name("slow")
    @app.event_grid_trigger(arg_name="event")
    def slow(event: func.EventGridEvent) -> None:
        started.set()
        release.wait(10)
        finished.set()

    host = LocalHost(app, port=0).start()
    answers: list[int] = []
    sender = threading.Thread(target=lambda: answers.append(
        http.post(webhook(host, "slow"), json=[BLOB_EVENT], headers=NOTIFY).status_code))
    sender.start()
    assert started.wait(10)
    threading.Timer(0.5, release.set).start()

    host.stop()

    assert finished.is_set(), "stop() returned while the function was still running"
    sender.join(10)
    assert answers == [200]
