"""Azure ML RunCompleted / RunStatusChanged -> autoretrain.loop.complete."""

from __future__ import annotations

import logging

import azure.functions as func

from autoretrain import loop
from autoretrain.bootstrap import runtime
from autoretrain.domain import RUN_TAG
from autoretrain.errors import EventError
from autoretrain.events import parse_run_finished
from autoretrain.logs import bound, log_event
from functions._binding import event_json

bp = func.Blueprint()
log = logging.getLogger("autoretrain.functions.completion")


@bp.function_name("completion")
@bp.event_grid_trigger(arg_name="event")
def completion(event: func.EventGridEvent) -> None:
    try:
        parsed = parse_run_finished(event_json(event))
    except EventError as exc:
        log_event(log, logging.WARNING, "complete.rejected", event_id=event.id, reason=str(exc))
        return
    with bound(event_id=parsed.event_id, job=parsed.run_id, work_key=parsed.run_tags.get(RUN_TAG)):
        loop.log_outcome(loop.complete(parsed, runtime()))
