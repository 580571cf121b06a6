"""The log lines: fields as attributes (custom dimensions), correlation fields that stick, no secret
ever written (console and OpenTelemetry alike), a span per invocation and the traceparent it hands on."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from otelcapture import Capture, custom_dimensions, otel_capture

from autoretrain.domain.errors import ContractError, StorageError
from autoretrain.local.host import configure_logging
from autoretrain.logs import (
    RedactingFilter,
    bind,
    bound,
    current,
    fields_of,
    invocation,
    log_event,
    log_exception,
    redact,
    trace_context,
)

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("autoretrain.test")

# Secrets as they reach a log line: inside URLs, connection strings, headers and error messages.
SIG = "9Xq%2BzR7kLmN0pQsTuVwXyZ%3D"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL3N0b3JhZ2UuYXp1cmUuY29tIn0.c2lnbmF0dXJlLWJ5dGVz"
SAS_QUERY = f"sv=2022-11-02&ss=b&srt=co&sp=rl&se=2026-12-01T00:00:00Z&spr=https&sig={SIG}"
SAS_URL = f"https://custacct.blob.core.windows.net/incoming/2026-03.csv?{SAS_QUERY}"
CONNECTION = (
    f"DefaultEndpointsProtocol=https;AccountName=custacct;AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net"
)
SAS_CONNECTION = f"BlobEndpoint=https://custacct.blob.core.windows.net/;SharedAccessSignature={SAS_QUERY}"
BUS_KEY = "pQ7sXv2YhN0aB4cD6eF8gH1iJ3kL5mN7oP9qR0sT2uV="
BUS = f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={BUS_KEY}"
BUS_TOKEN = "SharedAccessSignature sr=https%3A%2F%2Fns.servicebus.windows.net&sig=Qm9ndXNTaWduYXR1cmU%3D&se=1767225600"
NESTED = f"https://portal.example/open?target={SAS_URL.replace('?', '%3F').replace('&', '%26').replace('=', '%3D')}"
SECRETS = (SIG, "9Xq+zR7kLmN0pQsTuVwXyZ=", ACCOUNT_KEY, JWT, BUS_KEY, "Qm9ndXNTaWduYXR1cmU", "hunter2-P4ss")
# What must survive: the parts that are not secret, for ops to know which account, blob and URL.
KEPT = ("custacct.blob.core.windows.net/incoming/2026-03.csv", "AccountName=custacct", "sv=2022-11-02",
        "se=2026-12-01T00:00:00Z", "SharedAccessKeyName=RootManageSharedAccessKey", "sig=***", "AccountKey=***",
        "Bearer ***", "SharedAccessSignature=***")


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    """The local host's console handler (its shape and its filters) on the root logger."""
    stream = io.StringIO()
    root, level = logging.getLogger(), logging.getLogger().level
    handler = configure_logging(stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _exported_text(capture: Capture) -> str:
    """Everything the OpenTelemetry handler exported, and what Application Insights would store."""
    parts = []
    for record in capture.log_records():
        parts.append(str(record.log_record.body))
        parts.append(json.dumps({k: str(v) for k, v in (record.log_record.attributes or {}).items()}))
        parts.append(json.dumps(custom_dimensions(record)))
    return "\n".join(parts)


def test_no_secret_token_sas_or_connection_string_is_ever_written(console: io.StringIO) -> None:
    """Fed in as field values, bound context, message text, %-arguments, extra attributes and
    exception text, through log_event and through a plain logger: grep both outputs."""
    sas_blob = f"incoming/2026-03.csv?{SAS_QUERY}"
    with otel_capture() as capture, bound(blob=sas_blob, work_key="06159aff2d60cccfcfd0d6f9"):
        log_event(log, logging.WARNING, "ingest.skipped", url=SAS_URL, storage=CONNECTION, sas=SAS_CONNECTION,
                  authorization=f"Bearer {JWT}", reason=f"download of {SAS_URL} failed; used {BUS}",
                  client_secret="hunter2-P4ss", nested=NESTED, token_header=BUS_TOKEN)
        log.error("request to %s failed with %s", SAS_URL, f"Authorization: Bearer {JWT}")
        log.warning(f"connection string {CONNECTION} and {BUS_TOKEN} in the message itself")
        log.info("extra attributes too", extra={"source_url": SAS_URL, "password": "hunter2-P4ss"})
        try:
            raise StorageError(f"403 on {SAS_URL} with {SAS_CONNECTION}")
        except StorageError as exc:
            log_event(log, logging.ERROR, "failed", error=str(exc))
    written = console.getvalue() + "\n" + _exported_text(capture)

    leaked = [secret for secret in SECRETS if secret in written]
    assert leaked == [], written
    missing = [kept for kept in KEPT if kept not in written]
    assert missing == [], written
    assert console.getvalue().count("\n") == 5  # every line was written, masked, none dropped


def test_a_traceback_is_written_masked_with_its_causes_and_notes(console: io.StringIO) -> None:
    """log.exception of an error whose message, cause and note hold secrets: the console's traceback
    and OpenTelemetry's exception attributes are masked, and still name the error and where it was."""
    def fail() -> None:
        try:
            raise OSError(f"connect failed: {CONNECTION}")
        except OSError as cause:
            error = StorageError(f"403 on {SAS_URL}")
            error.add_note(f"retried with Bearer {JWT}")
            raise error from cause

    with otel_capture() as capture, bound(work_key="06159aff2d60cccfcfd0d6f9"):
        try:
            fail()
        except StorageError as exc:
            log_exception(log, "job.crashed", job="autoretrain-06159aff", error=str(exc))
    written = console.getvalue()
    [record] = capture.log_records()
    attributes = dict(record.log_record.attributes or {})
    exported = _exported_text(capture)

    assert [secret for secret in SECRETS if secret in written + exported] == []
    for text in (written, attributes["exception.stacktrace"]):
        assert "autoretrain.domain.errors.StorageError: 403 on https://custacct.blob.core.windows.net/incoming/" in text
        assert "OSError: connect failed: DefaultEndpointsProtocol=https;AccountName=custacct;AccountKey=***" in text
        assert "retried with Bearer ***" in text and "in fail" in text
        assert "The above exception was the direct cause of the following exception" in text
    assert "job.crashed work_key=06159aff2d60cccfcfd0d6f9 job=autoretrain-06159aff error=" in written, written
    assert (record.log_record.severity_text, attributes["event"], attributes["work_key"]) == (
        "ERROR", "job.crashed", "06159aff2d60cccfcfd0d6f9")
    assert attributes["exception.type"] == "StorageError"
    assert attributes["exception.message"].startswith("403 on https://custacct.blob.core.windows.net/") and (
        "sig=***" in attributes["exception.message"])


def test_a_traceback_without_secrets_is_left_as_it_was() -> None:
    try:
        raise ContractError("column 'ash' has 'n/a?' on line 50000")
    except ContractError as exc:
        error = exc
        record = log.makeRecord(log.name, logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert RedactingFilter().filter(record)
    assert record.exc_info is not None and record.exc_info[1] is error and record.exc_text is None


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (SAS_URL, f"https://custacct.blob.core.windows.net/incoming/2026-03.csv?{SAS_QUERY.replace(SIG, '***')}"),
        (CONNECTION,
         "DefaultEndpointsProtocol=https;AccountName=custacct;AccountKey=***;EndpointSuffix=core.windows.net"),
        (SAS_CONNECTION, "BlobEndpoint=https://custacct.blob.core.windows.net/;SharedAccessSignature=***"),
        (BUS, "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;"
              "SharedAccessKey=***"),
        (f"Authorization: Bearer {JWT}", "Authorization: Bearer ***"),
        (f"token {JWT} expired", "token *** expired"),
        (BUS_TOKEN, "SharedAccessSignature ***"),
        ("Authorization: SharedKey custacct:c2lnbmF0dXJl", "Authorization: SharedKey ***"),
        ("https://x/?next=%2Fa%3Fsv%3D1%26sig%3DAbC%252B%26se%3D2", "https://x/?next=%2Fa%3Fsv%3D1%26sig%3D***%26se%3D2"),
        ("UseDevelopmentStorage=true", "UseDevelopmentStorage=true"),
        ("the design=signature of contract.yaml", "the design=signature of contract.yaml"),
        ("incoming/2026-03.csv etag=0x8DE1 work_key=06159aff2d60cccfcfd0d6f9",
         "incoming/2026-03.csv etag=0x8DE1 work_key=06159aff2d60cccfcfd0d6f9"),
    ],
)
def test_redact_masks_the_secret_and_keeps_the_rest(text: str, masked: str) -> None:
    assert redact(text) == masked


def test_each_field_is_a_record_attribute_and_a_custom_dimension(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="autoretrain")
    with otel_capture() as capture, bound(work_key="06159aff2d60cccfcfd0d6f9", blob="incoming/a b.csv"):
        log_event(log, logging.INFO, "complete.champion_gate", promoted=True, value=0.91, test_rows=36,
                  decision="promoted: first model", name="clashes", missing=None)
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "complete.champion_gate"]
    assert record.getMessage() == (
        'complete.champion_gate work_key=06159aff2d60cccfcfd0d6f9 blob="incoming/a b.csv" promoted=True value=0.91 '
        'test_rows=36 decision="promoted: first model" name=clashes'
    )
    expected = {"work_key": "06159aff2d60cccfcfd0d6f9", "blob": "incoming/a b.csv", "promoted": True, "value": 0.91,
                "test_rows": 36, "decision": "promoted: first model", "name_": "clashes"}
    assert (record.event, record.name, fields_of(record)) == ("complete.champion_gate", "autoretrain.test", expected)
    [exported] = capture.log_records()
    dimensions = custom_dimensions(exported)
    assert {k: dimensions[k] for k in [*expected, "event"]} == {
        **{k: str(v) for k, v in expected.items()}, "event": "complete.champion_gate"
    }


def test_correlation_fields_stick_for_the_rest_of_their_block_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="autoretrain")
    with bound(work_key="k1"):
        log_event(log, logging.INFO, "ingest.data_registered", data_version="autoretrain-data:1")
        with bound(blob="incoming/a.csv"):
            log_event(log, logging.INFO, "ingest.pipeline_submitted", job="autoretrain-k1", experiment="x")
            bind(model_version="autoretrain-model:1")
            log_event(log, logging.INFO, "inner.last")
        log_event(log, logging.INFO, "ingest.submitted")
        assert dict(current()) == {"work_key": "k1", "data_version": "autoretrain-data:1"}
    log_event(log, logging.INFO, "outside")
    assert [r.getMessage() for r in caplog.records] == [
        "ingest.data_registered work_key=k1 data_version=autoretrain-data:1",
        "ingest.pipeline_submitted work_key=k1 data_version=autoretrain-data:1 blob=incoming/a.csv "
        "job=autoretrain-k1 experiment=x",
        "inner.last work_key=k1 data_version=autoretrain-data:1 blob=incoming/a.csv job=autoretrain-k1 "
        "model_version=autoretrain-model:1",
        "ingest.submitted work_key=k1 data_version=autoretrain-data:1",
        "outside",
    ]


def test_an_escaping_error_is_logged_once_at_the_level_its_retry_deserves(caplog: pytest.LogCaptureFixture) -> None:
    """Transient (Event Grid's redelivery may help): WARNING. Anything else: ERROR. Raised on."""
    caplog.set_level(logging.INFO, logger="autoretrain")
    with pytest.raises(StorageError), invocation("ingest", work_key="k1"):
        raise StorageError("table storage timed out")
    with pytest.raises(KeyError), invocation("completion", work_key="k2"):
        raise KeyError("bug")
    with pytest.raises(ContractError), invocation("ingest", work_key="k3"):
        raise ContractError("a permanent error that escaped")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", 'ingest.raised work_key=k1 error_type=StorageError error="table storage timed out"'),
        ("ERROR", "completion.raised work_key=k2 error_type=KeyError error='bug'"),
        ("ERROR", 'ingest.raised work_key=k3 error_type=ContractError error="a permanent error that escaped"'),
    ]


def test_untraced_there_is_no_span_and_no_traceparent() -> None:
    with invocation("ingest", work_key="k1"):
        assert trace_context() == {}


def test_a_span_per_invocation_hands_its_traceparent_on_and_the_next_continues_it() -> None:
    """Ingest's span → the job's tags → completion's span: one trace. Completion links the trace it was
    called in; reconcile's units are traces of their own, linked to the pass."""
    # "host": the Functions host's invocation, as the worker attaches it.
    with otel_capture() as capture, invocation("host"):
        with invocation("ingest", work_key="k1"):
            tags = trace_context()
            log_event(log, logging.INFO, "ingest.submitted", job="autoretrain-k1")
        with invocation("completion", parent=tags, job="autoretrain-k1"):
            log_event(log, logging.ERROR, "complete.job_failed")
        with invocation("reconcile.attempt", root=True, work_key="k2"):
            pass
    host, ingest, completion, attempt = (
        {s.name: s for s in capture.finished_spans()}[n] for n in ("host", "ingest", "completion", "reconcile.attempt")
    )
    flags = int(ingest.context.trace_flags)
    assert tags == {"traceparent": f"00-{ingest.context.trace_id:032x}-{ingest.context.span_id:016x}-{flags:02x}"}
    assert ingest.parent is not None and ingest.parent.span_id == host.context.span_id
    assert completion.parent is not None and completion.parent.span_id == ingest.context.span_id
    assert completion.context.trace_id == ingest.context.trace_id
    assert [link.context.span_id for link in completion.links] == [host.context.span_id]
    assert attempt.parent is None and attempt.context.trace_id != host.context.trace_id
    assert [link.context.span_id for link in attempt.links] == [host.context.span_id]
    assert dict(ingest.attributes or {}) == {"work_key": "k1", "job": "autoretrain-k1"}
    assert (completion.status.status_code.name, completion.status.description) == ("ERROR", "complete.job_failed")
    assert ingest.status.status_code.name == "UNSET"
    [submitted, failed] = capture.log_records()
    assert (submitted.log_record.trace_id, submitted.log_record.span_id) == (
        ingest.context.trace_id, ingest.context.span_id
    )
    assert failed.log_record.span_id == completion.context.span_id


def _loaded_by_importing_the_app(which: str) -> str:
    """What `which` (an expression over `sys.modules`) prints after a fresh interpreter imports
    function_app in local mode (no Application Insights connection string)."""
    code = f"import sys; import function_app; print(sorted({which}))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "APPLICATIONINSIGHTS_CONNECTION_STRING"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_a_connection_string_the_app_imports_no_opentelemetry() -> None:
    """Local mode pays nothing: importing function_app configures nothing and loads neither the
    OpenTelemetry SDK nor the Azure Monitor distro."""
    assert _loaded_by_importing_the_app(
        "{m.split('.')[0] + '.' + m.split('.')[1] for m in sys.modules "
        "if m.startswith(('opentelemetry.', 'azure.monitor'))}"
    ) == "[]"


def test_importing_the_app_defers_the_loop_and_the_storage_sdks_to_the_first_event() -> None:
    """The host imports function_app to index its functions (a cold start): the use cases, their
    wiring and the Azure SDKs they call are imported by the first invocation, not by indexing."""
    assert _loaded_by_importing_the_app(
        "m for m in ('autoretrain.loop', 'autoretrain.bootstrap', 'azure.storage.blob', 'azure.data.tables', "
        "'azure.ai.ml') if m in sys.modules"
    ) == "[]"
