"""Turns the Functions binding's event object into the JSON the event parsers read."""

from __future__ import annotations

from typing import Any

import azure.functions as func


def event_json(event: func.EventGridEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat() if event.event_time else None,
        "dataVersion": event.data_version,
        "data": event.get_json(),
    }
