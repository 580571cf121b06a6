"""The ledger's record of one attempt of a blob version, and its moves: a state machine.

Each move is a frozen value that names what changes; `LedgerRecord.after(move, now)` is the one
transition function, refusing a move `ALLOWED_MOVES` does not list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from autoretrain.domain.model import BlobRef, Metrics, WorkKey

__all__ = [
    "ALLOWED_MOVES",
    "HISTORY_LIMIT",
    "Fail",
    "Finish",
    "Hold",
    "LedgerRecord",
    "LedgerState",
    "Move",
    "Moved",
    "Quarantine",
    "Release",
    "Requeue",
    "Schedule",
    "Skip",
    "StartCompleting",
    "Submit",
    "TakeOver",
    "Wait",
    "oldest_first",
]


class LedgerState(StrEnum):
    """Where one blob version stands.

    claimed → quarantined | skipped | submitted | waiting | failed;
    waiting → submitted (the contract's `jobs_in_flight` jobs were running: it is the new data of the
    next job, with every other version waiting then) | failed (that job could never be submitted);
    submitted → completing → done | failed | quarantined (prep found the file breaks the contract)
    | waiting (prep found another file of its job breaks it: it goes into the next job)
    | held (its job only scored the champion on it, the contract's `retrain_when: champion_slips`,
    and the champion still holds: nothing is trained, and it joins later training windows as done
    versions do) | waiting (the champion slipped on it, or could not be scored: it trains).
    `claimed` and `completing` are held under a lease: work in progress that another worker may
    take over once the lease has run out (its holder crashed).
    """

    CLAIMED = "claimed"
    WAITING = "waiting"
    QUARANTINED = "quarantined"
    SKIPPED = "skipped"
    SUBMITTED = "submitted"
    COMPLETING = "completing"
    DONE = "done"
    HELD = "held"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (
            LedgerState.QUARANTINED, LedgerState.SKIPPED, LedgerState.DONE, LedgerState.HELD, LedgerState.FAILED
        )

    @property
    def accepted(self) -> bool:
        """Its file passed prep and joins later training windows: it trained a model, or the champion
        held on it."""
        return self in (LedgerState.DONE, LedgerState.HELD)

    @property
    def leased(self) -> bool:
        return self in (LedgerState.CLAIMED, LedgerState.COMPLETING)


ALLOWED_MOVES: Mapping[LedgerState, frozenset[LedgerState]] = MappingProxyType(
    {
        LedgerState.CLAIMED: frozenset(
            {LedgerState.CLAIMED, LedgerState.QUARANTINED, LedgerState.SKIPPED, LedgerState.SUBMITTED,
             LedgerState.WAITING, LedgerState.FAILED}
        ),
        LedgerState.WAITING: frozenset({LedgerState.SUBMITTED, LedgerState.FAILED}),
        LedgerState.SUBMITTED: frozenset({LedgerState.COMPLETING}),
        LedgerState.COMPLETING: frozenset(
            {LedgerState.COMPLETING, LedgerState.DONE, LedgerState.HELD, LedgerState.FAILED,
             LedgerState.QUARANTINED, LedgerState.WAITING}
        ),
        LedgerState.QUARANTINED: frozenset(),
        LedgerState.SKIPPED: frozenset(),
        LedgerState.DONE: frozenset(),
        LedgerState.HELD: frozenset(),
        LedgerState.FAILED: frozenset(),
    }
)


# One frozen object per ledger move: what changes is named, nothing else can.


@dataclass(frozen=True, slots=True)
class TakeOver:
    """A worker takes over leased work whose holder is gone (its lease ran out): one more taker."""

    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Release:
    """The holder gives its lease back after a transient failure, so a retry may start at once."""

    reason: str


@dataclass(frozen=True, slots=True)
class Quarantine:
    reason: str


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Registered as `data_version`, it waits for a job: the contract's jobs in flight are running."""

    data_version: str


@dataclass(frozen=True, slots=True)
class Requeue:
    """Its job ended without a model through no fault of its own (prep rejected another of the job's
    files): it waits for the next job, without the file at fault."""

    reason: str


@dataclass(frozen=True, slots=True)
class Submit:
    data_version: str
    job: str
    champion: str | None = None  # the champion version the job scores the new model against
    training_set: str | None = None  # the training-set data version the job trains on
    members: int = 0  # how many data versions it holds (the job tests on all of them)
    trained_on: int = 0  # how many of them, the newest, the model trains on (the contract's window)


@dataclass(frozen=True, slots=True)
class StartCompleting:
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Finish:
    model_version: str
    metrics: Metrics
    promoted: bool
    decision: str = ""  # the champion gate's one line: what it compared and what it decided


@dataclass(frozen=True, slots=True)
class Hold:
    """The champion (`champion`, a model version) still holds on this version: `metrics` are its scores
    on the version's rows (`test_rows`), its `champion` values those it was promoted with."""

    champion: str
    metrics: Metrics
    decision: str


@dataclass(frozen=True, slots=True)
class Fail:
    reason: str


Move = TakeOver | Release | Quarantine | Skip | Wait | Requeue | Submit | StartCompleting | Finish | Hold | Fail


HISTORY_LIMIT = 40  # moves kept per record (a table entity holds 64 KiB)


@dataclass(frozen=True, slots=True)
class Moved:
    """One move in a record's timeline: what it became, when, and a short note."""

    state: str  # the state after the move, or taken_over / released for a lease
    at: datetime
    note: str = ""

    @classmethod
    def of(cls, move: Move, state: LedgerState, now: datetime, takers: int) -> Moved:
        match move:
            case TakeOver():
                return cls("taken_over", now, f"taker {takers + 1}")
            case Release(reason):
                return cls("released", now, reason[:200])
            case Submit(data_version, job, _, _, members, trained_on):
                return cls(state.value, now, f"{data_version}, job {job}, trains on {trained_on} of {members}")
            case Finish(model_version, _, promoted, _):
                return cls(state.value, now, f"{model_version}{', promoted' if promoted else ''}")
            case Wait(data_version):
                return cls(state.value, now, f"{data_version}, waiting for a job")
            case Hold(champion, metrics, _):
                said = f"{metrics.primary} {metrics.primary_value:.4g} on {metrics.test_rows} rows"
                return cls(state.value, now, f"champion {champion} holds: {said}, promoted with "
                                             f"{metrics.champion_value or 0:.4g}")
            case Quarantine(reason) | Skip(reason) | Fail(reason) | Requeue(reason):
                return cls(state.value, now, reason[:200])
        return cls(state.value, now)

    def as_row(self) -> dict[str, str]:
        return {"state": self.state, "at": self.at.isoformat(), "note": self.note}

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> Moved:
        return cls(row["state"], datetime.fromisoformat(row["at"]), row.get("note", ""))


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One attempt of a blob version, as the ledger keeps it: attempt 0 is its own, event-driven run, and
    attempt n its nth `autoretrain retrain` (`attempt`, `first_key`). `etag` is the ledger row's own,
    for optimistic updates.

    `lease_until` bounds how long the holder of a `claimed` or `completing` record may take before
    another worker takes it over; `takers` counts the workers that took its lease, the first included.
    Each attempt is a record of its own (key `origin.attempt(n)`), so the ledger keeps every attempt of
    a blob version.
    """

    key: WorkKey
    blob: BlobRef
    state: LedgerState
    event_id: str
    created: datetime
    updated: datetime
    data_version: str | None = None
    job: str | None = None
    model_version: str | None = None
    metrics: Metrics | None = None
    promoted: bool | None = None
    reason: str | None = None
    lease_until: datetime | None = None
    takers: int = 1  # workers that took the lease, the first included
    champion: str | None = None
    decision: str | None = None
    # The training set the job reads (its MLTable names the files) and two counts, never the list of
    # its members: a Table property holds 64 KiB, and that list grows with every accepted file.
    training_set: str | None = None
    members: int = 0
    trained_on: int = 0
    attempt: int = 0  # 0: the blob version's own, event-driven attempt; n: its nth `autoretrain retrain`
    first_key: WorkKey | None = None  # for attempt n > 0: the key of attempt 0
    history: tuple[Moved, ...] = ()  # every move, oldest first: the record's timeline
    etag: str | None = None

    @classmethod
    def claimed(
        cls, blob: BlobRef, key: WorkKey, event_id: str, now: datetime, lease_until: datetime,
        *, attempt: int = 0, first_key: WorkKey | None = None,
    ) -> LedgerRecord:
        """A new record, as a claim writes it: the first entry of its timeline."""
        note = f"retrain {attempt}" if attempt else f"event {event_id}"
        return cls(
            key=key, blob=blob, state=LedgerState.CLAIMED, event_id=event_id, created=now, updated=now,
            lease_until=lease_until, attempt=attempt, first_key=first_key,
            history=(Moved(LedgerState.CLAIMED.value, now, note),),
        )

    @property
    def origin(self) -> WorkKey:
        """The key of attempt 0, which every attempt of the blob version shares: its data snapshot's."""
        return self.first_key or self.key

    def lease_expired(self, now: datetime) -> bool:
        return self.lease_until is None or self.lease_until <= now

    def after(self, move: Move, now: datetime) -> LedgerRecord:
        """This record once `move` is applied at `now`; ValueError when the move is not allowed."""
        state, changes = self._changes(move)
        if isinstance(move, TakeOver | Release) and not self.state.leased:
            raise ValueError(f"ledger: {self.key} is {self.state.value}, which holds no lease.")
        if state not in ALLOWED_MOVES[self.state]:
            raise ValueError(f"ledger: {self.key} cannot move from {self.state.value} to {state.value}.")
        if state.final or state is LedgerState.WAITING:
            changes["lease_until"] = None
        changes["history"] = (*self.history, Moved.of(move, state, now, self.takers))[-HISTORY_LIMIT:]
        return replace(self, state=state, updated=now, etag=None, **changes)

    def _changes(self, move: Move) -> tuple[LedgerState, dict[str, Any]]:
        """The state a move leads to, and the fields it changes."""
        match move:
            case TakeOver(lease_until):
                return self.state, {"lease_until": lease_until, "takers": self.takers + 1}
            case Release(reason):
                return self.state, {"lease_until": None, "reason": reason}
            case Quarantine(reason):
                return LedgerState.QUARANTINED, {"reason": reason}
            case Skip(reason):
                return LedgerState.SKIPPED, {"reason": reason}
            case Wait(data_version):
                return LedgerState.WAITING, {"data_version": data_version, "reason": None}
            case Requeue(reason):
                # It keeps the job's name until the next job takes it: "waiting, after job J".
                return LedgerState.WAITING, {
                    "reason": reason, "champion": None, "training_set": None, "members": 0, "trained_on": 0,
                    "takers": 1,
                }
            case Submit(data_version, job, champion, training_set, members, trained_on):
                return LedgerState.SUBMITTED, {
                    "data_version": data_version, "job": job, "champion": champion, "reason": None,
                    "training_set": training_set, "members": members, "trained_on": trained_on,
                }
            case StartCompleting(lease_until):
                return LedgerState.COMPLETING, {"lease_until": lease_until, "takers": 1}
            case Finish(model_version, metrics, promoted, decision):
                return LedgerState.DONE, {
                    "model_version": model_version, "metrics": metrics, "promoted": promoted,
                    "decision": decision or None, "reason": None,
                }
            case Hold(champion, metrics, decision):
                return LedgerState.HELD, {
                    "champion": champion, "metrics": metrics, "decision": decision, "reason": None,
                }
            case Fail(reason):
                return LedgerState.FAILED, {"reason": reason}

    def as_row(self) -> dict[str, Any]:
        """A flat, JSON-friendly view: what `autoretrain status --json` prints."""
        return {
            "blob": self.blob.path,
            "etag": self.blob.etag,
            "key": self.key.value,
            "state": self.state.value,
            "data_version": self.data_version,
            "job": self.job,
            "model_version": self.model_version,
            "metrics": dict(self.metrics.values) if self.metrics else None,
            "primary_metric": self.metrics.primary if self.metrics else None,
            "promoted": self.promoted,
            "champion": self.champion,  # the champion's version the job scored (a held one: that held)
            "champion_metrics": dict(self.metrics.champion) if self.metrics and self.metrics.champion else None,
            "test_rows": self.metrics.test_rows if self.metrics else None,
            "decision": self.decision,
            "training_set": self.training_set,
            "members": self.members,
            "trained_on": self.trained_on,
            "reason": self.reason,
            "takers": self.takers,
            "attempt": self.attempt,
            "history": [m.as_row() for m in self.history],
            "first_key": self.first_key.value if self.first_key else None,
            "lease_until": self.lease_until.isoformat() if self.lease_until else None,
            "created": self.created.isoformat(),
            "updated": self.updated.isoformat(),
        }


def oldest_first(records: Iterable[LedgerRecord]) -> list[LedgerRecord]:
    """The records in the order their versions came (their key breaks a tie): a job's versions, a
    training window."""
    return sorted(records, key=lambda r: (r.created, r.key.value))


@dataclass(frozen=True, slots=True)
class Schedule:
    """The jobs in flight, each with the blob versions that are its new data: one shared row of the
    ledger, written only if it is still as read (`etag`), so that a version is the new data of one
    job only and no more jobs run than the contract allows. A job leaves it once all its versions
    are final (done, failed or quarantined) or waiting again."""

    jobs: Mapping[str, tuple[WorkKey, ...]] = field(default_factory=dict)
    etag: str | None = None
    # When each job took its slot (a job taken before this was kept has none).
    since: Mapping[str, datetime] = field(default_factory=dict)

    @property
    def assigned(self) -> frozenset[WorkKey]:
        """Every version some job in flight has as its new data."""
        return frozenset(key for keys in self.jobs.values() for key in keys)

    def with_job(self, job: str, keys: tuple[WorkKey, ...], since: datetime | None = None) -> Schedule:
        return Schedule({**self.jobs, job: keys}, self.etag, {**self.since, **({job: since} if since else {})})

    def without(self, job: str) -> Schedule:
        return Schedule({name: keys for name, keys in self.jobs.items() if name != job}, self.etag,
                        {name: when for name, when in self.since.items() if name != job})

    def starting(self, job: str, now: datetime, lease: timedelta) -> bool:
        """Whether `job` took its slot less than `lease` ago: the worker that took it may still be
        submitting it and moving its versions (a hundred ledger writes take a while), so a versions'
        redelivery or a reconcile pass leaves it to that worker. After the lease, it is presumed dead,
        as the holder of a claim is."""
        taken = self.since.get(job)
        return taken is not None and now - taken < lease
