"""How the Azure ML adapter makes its calls: bounded retries for an Event Grid trigger, the
service's job statuses in the port's words, and every SDK error as one WorkspaceError line.

Throttling (429), server errors (5xx) and timeouts are retried by azure-core's retry policy first
(at most 3 times within 15 s); when they persist the error propagates, so Event Grid retries the event.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from azure.ai.ml.exceptions import MlException
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import RetryPolicy

from autoretrain.datacontract import DATA_ERROR_EXIT
from autoretrain.domain import (
    JobState,
)
from autoretrain.domain.errors import (
    WorkspaceError,
    WorkspaceRejectedError,
    WorkspaceUnavailableError,
)

__all__ = [
    "CALL_BUDGET_SECONDS",
    "CALL_RETRIES",
    "RETRY_AFTER_CAP_SECONDS",
    "BoundedRetryPolicy",
    "client_options",
    "data_rejection",
    "job_state",
    "one_line",
    "service_error",
    "service_reason",
    "translated",
]


# Azure ML job statuses (azure.ai.ml.constants.JobStatus) in the port's words. Anything not listed
# counts as running: a status added by the service later must not end a run in our ledger.
_STATES: Mapping[str, JobState] = {
    "NotStarted": JobState.QUEUED,
    "Queued": JobState.QUEUED,
    "Preparing": JobState.QUEUED,
    "Provisioning": JobState.QUEUED,
    "Starting": JobState.QUEUED,
    "Running": JobState.RUNNING,
    "Finalizing": JobState.RUNNING,
    "CancelRequested": JobState.RUNNING,
    "NotResponding": JobState.RUNNING,
    "Paused": JobState.RUNNING,
    "Unknown": JobState.RUNNING,
    "Completed": JobState.COMPLETED,
    "Failed": JobState.FAILED,
    "Canceled": JobState.CANCELED,
}


_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


# Event Grid waits 30 s for an answer, then redelivers. One SDK call may retry, but must give up
# well before that, so the invocation raises (TransientError) and Event Grid's own retry takes over.
CALL_RETRIES = 3  # after the first try


CALL_BUDGET_SECONDS = 15.0  # every try and wait of one call, together


RETRY_AFTER_CAP_SECONDS = 3.0  # a longer Retry-After (a throttled workspace) is not waited out here


class BoundedRetryPolicy(RetryPolicy):  # type: ignore[type-arg]
    """azure-core's retry policy with bounds for an Event Grid trigger: 3 retries, 0.5/1/2 s apart,
    a Retry-After honoured up to 3 s, and at most 15 s for one call. The defaults (10 retries,
    Retry-After honoured in full, a 300 s read timeout) can hold one call for minutes."""

    def __init__(self) -> None:
        super().__init__(retry_total=CALL_RETRIES, retry_backoff_factor=0.5, retry_backoff_max=2,
                         timeout=CALL_BUDGET_SECONDS)

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else min(after, RETRY_AFTER_CAP_SECONDS)


def client_options() -> dict[str, Any]:
    """Keyword arguments for MLClient: the bounded retry policy and per-try timeouts."""
    return {"retry_policy": BoundedRetryPolicy(), "connection_timeout": 5, "read_timeout": 10}


_SPACE = re.compile(r"\s+")


def job_state(status: object) -> JobState:
    """The port's JobState for an Azure ML job status (a string, or the SDK's JobStatus enum)."""
    text = str(getattr(status, "value", status) or "NotStarted")
    return _STATES.get(text, JobState.RUNNING)


# How Azure ML words a command step that exited non-zero: "Execution failed. User process 'python'
# exited with status code 65. Please check log file 'user_logs/std_log.txt' for error details.
# Error: <the end of the step's stderr>".
_EXIT = re.compile(rf"exited with status code {DATA_ERROR_EXIT}\b")


def data_rejection(error: str | None) -> str | None:
    """The step's own reason when a failed step exited with DATA_ERROR_EXIT (the data file breaks the
    contract, which the loop quarantines); None for any other failure, which stays ours."""
    if not error or not _EXIT.search(error):
        return None
    _, found, reason = error.partition("Error: ")
    return reason.strip() if found and reason.strip() else error


def one_line(text: object, limit: int = 300) -> str:
    line = _SPACE.sub(" ", str(text)).strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def service_reason(exc: BaseException) -> str:
    """The service's own message, without the SDK's multi-line decoration."""
    if isinstance(exc, HttpResponseError):
        error = getattr(exc, "error", None)
        message = getattr(error, "message", None) or exc.message or exc.reason
        return one_line(f"HTTP {exc.status_code}: {message}" if exc.status_code else message)
    if isinstance(exc, MlException):
        return one_line(exc.message)
    return one_line(exc)


def service_error(action: str, exc: BaseException) -> WorkspaceError:
    """One WorkspaceError line for a failed SDK call: what failed, why, and what happens next."""
    reason = service_reason(exc)
    status = getattr(exc, "status_code", None)
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        # Retried: a role assignment may still be propagating, or ops may fix it within the retries.
        hint = "give the function's identity AzureML Data Scientist on the workspace; the event is retried"
        return WorkspaceUnavailableError(f"{action} failed: {reason}; {hint}")
    if isinstance(exc, ServiceRequestError | ServiceResponseError) or status in _TRANSIENT_STATUS:
        hint = "Azure ML is throttling or unavailable; the event is retried"
        return WorkspaceUnavailableError(f"{action} failed: {reason}; {hint}")
    if isinstance(exc, HttpResponseError) and status is not None and 400 <= status < 500:
        return WorkspaceRejectedError(f"{action} failed: {reason}")
    return WorkspaceError(f"{action} failed: {reason}")


@contextmanager
def translated(action: str) -> Iterator[None]:
    try:
        yield
    except (AzureError, MlException) as exc:
        raise service_error(action, exc) from exc
