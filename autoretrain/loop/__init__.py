"""The use cases: ingest a new blob version, complete a finished job, reconcile what was missed.

Written against the ports only (`autoretrain.domain.ports`). Each use case returns an outcome that says
what it decided; the trigger logs it. Event Grid delivers at least once, may reorder and may drop
(a dead-lettered event, a completion sent while the app was down), and a worker may die anywhere,
so every step is safe to repeat:

- the ledger's atomic claim makes a second delivery a no-op, and its ETag-matched moves let one
  worker win each state change;
- with `training.jobs_in_flight` (default 1), an accepted version waits while that many jobs run,
  and the versions waiting when one ends are the new data of one next job (`dispatch`): the ledger's
  schedule row, written with its ETag, gives each version to one job only;
- work in progress (`claimed`, `completing`) is held under a lease; when the holder dies, a
  redelivery or `reconcile` takes it over after the lease, and gives up (`failed`, with the last
  error) after `max_takers` takers;
- the workspace and storage calls are idempotent by the blob version's `WorkKey`, so a taker that
  repeats a step the dead worker already did gets the same data version, job and model;
- transient errors raise (Event Grid retries), permanent ones end in a ledger state with a reason.
"""

from __future__ import annotations

from autoretrain.loop.complete import complete, complete_record
from autoretrain.loop.deps import Deps, LoopConfig
from autoretrain.loop.dispatch import dispatch
from autoretrain.loop.ingest import ingest, ingest_blob
from autoretrain.loop.outcomes import (
    CompleteOutcome,
    Duplicate,
    Failed,
    Ignored,
    IngestOutcome,
    InProgress,
    JobFailed,
    Quarantined,
    Registered,
    Several,
    Skipped,
    Submitted,
    Waiting,
    log_outcome,
)
from autoretrain.loop.reconcile import Found, ReconcileReport, reconcile
from autoretrain.loop.retrain import retrain

__all__ = [
    "CompleteOutcome",
    "Deps",
    "Duplicate",
    "Failed",
    "Found",
    "Ignored",
    "InProgress",
    "IngestOutcome",
    "JobFailed",
    "LoopConfig",
    "Quarantined",
    "ReconcileReport",
    "Registered",
    "Several",
    "Skipped",
    "Submitted",
    "Waiting",
    "complete",
    "complete_record",
    "dispatch",
    "ingest",
    "ingest_blob",
    "log_outcome",
    "reconcile",
    "retrain",
]
