"""Local stand-ins for the Azure parts that cannot run on a laptop: the Functions host and Event Grid.

    stack        Azurite + the host + Event Grid, as one object (`autoretrain up`, `demo`)
    host         the local Functions host (`LocalHost`), put together from:
      appindex     the function app imported and indexed
      webhook      its HTTP surface: the real host's URLs
      timers       timer functions on their schedules
      workers      its worker processes (hostworker: one of them)
      hostlog      its log lines, in the real host's shape
    eventgrid    blob events and their delivery, with retries and dead-lettering
    azurite      Azurite, started on demand
    mlflow_ui    `autoretrain ui`: the MLflow UI on the local tracking store
"""

from __future__ import annotations

import json
import urllib.request

__all__ = ["host_answers"]


def host_answers(url: str) -> bool:
    """Whether a Functions host (this local one, or Core Tools) at `url` says it is running. Only
    the standard library: the CLI asks before it would import the host."""
    try:
        with urllib.request.urlopen(f"{url}/admin/host/status", timeout=1) as answer:
            return bool(json.load(answer).get("state") == "Running")
    except (OSError, ValueError):
        return False
