"""OpenTelemetry's own in-memory exporters behind the handler and tracer the app uses on Azure, and
the Azure Monitor exporter's own conversion to what Application Insights stores, for the tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from azure.monitor.opentelemetry.exporter.export.logs._exporter import _convert_log_to_envelope
from azure.monitor.opentelemetry.exporter.export.trace._exporter import _convert_span_to_envelope

# The handler configure_azure_monitor() puts on the root logger (azure-monitor-opentelemetry 1.8).
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from autoretrain.logs import disable_tracing, enable_tracing, install_redaction

try:  # the SDK's newer name; InMemoryLogExporter stays as a deprecated alias
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as InMemoryLogExporter
except ImportError:  # pragma: no cover - an older SDK
    from opentelemetry.sdk._logs.export import InMemoryLogExporter  # type: ignore[no-redef]


@dataclass
class Capture:
    spans: InMemorySpanExporter
    logs: InMemoryLogExporter

    def finished_spans(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def log_records(self) -> list[ReadableLogRecord]:
        return list(self.logs.get_finished_logs())


@contextmanager
def otel_capture(level: int = logging.INFO) -> Iterator[Capture]:
    """Spans and log records, exported as they end, in order; tracing on; the root logger at `level`
    and the Azure SDKs at WARNING, as autoretrain.telemetry sets them on Azure."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logs = InMemoryLogExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    handler = LoggingHandler(logger_provider=logger_provider)
    root, azure = logging.getLogger(), logging.getLogger("azure")
    levels = root.level, azure.level
    root.addHandler(handler)
    root.setLevel(level)
    azure.setLevel(logging.WARNING)
    install_redaction()
    enable_tracing(tracer_provider)
    try:
        yield Capture(spans, logs)
    finally:
        disable_tracing()
        root.removeHandler(handler)
        root.setLevel(levels[0])
        azure.setLevel(levels[1])
        tracer_provider.shutdown()
        logger_provider.shutdown()


def custom_dimensions(record: ReadableLogRecord) -> dict[str, str]:
    """What Application Insights stores as the `traces` row's customDimensions for this record."""
    envelope = _convert_log_to_envelope(record)
    return dict(envelope.data.base_data.properties)  # type: ignore[union-attr]


def log_envelope(record: ReadableLogRecord) -> Any:
    return _convert_log_to_envelope(record)


def span_envelope(span: ReadableSpan) -> Any:
    return _convert_span_to_envelope(span)
