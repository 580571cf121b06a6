"""Local stand-ins for the Azure parts that cannot run on a laptop: the Functions host and Event Grid."""

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
