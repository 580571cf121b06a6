"""One file's story, as Application Insights would get it: the real functions behind the local host's
webhook, the real local adapters (Azurite, the embedded workspace running ml/pipeline.yml), and
OpenTelemetry's own in-memory exporters behind the handler and tracer the app uses on Azure.

A good file, a bad file, a redelivery of the good one, a foreign event and a file whose event was
lost (found by reconcile) go through the loop; the test compares the whole sequence of spans and of
log records, each with its level and all its fields, and checks that Azure Monitor's exporter turns
the fields into custom dimensions and puts each file's lines and spans under one operation_Id."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from azure.functions.timer import TimerRequest
from localstack import blob_created, per_file_contract, stack_env
from mlmodules import wine
from opentelemetry.trace import SpanKind
from otelcapture import Capture, custom_dimensions, log_envelope, otel_capture, span_envelope

import autoretrain.bootstrap as boot
from autoretrain.adapters.localworkspace.workspace import LocalWorkspace
from autoretrain.adapters.storage import AzureBlobStore
from autoretrain.domain import BlobRef, LedgerState, WorkKey
from autoretrain.local.host import LocalHost
from autoretrain.loop import Deps
from autoretrain.settings import LOCAL_STORAGE_TOPIC, Settings

pytestmark = pytest.mark.integration




@pytest.fixture
def stack(
    tmp_path: Path, unique: str, azurite: str, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> Iterator[tuple[LocalHost, Deps, list[dict[str, Any]]]]:
    """The function app on the local host (not listening: the test posts to its webhook handler),
    the runtime it uses built from this test's settings, and the run events its workspace emits."""
    import function_app

    env = stack_env(tmp_path, unique, azurite, 7071,
                    {"AUTORETRAIN_RECONCILE_GRACE_SECONDS": "0", **per_file_contract(tmp_path)})
    for name, value in env.items():
        if name.startswith("AUTORETRAIN_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    settings = Settings.from_env()
    blobs = AzureBlobStore(boot.blob_service(settings), create_containers=True)
    run_events: list[dict[str, Any]] = []
    # As bootstrap builds it, but the run events are kept for the test to deliver, in order.
    workspace = LocalWorkspace(
        settings.home, pipeline=boot.PIPELINE, contract=settings.contract, blobs=blobs,
        experiment=settings.experiment, data_asset=settings.data_asset, model_name=settings.model_name,
        on_event=run_events.append,
    )
    deps = boot.bootstrap(settings, workspace=workspace, blobs=blobs)
    try:
        with boot.installed(deps, settings):  # the runtime the triggers use: this one
            yield LocalHost(function_app.app, timers=False), deps, run_events
    finally:
        workspace.close()


def _post(host: LocalHost, function: str, event: Mapping[str, Any]) -> int:
    answer = host.handle(
        "POST", f"/runtime/webhooks/eventgrid?functionName={function}", {"aeg-event-type": "Notification"},
        json.dumps([event]).encode(),
    )
    return answer.status


def _story(capture: Capture) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(spans in the order they ended, log records of ours in the order written): each with its
    name, kind or level, trace and parent as indexes into the spans, and all its attributes."""
    spans = capture.finished_spans()
    index = {s.context.span_id: i for i, s in enumerate(spans)}
    traces: dict[int, int] = {}
    for s in spans:
        traces.setdefault(s.context.trace_id, len(traces))
    span_rows = [
        (s.name, s.kind, traces[s.context.trace_id], index.get(s.parent.span_id) if s.parent else None,
         [index.get(link.context.span_id) for link in s.links], s.status.status_code.name,
         dict(s.attributes or {}))
        for s in spans
    ]
    log_rows = []
    for record in capture.log_records():
        if record.log_record.span_id not in index:
            continue  # not inside an invocation: the host's own lines, the job threads' (checked apart)
        attributes = dict(record.log_record.attributes or {})
        scope = record.instrumentation_scope.name if record.instrumentation_scope else ""
        event = attributes.pop("event", None)
        log_rows.append((index[record.log_record.span_id], scope, record.log_record.severity_text, event, attributes))
    return span_rows, log_rows


def _outside(capture: Capture) -> set[str]:
    """The loggers that wrote lines outside every invocation."""
    ids = {s.context.span_id for s in capture.finished_spans()}
    return {r.instrumentation_scope.name for r in capture.log_records()
            if r.log_record.span_id not in ids and r.instrumentation_scope is not None}


def test_each_files_story_is_one_trace_of_structured_lines(
    stack: tuple[LocalHost, Deps, list[dict[str, Any]]], tmp_path: Path, unique: str
) -> None:
    host, deps, run_events = stack
    workspace = deps.workspace
    assert isinstance(workspace, LocalWorkspace)
    incoming, quarantine = deps.config.incoming_container, deps.config.quarantine_container
    [month] = wine().write_monthly_drops(tmp_path / "drops", months=1, seed=3)
    good = deps.blobs.upload(incoming, "2026-01.csv", month.read_bytes())
    bad = deps.blobs.upload(incoming, "typo.csv", b"alcohol,cultivar\n13.2,class_0\n")
    lost = deps.blobs.upload(incoming, "lost.csv", b"alcohol;cultivar\n")
    foreign = BlobRef(incoming, "theirs.csv", "0x8DEADBEEF")
    elsewhere = LOCAL_STORAGE_TOPIC.replace("devstoreaccount1", "someoneelse")

    with otel_capture() as capture:
        assert _post(host, "ingest", blob_created(good, "evt-good")) == 200
        assert workspace.drain(300)
        assert [(e["eventType"].rsplit(".", 1)[1], e["data"].get("runStatus")) for e in run_events] == [
            ("RunStatusChanged", "Running"), ("RunStatusChanged", "Completed"), ("RunCompleted", None)
        ]
        for event in run_events:
            assert _post(host, "completion", event) == 200
        assert _post(host, "ingest", blob_created(bad, "evt-bad")) == 200
        assert _post(host, "ingest", blob_created(good, "evt-good-again")) == 200
        assert _post(host, "ingest", blob_created(foreign, "evt-foreign", topic=elsewhere)) == 200
        host.functions["reconcile"].user_function(timer=TimerRequest(past_due=False))

    spans, lines = _story(capture)
    done, typo, found = (deps.ledger.get(WorkKey.for_blob(ref)) for ref in (good, bad, lost))
    assert done is not None and done.state is LedgerState.DONE and done.metrics is not None, done
    assert typo is not None and typo.state is LedgerState.QUARANTINED, typo
    assert found is not None and found.state is LedgerState.QUARANTINED, found
    key, typo_key, lost_key, foreign_key = (WorkKey.for_blob(r).value for r in (good, bad, lost, foreign))
    job, data, model = WorkKey(key).job_name, "autoretrain-data:1", "autoretrain-model:1"
    storage, workspace_topic = LOCAL_STORAGE_TOPIC, run_events[0]["topic"]
    received = {"api": "PutBlob", "content_length": 100}
    G = {"event_id": "evt-good", "blob": good.path, "etag": good.etag, "work_key": key}
    B = {"event_id": "evt-bad", "blob": bad.path, "etag": bad.etag, "work_key": typo_key}
    R = {"event_id": "evt-good-again", "blob": good.path, "etag": good.etag, "work_key": key}
    F = {"event_id": "evt-foreign", "blob": foreign.path, "etag": foreign.etag, "work_key": foreign_key}
    L = {"blob": lost.path, "etag": lost.etag, "work_key": lost_key}

    def run(i: int) -> dict[str, Any]:  # a completion's context: the run event's id, the job's tags
        return {"event_id": run_events[i]["id"], "job": job, "work_key": key, "blob": good.path, "etag": good.etag}

    def received_run(i: int) -> dict[str, Any]:
        return {**run(i), "topic": workspace_topic, "event_type": run_events[i]["eventType"],
                "job_status": run_events[i]["data"].get("runStatus") or "Completed"}

    gate = {"promoted": True, "decision": done.decision, "metric": "f1_macro", "value": done.metrics.primary_value}
    ingest, completion, loop = "autoretrain.functions.ingest", "autoretrain.functions.completion", "autoretrain.loop"
    # Span (in the order they ended), its trace and parent as indexes: good file's ingest and its three
    # completions share trace 0; each other delivery and each file reconcile finds has its own.
    consumer = SpanKind.CONSUMER
    assert spans == [
        ("ingest", consumer, 0, None, [], "UNSET", {**G, "data_version": data, "job": job}),
        ("completion", consumer, 0, 0, [], "UNSET", {**run(0), "model_version": model}),
        ("completion", consumer, 0, 0, [], "UNSET", run(1)),
        ("completion", consumer, 0, 0, [], "UNSET", run(2)),
        ("ingest", consumer, 1, None, [], "UNSET", B),
        ("ingest", consumer, 2, None, [], "UNSET", {**R, "job": job}),
        ("ingest", consumer, 3, None, [], "UNSET", F),
        ("reconcile.attempt", consumer, 4, None, [8], "UNSET", L),
        ("reconcile", consumer, 5, None, [], "UNSET", {}),
    ]
    # Every line of ours, in the order written: the span it is in, its logger, level, event, fields.
    assert lines == [
        (0, ingest, "INFO", "ingest.received", {**G, "topic": storage, **received}),
        (0, loop, "INFO", "ingest.claimed", {**G, "taker": 1}),
        (0, loop, "INFO", "ingest.contract_ok", {**G, "rows_checked": 178}),
        (0, loop, "INFO", "ingest.data_registered", {**G, "data_version": data}),
        (0, loop, "INFO", "ingest.training_set", {**G, "data_version": data,
                                                  "training_set": "autoretrain-data-trainset:1", "trained_on": 1,
                                                  "tested_on": 1, "newest": data, "new_data": 1}),
        (0, loop, "INFO", "ingest.pipeline_submitted", {**G, "data_version": data, "job": job,
                                                        "experiment": "autoretrain"}),
        (0, loop, "INFO", "ingest.submitted", {**G, "data_version": data, "job": job}),
        # The Running event arrives after the job ended: the workspace, asked again, says Completed.
        (1, completion, "INFO", "complete.received", received_run(0)),
        (1, loop, "INFO", "complete.run_finished", {**run(0), "job_state": "Completed"}),
        (1, loop, "INFO", "complete.metrics", {**run(0), "f1_macro": done.metrics.primary_value}),
        (1, loop, "INFO", "complete.model_registered", {**run(0), "model_version": model}),
        (1, loop, "INFO", "complete.champion_gate", {**run(0), "model_version": model, **gate,
                                                     "test_rows": done.metrics.test_rows}),
        (1, loop, "INFO", "complete.done", {**run(0), "model_version": model, "promoted": True, "metric": "f1_macro",
                                            "value": done.metrics.primary_value}),
        (2, completion, "INFO", "complete.received", received_run(1)),
        (2, loop, "INFO", "duplicate", {**run(1), "state": "done"}),
        (3, completion, "INFO", "complete.received", received_run(2)),
        (3, loop, "INFO", "duplicate", {**run(2), "state": "done"}),
        (4, ingest, "INFO", "ingest.received", {**B, "topic": storage, **received}),
        (4, loop, "INFO", "ingest.claimed", {**B, "taker": 1}),
        (4, loop, "WARN", "ingest.quarantined", {**B, "reason": typo.reason,
                                                 "copy": f"{quarantine}/{typo_key}/typo.csv"}),
        (5, ingest, "INFO", "ingest.received", {**R, "topic": storage, **received}),
        (5, loop, "INFO", "duplicate", {**R, "job": job, "state": "done"}),
        (6, ingest, "INFO", "ingest.received", {**F, "topic": elsewhere, **received}),
        (6, loop, "WARN", "ignored", {**F, "reason": f"topic {elsewhere!r} is not our storage account {storage!r}"}),
        (8, "autoretrain.functions.reconcile", "INFO", "reconcile.started", {"past_due": False}),
        (7, loop, "INFO", "ingest.claimed", {**L, "taker": 1}),
        (7, loop, "WARN", "ingest.quarantined", {**L, "reason": found.reason,
                                                 "copy": f"{quarantine}/{lost_key}/lost.csv"}),
        (7, loop, "WARN", "reconcile.found", {**L, "what": "unannounced", "result": f"quarantined: {found.reason}"}),
        (8, loop, "INFO", "reconcile.done", {"blobs": 3, "records": 2, "jobs": 1, "found": 1, "errors": 0}),
    ]
    # The job carried ingest's traceparent in its tags; completion continued from it.
    ingest_span = capture.finished_spans()[0]
    assert all(e["data"]["runTags"]["traceparent"].split("-")[1:3] == [
        f"{ingest_span.context.trace_id:032x}", f"{ingest_span.context.span_id:016x}"] for e in run_events)
    # Only the host's own lines, the job threads' and the library's indexing warning are outside.
    assert _outside(capture) <= {"autoretrain.host", "autoretrain.adapters.localworkspace.workspace",
                                 "autoretrain.adapters.localworkspace.tracking", "root"}

    # The job's own lines, from the workspace's job thread: outside every invocation, and each with
    # the file's correlation fields all the same (the thread's context comes from the job's tags).
    J = {"work_key": key, "blob": good.path, "etag": good.etag, "job": job}
    job_lines = [(r.log_record.attributes or {}) for r in capture.log_records()
                 if r.instrumentation_scope
                 and r.instrumentation_scope.name == "autoretrain.adapters.localworkspace.workspace"]
    steps = ("prep", "train", "evaluate")
    assert [(a["event"], a.get("step")) for a in job_lines] == [
        ("job.started", None), *((e, s) for s in steps for e in ("job.step_started", "job.step_completed")),
        ("job.completed", None),
    ]
    assert all({k: a.get(k) for k in J} == J for a in job_lines), job_lines

    # What Application Insights gets: a request per span, a trace row per line, each line's fields as
    # its customDimensions, and one operation_Id for the good file's whole story.
    records = [r for r in capture.log_records() if r.log_record.span_id in {s.context.span_id for s in
                                                                               capture.finished_spans()}]
    for record, (_, scope, _, event, fields) in zip(records, lines, strict=True):
        envelope = log_envelope(record)
        assert envelope.data.base_type == "MessageData"
        assert custom_dimensions(record) == {"event": event, "logger_name": scope,
                                             **{k: str(v) for k, v in fields.items()}}
    operation = f"{ingest_span.context.trace_id:032x}"
    story = [log_envelope(r) for r in records if r.log_record.trace_id == ingest_span.context.trace_id]
    assert len(story) == 17 and {e.tags["ai.operation.id"] for e in story} == {operation}
    requests = [span_envelope(s) for s in capture.finished_spans()]
    assert [(r.data.base_type, r.data.base_data.name, r.tags["ai.operation.id"] == operation) for r in requests] == [
        ("RequestData", "ingest", True), ("RequestData", "completion", True), ("RequestData", "completion", True),
        ("RequestData", "completion", True), ("RequestData", "ingest", False), ("RequestData", "ingest", False),
        ("RequestData", "ingest", False), ("RequestData", "reconcile.attempt", False),
        ("RequestData", "reconcile", False),
    ]
    assert requests[1].data.base_data.properties == {k: str(v) for k, v in {**run(0), "model_version": model}.items()}
