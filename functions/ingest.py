"""Event Grid BlobCreated on the customer storage account -> autoretrain.loop.ingest."""

from __future__ import annotations

import logging

import azure.functions as func

from autoretrain.domain import WorkKey
from autoretrain.domain.errors import EventError
from autoretrain.domain.events import parse_blob_created
from autoretrain.logs import bind, invocation, log_event
from functions._binding import event_json

bp = func.Blueprint()
log = logging.getLogger("autoretrain.functions.ingest")


@bp.function_name("ingest")
@bp.event_grid_trigger(arg_name="event")
def ingest(event: func.EventGridEvent) -> None:
    # One span per invocation, and every line in it carries the file's fields from here on.
    with invocation("ingest", event_id=event.id):
        try:
            parsed = parse_blob_created(event_json(event))
        except EventError as exc:
            # A malformed event will not get better on retry: reject it, loudly, and answer 200.
            log_event(log, logging.WARNING, "ingest.rejected", reason=str(exc))
            return
        bind(event_id=parsed.event_id, blob=parsed.blob.path, etag=parsed.blob.etag,
             work_key=WorkKey.for_blob(parsed.blob).value)
        log_event(log, logging.INFO, "ingest.received", topic=parsed.topic, api=parsed.api,
                  content_length=parsed.content_length)
        from autoretrain import loop  # the use cases and their wiring: at the first event, not at import
        from autoretrain.bootstrap import runtime

        loop.log_outcome(loop.ingest(parsed, runtime()))
