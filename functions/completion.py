"""Azure ML RunCompleted / RunStatusChanged -> autoretrain.loop.complete."""

from __future__ import annotations

import logging

import azure.functions as func

from autoretrain.domain import JOB_TAG
from autoretrain.domain.errors import EventError
from autoretrain.domain.events import parse_job_finished
from autoretrain.logs import invocation, log_event
from functions._binding import event_json

bp = func.Blueprint()
log = logging.getLogger("autoretrain.functions.completion")


@bp.function_name("completion")
@bp.event_grid_trigger(arg_name="event")
def completion(event: func.EventGridEvent) -> None:
    try:
        parsed = parse_job_finished(event_json(event))
    except EventError as exc:
        with invocation("completion", event_id=event.id):
            log_event(log, logging.WARNING, "complete.rejected", reason=str(exc))
        return
    tags = parsed.job_tags
    # The job's tags name its file and carry the trace ingest started: completion continues it, so
    # one operation shows the file's whole story. (The tags are only trusted once loop.complete
    # has checked the event is ours; until then they only label the lines.)
    with invocation("completion", parent=tags, event_id=parsed.event_id, job=parsed.job,
                    work_key=tags.get(JOB_TAG), blob=tags.get("blob"), etag=tags.get("etag")):
        log_event(log, logging.INFO, "complete.received", topic=parsed.topic, event_type=parsed.event_type,
                  job_status=parsed.job_status)
        from autoretrain import loop  # the use cases and their wiring: at the first event, not at import
        from autoretrain.bootstrap import runtime

        loop.log_outcome(loop.complete(parsed, runtime()))
