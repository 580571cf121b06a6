"""Turns the Functions binding's event object into the JSON the event parsers read.

The binding hands over an EventGridEvent for the Event Grid schema and a CloudEvent for the
CloudEvents 1.0 schema (the library's converter picks by `specversion`); both are read here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import azure.functions as func


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def event_json(event: func.EventGridEvent | Any) -> dict[str, Any]:
    if getattr(event, "specversion", None):
        return {
            "specversion": event.specversion,
            "id": event.id,
            "source": event.source,
            "subject": event.subject,
            "type": event.type,
            "time": _iso(event.time),
            "data": event.get_json(),
        }
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": _iso(event.event_time),
        "dataVersion": event.data_version,
        "data": event.get_json(),
    }
