"""What the Functions binding hands the triggers, in both schemas, reaches the parser intact."""

from __future__ import annotations

import json

from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum
from test_events import BLOB_CREATED_CLOUDEVENT, BLOB_CREATED_EVENTGRID, EXPECTED_BLOB

from autoretrain.domain.events import parse_blob_created
from functions._binding import event_json


def _decode(body: object) -> object:
    return EventGridEventInConverter.decode(data=Datum(json.dumps(body), "json"), trigger_metadata=None)


def test_event_grid_schema_through_the_library_converter() -> None:
    assert parse_blob_created(event_json(_decode(BLOB_CREATED_EVENTGRID[0]))) == EXPECTED_BLOB


def test_cloudevents_schema_through_the_library_converter() -> None:
    """The converter returns a CloudEvent (no topic, no event_type): it must still parse."""
    assert parse_blob_created(event_json(_decode(BLOB_CREATED_CLOUDEVENT))) == EXPECTED_BLOB
