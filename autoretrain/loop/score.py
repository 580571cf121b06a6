"""Score first: with `training: {retrain_when: champion_slips}` a new version trains only when the
champion has slipped on it.

Ingest registers the version and submits a scoring job (the pipeline in mode `score`: it trains
nothing and scores the champion on every row of the version, which the champion never saw). When
that job ends, completion compares the champion's primary metric there with the value the champion
was promoted with: within the contract's `slip`, the version is `held` (no training job; it joins
later training windows as a done version does); otherwise it waits for a training job as any
accepted version does. A scoring job that fails through no fault of the data, or a champion that
changed meanwhile, is no reason to skip training: the version trains.

The scoring job is named by `WorkKey.scoring()` of the version's key and tagged `MODE_TAG: score`,
so a redelivered or reconciled submission finds it, and completion tells it from a training job.
"""

from __future__ import annotations

import logging

from autoretrain.domain import (
    JOB_TAG,
    MODE_TAG,
    Hold,
    JobMode,
    JobState,
    JobStatus,
    LedgerRecord,
    Metrics,
    ModelVersion,
    PipelineJob,
    Requeue,
    StartCompleting,
    Submit,
    TrainingMember,
)
from autoretrain.logs import log_event, trace_context
from autoretrain.loop.deps import Deps
from autoretrain.loop.outcomes import CompleteOutcome, Held, Submitted, Waiting
from autoretrain.loop.steps import _move

__all__ = ["is_scoring", "rescore", "score_first", "scored", "submit_scoring"]

log = logging.getLogger("autoretrain.loop")


def is_scoring(record: LedgerRecord, job: str | None) -> bool:
    """Whether `job` is the job that scores the champion on this record's version."""
    return job is not None and job == record.key.scoring().job_name


def score_first(record: LedgerRecord, data: str, deps: Deps) -> Submitted | None:
    """Submit the job that scores the champion on the version (registered as `data`), and move the
    record to submitted, naming it; None when there is no champion to score (the version trains)."""
    champion = deps.workspace.champion()
    if champion is None:
        return None
    job = submit_scoring(record, data, champion, deps)
    training_set = job.tags.get("training_set", "")
    submit = Submit(data, job.name, job.tags.get("champion") or champion.version, training_set, 1, 0)
    return Submitted(_move(deps.ledger, record, submit), job)


def submit_scoring(record: LedgerRecord, data: str, champion: ModelVersion, deps: Deps) -> PipelineJob:
    """Submit (or find again: it is named by the version's key) the job that scores `champion` on
    every row of the version `data`, alone."""
    key = record.key.scoring()
    member = TrainingMember(data, record.blob.copy_name(record.origin))
    training_set = deps.workspace.register_training_set(key, [member])
    tags = {JOB_TAG: key.value, MODE_TAG: JobMode.SCORE.value, "blob": record.blob.path, "etag": record.blob.etag,
            "champion": champion.version, "training_set": f"{training_set.name}:{training_set.version}",
            **trace_context()}
    job = deps.workspace.submit(training_set, key, tags, champion=champion, new_files=1, mode=JobMode.SCORE)
    log_event(log, logging.INFO, "ingest.scoring_submitted", job=job.name, data_version=data,
              champion_version=job.tags.get("champion") or champion.version)
    return job


def rescore(record: LedgerRecord, deps: Deps) -> Submitted | Waiting:
    """The workspace lost the scoring job of a submitted record: submit it again (the same name), for
    the champion now. (With no champion, which no workspace loses, the version trains.)"""
    champion = deps.workspace.champion()
    if champion is None:
        completing = _move(deps.ledger, record, StartCompleting(deps.clock() + deps.config.lease))
        reason = f"the workspace lost scoring job {record.job} and has no champion now: it trains"
        return Waiting(_move(deps.ledger, completing, Requeue(reason)), deps.contract.training.jobs_in_flight)
    return Submitted(record, submit_scoring(record, str(record.data_version), champion, deps))


def scored(record: LedgerRecord, status: JobStatus, deps: Deps) -> CompleteOutcome:
    """The scoring job of a leased (`completing`) record ended without a rejection of its data: the
    version is held, or waits for a training job."""
    slots = deps.contract.training.jobs_in_flight
    if status.state is not JobState.COMPLETED:
        reason = (f"scoring job {status.name} {status.state.value.lower()}"
                  f"{f' in step {status.failed_step!r}' if status.failed_step else ''}: "
                  f"{status.error or 'no error message'} (log: {status.log}); it trains instead")
        log_event(log, logging.WARNING, "complete.scoring_failed", job=status.name, reason=reason)
        return Waiting(_move(deps.ledger, record, Requeue(reason)), slots)
    metrics = deps.workspace.job_metrics(status.name)
    champion = deps.workspace.champion()
    held, why = _holds(record, metrics, champion, deps.contract.training.slip)
    if not held or champion is None:
        log_event(log, logging.INFO, "complete.champion_slipped", job=status.name, metric=metrics.primary,
                  value=metrics.primary_value, reason=why)
        return Waiting(_move(deps.ledger, record, Requeue(why)), slots)
    kept = Metrics(metrics.values, metrics.primary, metrics.greater_is_better, champion=champion.metrics.values,
                   test_rows=metrics.test_rows)
    held_record = _move(deps.ledger, record, Hold(champion.version, kept, why))
    # Where ops look for models (the registry; MLflow locally): the champion says when it last held.
    deps.workspace.record_decision(champion, f"{record.blob.path}: {why}", tag="held")
    return Held(held_record)


def _holds(record: LedgerRecord, metrics: Metrics, champion: ModelVersion | None, slip: float) -> tuple[bool, str]:
    """Whether the champion holds on the version, and the one line that says why (or why not)."""
    if champion is None or champion.version != record.champion:
        now = champion.version if champion else "none"
        return False, f"the champion changed while version {record.data_version} was scored (now {now}): it trains"
    if champion.metrics.primary != metrics.primary:
        return False, (f"champion {champion.version} was promoted on {champion.metrics.primary}, the contract's "
                       f"metric is {metrics.primary}: it trains")
    value, promoted = metrics.primary_value, champion.metrics.primary_value
    lost = promoted - value if metrics.greater_is_better else value - promoted
    said = (f"champion {champion.version} scored {metrics.primary} {value:.4f} on the {metrics.test_rows} rows of "
            f"{record.data_version}, promoted with {promoted:.4f}")
    if lost <= slip:
        return True, f"held: {said}; within slip {slip:g}, so nothing is trained"
    return False, f"{said}; it slipped by {lost:.4f}, more than {slip:g}: it trains"
