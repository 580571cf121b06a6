"""Structured log lines with bound context, redacted, and one span per function invocation.

`invocation("ingest", event_id=...)` at a trigger's entry (or `bound(work_key=..., blob=...)`)
puts those fields on every line logged inside it, so ops can follow one file through ingest, the
pipeline run and completion. A line reads
`ingest.submitted work_key=3f2a... blob=incoming/2026-01.csv etag=0x8D... job=autoretrain-3f2a...`;
each field also rides on the log record as an attribute of its own name (`record.work_key`,
`fields_of(record)`), which OpenTelemetry's logging handler exports and Application Insights shows
as a custom dimension (`customDimensions.work_key`).

The correlation fields (`CORRELATION_FIELDS`) stick: once a line inside a block names the data
version, the job or the model version, every later line of that block carries it too.

Nothing secret is ever written: every value and message goes through `redact()` (SAS signatures,
account and access keys, `SharedAccessSignature` tokens, bearer and JWT tokens, passwords), and
`install_redaction()` puts the same filter on the root logger's handlers for other libraries' lines.

A line is always one line, and shows what a value holds: `printable()` writes control characters
(a blob named `ctl\x01name.csv`, or one holding a newline and a forged log line) as backslash
escapes, in every field of a line and in everything the CLI prints for a person.

Tracing is off until `enable_tracing()` (the function app calls it when Application Insights is
configured): then each `invocation` is an OpenTelemetry span with the fields as attributes, and
`trace_context()` gives the W3C `traceparent` to carry in a pipeline job's tags, so completion
continues the trace ingest started (`invocation(..., parent=run_tags)`). Off, OpenTelemetry is not
even imported: local mode pays nothing for it.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from autoretrain.domain.errors import PermanentError, TransientError, WorkspaceError

__all__ = [
    "CORRELATION_FIELDS",
    "RedactingFilter",
    "bind",
    "bound",
    "current",
    "disable_tracing",
    "enable_tracing",
    "fields_of",
    "install_redaction",
    "invocation",
    "log_event",
    "log_exception",
    "printable",
    "redact",
    "trace_context",
]

# The fields every line carries wherever they are known: one file's story is a query on any of them.
CORRELATION_FIELDS = ("work_key", "blob", "etag", "event_id", "data_version", "job", "model_version")

log = logging.getLogger("autoretrain.logs")

# ---- redaction --------------------------------------------------------------------------------

_MASK = "***"
_VALUE = r"[^;&\s\"'<>,]+"
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A SAS in a connection string (up to its `;`), then the Service Bus / Event Hubs token form.
    (re.compile(r"(?i)\bSharedAccessSignature=[^;\s\"'<>]+"), f"SharedAccessSignature={_MASK}"),
    (re.compile(r"(?i)\bSharedAccessSignature\s+[^;\s\"'<>]+"), f"SharedAccessSignature {_MASK}"),
    # key=value secrets in connection strings and URL query strings: the SAS signature (sig=),
    # account and access keys, client secrets, passwords, tokens.
    (
        re.compile(
            r"(?i)(?<![A-Za-z0-9_])(AccountKey|SharedAccessKey|sig|signature|client_secret|password|pwd"
            r"|access_token|refresh_token|id_token|token)=" + _VALUE
        ),
        rf"\1={_MASK}",
    ),
    # The same signature URL-encoded (a SAS URL passed as a query parameter of another URL).
    (re.compile(r"(?i)(%3F|%26|(?<![A-Za-z0-9_]))(sig|signature)%3D(?:(?!%26)[^&\s\"'<>])+"), rf"\1\2%3D{_MASK}"),
    # Authorization header values, and a JWT wherever it appears (a token pasted into an error).
    (re.compile(r"(?i)\b(Bearer|SharedKey|SharedKeyLite)\s+[A-Za-z0-9\-._~+/:=]+"), rf"\1 {_MASK}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), _MASK),
)
# A field whose very name says secret is masked whole, whatever its value looks like.
_SECRET_NAME = re.compile(
    r"(?i)(?:^|_)(?:secret|password|passwd|pwd|token|sas|sig|signature|credential|account_?key|access_?key"
    r"|connection_?string|conn_?str)(?:_|$)"
)


# What each of the patterns above needs to match: a text without any of these is left as it is,
# after one search instead of six substitutions (every field of every line goes through here). Not
# any `=`: a key=value secret needs one of the names above right before it.
_MAYBE_SECRET = re.compile(
    r"(?i)%3D|bearer|sharedkey|sharedaccesssignature|eyJ"
    r"|(?:AccountKey|SharedAccessKey|sig|signature|client_secret|password|pwd|token)="
)


def redact(text: str) -> str:
    """`text` with every secret it contains masked (`sig=***`, `AccountKey=***`, `Bearer ***`)."""
    if not _MAYBE_SECRET.search(text):
        return text
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


# ---- printable text ---------------------------------------------------------------------------

# What a console must not be handed raw: C0 controls (newline, carriage return, ESC...), DEL, C1
# controls (U+0085 NEL among them), the Unicode line and paragraph separators, the bidirectional
# embedding, override and isolate controls (they reorder the rest of a line on screen), and lone
# surrogates (they cannot be encoded to write). Printable text, non-ASCII too, is left as it is.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """`text` safe to print on one line: each control character written as the escape repr uses,
    without quotes (`\\n`, `\\r`, `\\t`, `\\x01`, `\\x1b`, `\\x85`, `\\u2028`); all else as it is (`été`,
    CJK, a backslash). Every field of a log line and every name, reason or error the CLI prints
    for a person goes through it; JSON output needs it not (json.dumps escapes)."""
    if not _UNPRINTABLE.search(text):
        return text
    return _UNPRINTABLE.sub(_escape, text)


def _value(name: str, value: Any) -> str | bool | int | float:
    """A field value as a log line, a span and Application Insights take it: a primitive, redacted."""
    if _SECRET_NAME.search(name):
        return _MASK
    if isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def _clean(fields: Mapping[str, Any]) -> dict[str, str | bool | int | float]:
    return {k: _value(k, v) for k, v in fields.items() if v is not None}


# LogRecord's own attributes: a field of one of these names is exported as `NAME_` instead.
_RECORD_KEYS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "event"}


class _RedactedLine(str):
    """A line `log_event` made: its every value was redacted (and its fields' names masked) when
    its fields were cleaned, so the filter does not search it again (about half of a line's cost)."""

    __slots__ = ()


class RedactingFilter(logging.Filter):
    """Masks secrets in any record's message and string attributes, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, _RedactedLine) and not record.args:
            if record.exc_info and record.exc_info[1] is not None:
                _mask_exception(record)
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed %-format: logging reports it when the handler formats it
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        for name, value in list(vars(record).items()):
            if name not in _RECORD_KEYS and isinstance(value, str):
                setattr(record, name, _value(name, value))
        if record.exc_info and record.exc_info[1] is not None:
            _mask_exception(record)
        return True


def _mask_exception(record: logging.LogRecord) -> None:
    """A traceback that holds a secret (an exception's message, a cause's, a note) is written
    masked: as text for the console's formatter (`exc_text`), and as a masked copy of the exception
    for handlers that format it themselves (OpenTelemetry's `exception.message`/`.stacktrace`)."""
    assert record.exc_info is not None
    kind, exc, tb = record.exc_info
    if exc is None:
        return
    text = "".join(traceback.format_exception(exc))
    if redact(text) == text:
        return
    record.exc_info = (kind or type(exc), _masked(exc, set()), tb)
    record.exc_text = redact(text)


def _masked(exc: BaseException, seen: set[int]) -> BaseException:
    """A stand-in for `exc`: the same class name, module and traceback, its message, notes, cause
    and context masked."""
    seen.add(id(exc))
    stand_in = type(type(exc).__name__, (Exception,), {
        "__module__": type(exc).__module__, "__qualname__": type(exc).__qualname__,
    })
    try:
        message = str(exc)
    except Exception:
        message = "<the exception's text could not be read>"
    masked: BaseException = stand_in(redact(message)).with_traceback(exc.__traceback__)
    for note in getattr(exc, "__notes__", None) or ():
        masked.add_note(redact(str(note)))
    for link in ("__cause__", "__context__"):
        linked = getattr(exc, link)
        if linked is not None and id(linked) not in seen:
            setattr(masked, link, _masked(linked, seen))
    masked.__suppress_context__ = exc.__suppress_context__
    return masked


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Put the redacting filter on every handler of `logger` (the root logger): the console's, the
    Functions worker's and OpenTelemetry's. Handlers added later need another call."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


# ---- context ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Frame:
    """One bound block: its fields (the correlation fields grow as lines name them) and its span."""

    fields: dict[str, str | bool | int | float]
    span: Any = None  # opentelemetry.trace.Span when tracing is on


_context: ContextVar[_Frame | None] = ContextVar("autoretrain_log_context", default=None)


def _enter(fields: Mapping[str, Any]) -> _Frame:
    """A block inside another inherits its fields and its span (the innermost span gets the fields)."""
    outer = _context.get()
    if outer is None:
        return _Frame(_clean(fields))
    return _Frame({**outer.fields, **_clean(fields)}, outer.span)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind fields to every log line written inside the block (thread- and task-local)."""
    token = _context.set(_enter(fields))
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the innermost bound block (and its span), from this line on."""
    frame = _context.get()
    if frame is None:
        return
    cleaned = _clean(fields)
    frame.fields.update(cleaned)
    if frame.span is not None and cleaned:
        frame.span.set_attributes(cleaned)


def current() -> Mapping[str, Any]:
    frame = _context.get()
    return MappingProxyType(dict(frame.fields) if frame else {})


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The fields `log_event` put on a record, by name (a clashing name keeps its trailing `_`)."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_KEYS}


_NEEDS_QUOTES = re.compile(r'[\s"=]')  # \s: what str.isspace() calls white space


def _show(value: Any) -> str:
    """A field's value in a line: as it is, or quoted (`"..."`, backslash and quote escaped) when it
    is empty or holds a space, a quote, an `=` or a control character (written as an escape)."""
    text = str(value)
    if text == "" or _NEEDS_QUOTES.search(text) or _UNPRINTABLE.search(text):
        return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
    return text


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log `event key=value ...` with the bound context first, then the given fields; each field is
    also an attribute of the record (a custom dimension in Application Insights)."""
    _log_event(logger, level, event, fields, exc_info=False)


def log_exception(logger: logging.Logger, event: str, **fields: Any) -> None:
    """`log_event` at ERROR with the exception being handled: its traceback, masked like the rest."""
    _log_event(logger, logging.ERROR, event, fields, exc_info=True)


def _log_event(logger: logging.Logger, level: int, event: str, fields: Mapping[str, Any], *, exc_info: bool) -> None:
    given = _clean(fields)
    frame = _context.get()
    if frame is not None:
        sticky = {k: given[k] for k in CORRELATION_FIELDS if k in given}
        if sticky:
            frame.fields.update(sticky)
            if frame.span is not None:
                frame.span.set_attributes(sticky)
        if level >= logging.ERROR and frame.span is not None:
            _fail_span(frame.span, event)  # a failed run or an exhausted retry: a failed request
        merged = {**frame.fields, **given}
    else:
        merged = given
    # One event, one line: whatever a field holds (a newline, an escape sequence), it is escaped.
    line = " ".join([printable(event), *(f"{printable(k)}={_show(v)}" for k, v in merged.items())])
    extra = {"event": event, **{(f"{k}_" if k in _RECORD_KEYS else k): v for k, v in merged.items()}}
    logger.log(level, _RedactedLine(line), extra=extra, exc_info=exc_info)


# ---- tracing ----------------------------------------------------------------------------------

_tracing = False
_provider: Any = None  # None: OpenTelemetry's global tracer provider (configure_azure_monitor sets it)


def enable_tracing(provider: Any = None) -> None:
    """From now on, each `invocation` is a span: on `provider` (an opentelemetry TracerProvider,
    tests), or on the global one that configure_azure_monitor() or the Functions worker set."""
    global _tracing, _provider
    _tracing, _provider = True, provider


def disable_tracing() -> None:
    global _tracing, _provider
    _tracing, _provider = False, None


def _retried(exc: BaseException) -> bool:
    """Whether Event Grid's redelivery may help: transient, or a workspace error not yet classified."""
    return isinstance(exc, TransientError) or (isinstance(exc, WorkspaceError) and not isinstance(exc, PermanentError))


@contextmanager
def invocation(
    name: str, *, parent: Mapping[str, str] | None = None, root: bool = False, **fields: Any
) -> Iterator[None]:
    """One function invocation (or one unit of a reconcile pass): its fields are bound to every
    line inside, and, with tracing on, it is a span named `name` with the fields as attributes.

    `parent`: a carrier with a W3C `traceparent` (a pipeline job's tags): the span continues that
    trace, and links the trace it was called in (the host's invocation). `root`: a trace of its own,
    linked to the caller's. An exception that escapes is logged once, inside the span, WARNING when
    a redelivery may help, ERROR otherwise, and raised on."""
    frame = _enter(fields)
    token = _context.set(frame)
    try:
        with _start_span(name, frame, parent=parent, root=root) if _tracing else nullcontext() as span:
            if span is not None:
                frame.span = span
            try:
                yield
            except Exception as exc:
                level = logging.WARNING if _retried(exc) else logging.ERROR
                error = " ".join(str(exc).split())[:300]
                log_event(log, level, f"{name}.raised", error_type=type(exc).__name__, error=error)
                raise
    finally:
        _context.reset(token)


def _start_span(name: str, frame: _Frame, *, parent: Mapping[str, str] | None, root: bool) -> Any:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = _provider if _provider is not None else trace.get_tracer_provider()
    here = trace.get_current_span().get_span_context()
    context = None
    traceparent = (parent or {}).get("traceparent")
    if traceparent:
        extracted = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        if trace.get_current_span(extracted).get_span_context().is_valid:
            context = extracted
    elif root:
        context = otel_context.Context()
    links = [Link(here)] if context is not None and here.is_valid else []
    # CONSUMER: each invocation handles one event (a blob, a run, a timer tick); Application Insights
    # shows it in `requests`, and the Azure SDK calls made inside it as its `dependencies`.
    return provider.get_tracer("autoretrain").start_as_current_span(
        name, context=context, kind=SpanKind.CONSUMER, attributes=dict(frame.fields), links=links
    )


def _fail_span(span: Any, event: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, event))


def trace_context() -> dict[str, str]:
    """{"traceparent": ...} of the current span, to carry in a pipeline job's tags; {} untraced."""
    if not _tracing:
        return {}
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return {"traceparent": carrier["traceparent"]} if "traceparent" in carrier else {}
