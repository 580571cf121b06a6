"""The domain: what the loop reasons about, in its own words, with no SDK and no I/O.

    model.py    the values: a blob version and its work key, data versions, jobs and their state,
                metrics, models
    ledger.py   the ledger record of one attempt, and its moves (a state machine)
    errors.py   the one error hierarchy, drawn in its docstring
    events.py   the Event Grid events we take, parsed into our own types
    ports.py    the Protocols the loop is written against (Workspace, Ledger, BlobStore, Clock)

Imports only the standard library: adapters depend on it, never the other way round.
"""

from __future__ import annotations

from autoretrain.domain.ledger import (
    ALLOWED_MOVES,
    HISTORY_LIMIT,
    Fail,
    Finish,
    Hold,
    LedgerRecord,
    LedgerState,
    Move,
    Moved,
    Quarantine,
    Release,
    Requeue,
    Schedule,
    Skip,
    StartCompleting,
    Submit,
    TakeOver,
    Wait,
    oldest_first,
)
from autoretrain.domain.model import (
    JOB_OUTPUTS,
    JOB_TAG,
    MODE_TAG,
    NO_CHAMPION_PATH,
    BlobRef,
    DataVersion,
    JobMode,
    JobState,
    JobStatus,
    ListedBlob,
    Metrics,
    ModelVersion,
    PipelineJob,
    TrainingMember,
    WorkKey,
    job_output_path,
)

__all__ = [
    "ALLOWED_MOVES",
    "HISTORY_LIMIT",
    "JOB_OUTPUTS",
    "JOB_TAG",
    "MODE_TAG",
    "NO_CHAMPION_PATH",
    "BlobRef",
    "DataVersion",
    "Fail",
    "Finish",
    "Hold",
    "JobMode",
    "JobState",
    "JobStatus",
    "LedgerRecord",
    "LedgerState",
    "ListedBlob",
    "Metrics",
    "ModelVersion",
    "Move",
    "Moved",
    "PipelineJob",
    "Quarantine",
    "Release",
    "Requeue",
    "Schedule",
    "Skip",
    "StartCompleting",
    "Submit",
    "TakeOver",
    "TrainingMember",
    "Wait",
    "WorkKey",
    "job_output_path",
    "oldest_first",
]
