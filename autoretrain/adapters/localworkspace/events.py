"""The Azure ML run events the local workspace sends when a job changes state.

As the real service does: RunStatusChanged for each state, and RunCompleted after it on success,
in the Event Grid schema, from the local workspace's topic. The loop's completion trigger reads them
as it reads Azure ML's (`runId`, `runTags`, `runStatus`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

from autoretrain.adapters.localworkspace.catalog import Catalog, now
from autoretrain.domain import JobState
from autoretrain.domain.events import RUN_COMPLETED, RUN_STATUS_CHANGED
from autoretrain.settings import LOCAL_WORKSPACE_TOPIC

__all__ = ["PIPELINE_RUN_TYPE", "RunEvents", "run_event"]

log = logging.getLogger("autoretrain.adapters.localworkspace.workspace")

PIPELINE_RUN_TYPE = "azureml.PipelineRun"


def run_event(job: sqlite3.Row, event_type: str, state: JobState) -> dict[str, Any]:
    """The Event Grid event of type `event_type` for the job (its catalogue row) now in `state`."""
    experiment_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"autoretrain-local/{job['experiment']}"))
    data: dict[str, Any] = {
        "experimentId": experiment_id,
        "experimentName": job["experiment"],
        "runId": job["name"],
        "runType": PIPELINE_RUN_TYPE,
        "runTags": json.loads(job["tags"]),
        "runProperties": {"azureml.runsource": "azureml.PipelineRun", "data": job["data"]},
    }
    if event_type == RUN_STATUS_CHANGED:
        data["runStatus"] = state.value
    return {
        "id": str(uuid.uuid4()),
        "topic": LOCAL_WORKSPACE_TOPIC,
        "subject": f"experiments/{experiment_id}/runs/{job['name']}",
        "eventType": event_type,
        "eventTime": now(),
        "data": data,
        "dataVersion": "2",
        "metadataVersion": "1",
    }


class RunEvents:
    """Sends each job's run events to `on_event` (None: sends nothing)."""

    def __init__(self, catalog: Catalog, on_event: Callable[[dict[str, Any]], None] | None) -> None:
        self._catalog = catalog
        self._on_event = on_event

    def changed(self, job: str, state: JobState) -> None:
        """The job is now in `state`: RunStatusChanged, and RunCompleted after it if it completed."""
        if self._on_event is None:
            return
        row = self._catalog.job(job)
        if row is None:
            return
        self._send(self._on_event, run_event(row, RUN_STATUS_CHANGED, state))
        if state is JobState.COMPLETED:
            self._send(self._on_event, run_event(row, RUN_COMPLETED, state))

    @staticmethod
    def _send(on_event: Callable[[dict[str, Any]], None], event: dict[str, Any]) -> None:
        try:
            on_event(event)
        except Exception:  # the job's result is in the catalogue; reconcile can still find it
            log.exception("job.event_not_sent job=%s type=%s", event["data"]["runId"], event["eventType"])
