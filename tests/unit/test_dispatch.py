"""One job per burst: with `jobs_in_flight: 1` (the default), a version accepted while a job runs waits,
and every version waiting when the job ends is the new data of one next job. Over fakes of the ports."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from fakes import FakeBlobStore, FakeLedger, FakeWorkspace
from test_faults import Crashing, WorkerDied, make_deps
from test_loop import BASE_CONTRACT, GOOD_CSV, blob_event, run_event

from autoretrain import loop
from autoretrain.domain import BlobRef, JobState, LedgerState, Metrics, WorkKey
from autoretrain.domain.errors import WorkspaceRejectedError

METRICS = Metrics({"f1_macro": 0.9}, primary="f1_macro", test_rows=10)
ONE_IN_FLIGHT = BASE_CONTRACT  # the default: training.jobs_in_flight 1


class Loop:
    """The loop over fakes, with a contract of its own."""

    def __init__(self, tmp_path: Path, contract: str = ONE_IN_FLIGHT) -> None:
        self.ledger, self.workspace, self.blobs = FakeLedger(), FakeWorkspace(), FakeBlobStore()
        self.deps = make_deps(tmp_path, self.ledger, self.workspace, self.blobs, contract_text=contract)

    def drop(self, *names: str) -> list[BlobRef]:
        refs = [self.blobs.put("incoming", name, GOOD_CSV) for name in names]
        for ref in refs:
            loop.ingest(blob_event(ref, event_id=f"ev-{ref.name}"), self.deps)
        return refs

    def running(self) -> list[str]:
        return [job for job, status in self.workspace.statuses.items() if not status.state.terminal]

    def finish(self, job: str, state: JobState = JobState.COMPLETED, **status: str) -> loop.CompleteOutcome:
        self.workspace.finish(job, state, METRICS if state is JobState.COMPLETED else None, **status)
        return loop.complete(run_event(WorkKey.of_job(job), event_id=f"run-{job}"), self.deps)

    def run_all(self, limit: int = 20) -> list[str]:
        """Finish each job as it starts until none runs; the jobs, in the order they ran."""
        ran: list[str] = []
        while (running := self.running()) and len(ran) < limit:
            ran.append(running[0])
            self.finish(running[0])
        return ran

    def state(self, ref: BlobRef) -> LedgerState | None:
        record = self.ledger.get(WorkKey.for_blob(ref))
        return record.state if record else None


def _new_data(world: Loop) -> dict[str, set[str]]:
    """Each job's new data, as the ledger records it: the versions whose record names the job."""
    jobs: dict[str, set[str]] = {}
    for record in world.ledger.rows.values():
        if record.job:
            jobs.setdefault(record.job, set()).add(record.key.value)
    return jobs


def test_ten_files_at_once_make_two_jobs_and_the_last_model_trains_on_all_ten(tmp_path: Path) -> None:
    world = Loop(tmp_path)
    refs = world.drop(*(f"day-{n:02d}.csv" for n in range(10)))

    assert len(world.running()) == 1, "the first file starts the one job in flight; the other nine wait"
    assert [world.state(r) for r in refs] == [LedgerState.SUBMITTED] + [LedgerState.WAITING] * 9
    ran = world.run_all()

    assert len(ran) == 2
    assert [world.state(r) for r in refs] == [LedgerState.DONE] * 10
    last = WorkKey.of_job(ran[-1])
    assert len(world.workspace.training_sets[last.value]) == 10, "the last model's training set names all ten"
    assert {len(keys) for keys in _new_data(world).values()} == {1, 9}
    assert sorted(k for keys in _new_data(world).values() for k in keys) == sorted(
        WorkKey.for_blob(r).value for r in refs), "each version was the new data of exactly one job"
    # One model per job, every version of the job done with it; the schedule is empty again.
    models = {world.ledger.get(WorkKey.for_blob(r)).model_version for r in refs}  # type: ignore[union-attr]
    assert len(models) == 2 and len(world.workspace.models) == 2
    assert world.ledger.schedule().jobs == {}


def test_no_limit_keeps_a_job_per_file(tmp_path: Path) -> None:
    world = Loop(tmp_path, BASE_CONTRACT + "training: {jobs_in_flight: 0}\n")
    world.drop(*(f"day-{n}.csv" for n in range(4)))
    assert len(world.running()) == 4
    assert len(world.run_all()) == 4


def test_two_in_flight_let_a_second_job_start(tmp_path: Path) -> None:
    world = Loop(tmp_path, BASE_CONTRACT + "training: {jobs_in_flight: 2}\n")
    refs = world.drop(*(f"day-{n}.csv" for n in range(5)))
    assert len(world.running()) == 2 and [world.state(r) for r in refs].count(LedgerState.WAITING) == 3
    assert len(world.run_all()) == 3
    assert {world.state(r) for r in refs} == {LedgerState.DONE}


def test_a_quiet_period_lets_a_burst_settle_into_one_job(tmp_path: Path) -> None:
    world = Loop(tmp_path, BASE_CONTRACT + "training: {quiet_seconds: 60}\n")
    refs = world.drop("a.csv", "b.csv", "c.csv")
    assert world.running() == [] and {world.state(r) for r in refs} == {LedgerState.WAITING}

    loop.reconcile(world.deps, grace=timedelta(hours=1))  # 0 s later: still too soon
    assert world.running() == []
    world.ledger.now += timedelta(seconds=61)
    report = loop.reconcile(world.deps, grace=timedelta(hours=1))

    assert [f.what for f in report.found] == ["waiting"] and len(world.running()) == 1
    assert len(world.run_all()) == 1 and {world.state(r) for r in refs} == {LedgerState.DONE}


@pytest.mark.parametrize("recovery", ["redelivery", "completion", "reconcile"])
@pytest.mark.parametrize(("method", "after"), [
    ("register_training_set", False), ("register_training_set", True), ("submit", False), ("submit", True),
])
def test_a_worker_dying_while_it_starts_a_job_leaves_nothing_behind(
    tmp_path: Path, method: str, after: bool, recovery: str
) -> None:
    """The slot is taken and the versions chosen in one write; the worker dies before the job is
    submitted or its versions moved. A redelivery, the job's completion or reconcile finishes the
    start, and every version trains exactly once."""
    world = Loop(tmp_path)
    first, = world.drop("a.csv")
    waiting = [world.blobs.put("incoming", name, GOOD_CSV) for name in ("b.csv", "c.csv")]
    for ref in waiting:
        loop.ingest(blob_event(ref, event_id=f"ev-{ref.name}"), world.deps)
    crashing = loop.Deps(config=world.deps.config, contract=world.deps.contract, clock=world.deps.clock,
                         ledger=world.ledger, blobs=world.blobs,
                         workspace=Crashing(world.workspace, method, after=after))  # type: ignore[arg-type]
    [job] = world.running()
    world.workspace.finish(job, JobState.COMPLETED, METRICS)
    with pytest.raises(WorkerDied):
        loop.complete(run_event(WorkKey.of_job(job)), crashing)  # its next job's start dies
    assert {world.state(r) for r in waiting} == {LedgerState.WAITING}
    assert len(world.ledger.schedule().jobs) == 1, "the slot is held by the job that was being started"
    # Within the lease the worker may be alive, still moving the versions: left to it, not started twice.
    early = loop.ingest(blob_event(waiting[0], event_id="ev-early"), world.deps)
    assert isinstance(early, loop.Duplicate) and {world.state(r) for r in waiting} == {LedgerState.WAITING}
    assert not loop.reconcile(world.deps, grace=timedelta(hours=1)).found
    world.ledger.now += world.deps.config.lease  # then its lease runs out: it is presumed dead

    if recovery == "redelivery":
        loop.ingest(blob_event(waiting[0], event_id="ev-again"), world.deps)
    elif recovery == "completion" and after and method == "submit":
        [second] = world.running()
        world.finish(second)
    else:
        loop.reconcile(world.deps, grace=timedelta(hours=1))
    world.run_all()

    refs = [first, *waiting]
    assert [world.state(r) for r in refs] == [LedgerState.DONE] * 3
    assert len(world.workspace.statuses) == 2 and len(world.workspace.models) == 2
    assert world.ledger.schedule().jobs == {}


def test_a_waiting_version_with_no_job_in_flight_is_started_by_the_next_reconcile(tmp_path: Path) -> None:
    """The worker died after the version's wait was recorded, before it looked for a free slot."""
    world = Loop(tmp_path)
    ref = world.blobs.put("incoming", "a.csv", GOOD_CSV)
    dying = loop.Deps(config=world.deps.config, contract=world.deps.contract, clock=world.deps.clock,
                      workspace=world.workspace, blobs=world.blobs,
                      ledger=Crashing(world.ledger, "schedule"))  # type: ignore[arg-type]
    with pytest.raises(WorkerDied):
        loop.ingest(blob_event(ref), dying)
    assert world.state(ref) is LedgerState.WAITING and world.running() == []

    report = loop.reconcile(world.deps, grace=timedelta(hours=1))

    assert [f.what for f in report.found] == ["waiting"]
    world.run_all()
    assert world.state(ref) is LedgerState.DONE


def test_a_lost_completion_is_finished_by_reconcile_which_then_starts_the_waiting_ones(tmp_path: Path) -> None:
    world = Loop(tmp_path)
    refs = world.drop("a.csv", "b.csv", "c.csv")
    [job] = world.running()
    world.workspace.finish(job, JobState.COMPLETED, METRICS)  # its event is lost

    loop.reconcile(world.deps, grace=timedelta(hours=1))
    assert world.state(refs[0]) is LedgerState.DONE and len(world.running()) == 1
    world.run_all()
    assert {world.state(r) for r in refs} == {LedgerState.DONE}


def test_prep_rejecting_one_file_of_a_job_quarantines_it_and_the_others_go_into_the_next_job(tmp_path: Path) -> None:
    world = Loop(tmp_path)
    first, *burst = world.drop("a.csv", "b.csv", "bad.csv", "d.csv")
    world.run_all(limit=1)
    [job] = world.running()  # b, bad and d together
    outcome = world.finish(job, JobState.FAILED, failed_step="prep",
                           rejected="incoming/bad.csv: line 9: 'x' is not a number in column 'a'")

    # The file at fault is quarantined; the two others go at once into the next job, without it.
    assert isinstance(outcome, loop.Several) and isinstance(outcome.outcomes[-1], loop.Submitted)
    assert [world.state(r) for r in burst] == [LedgerState.SUBMITTED, LedgerState.QUARANTINED, LedgerState.SUBMITTED]
    [again] = world.running()
    assert again != job
    assert _new_data(world)[again] == {WorkKey.for_blob(burst[0]).value, WorkKey.for_blob(burst[2]).value}
    world.run_all()
    assert [world.state(r) for r in (first, *burst)] == [
        LedgerState.DONE, LedgerState.DONE, LedgerState.QUARANTINED, LedgerState.DONE]


def test_a_failed_job_fails_each_of_its_versions_with_its_reason_and_frees_the_slot(tmp_path: Path) -> None:
    world = Loop(tmp_path)
    refs = world.drop("a.csv", "b.csv", "c.csv")
    world.run_all(limit=1)
    [job] = world.running()
    world.finish(job, JobState.FAILED, failed_step="train", error="MemoryError")

    assert [world.state(r) for r in refs] == [LedgerState.DONE, LedgerState.FAILED, LedgerState.FAILED]
    assert all("MemoryError" in (world.ledger.get(WorkKey.for_blob(r)).reason or "")  # type: ignore[union-attr]
               for r in refs[1:])
    assert world.ledger.schedule().jobs == {} and world.running() == []


def test_a_redelivered_completion_of_a_job_of_several_changes_nothing(tmp_path: Path) -> None:
    world = Loop(tmp_path)
    world.drop("a.csv", "b.csv", "c.csv")
    first = world.run_all(limit=1)[0]
    [job] = world.running()
    world.finish(job)
    before = dict(world.ledger.rows)

    again = world.finish(job)

    assert isinstance(again, loop.Several) and all(isinstance(o, loop.Duplicate) for o in again.outcomes)
    assert world.ledger.rows == before and len(world.workspace.models) == 2 and first != job


class _Refusing:
    """The workspace, refusing every submission as the service does a bad request (a permanent error)."""

    def __init__(self, target: FakeWorkspace) -> None:
        self._target = target

    def __getattr__(self, name: str) -> object:
        if name == "submit":
            def refuse(*args: object, **kwargs: object) -> None:
                raise WorkspaceRejectedError("the service refused the job (400): the compute does not exist")
            return refuse
        return getattr(self._target, name)


def test_a_job_the_workspace_refuses_fails_its_versions_with_the_reason_and_frees_the_slot(tmp_path: Path) -> None:
    world = Loop(tmp_path)
    refs = world.drop("a.csv", "b.csv", "c.csv")
    [job] = world.running()
    refusing = loop.Deps(config=world.deps.config, contract=world.deps.contract, clock=world.deps.clock,
                         ledger=world.ledger, blobs=world.blobs,
                         workspace=_Refusing(world.workspace))  # type: ignore[arg-type]
    world.workspace.finish(job, JobState.COMPLETED, METRICS)

    with pytest.raises(WorkspaceRejectedError):
        loop.complete(run_event(WorkKey.of_job(job)), refusing)  # the next job's start is refused

    assert [world.state(r) for r in refs] == [LedgerState.DONE, LedgerState.FAILED, LedgerState.FAILED]
    assert "could not be submitted: the service refused the job" in (
        world.ledger.get(WorkKey.for_blob(refs[1])).reason or "")  # type: ignore[union-attr]
    assert world.ledger.schedule().jobs == {}, "no slot is held by a job that cannot start"
    assert loop.reconcile(world.deps, grace=timedelta(hours=1)).errors == ()


def test_a_redelivery_of_a_waiting_version_reads_the_schedule_once_and_is_a_duplicate(tmp_path: Path) -> None:
    """Redeliveries are common (Event Grid delivers at least once): one of a version that waits for a
    busy slot costs the claim, the record and one read of the schedule, and starts nothing."""
    world = Loop(tmp_path)
    first, second = world.drop("a.csv", "b.csv")
    assert (world.state(first), world.state(second)) == (LedgerState.SUBMITTED, LedgerState.WAITING)
    reads: list[int] = []
    read = world.ledger.schedule
    world.ledger.schedule = lambda: (reads.append(1), read())[1]  # type: ignore[method-assign]

    outcome = loop.ingest(blob_event(second, event_id="ev-b.csv"), world.deps)

    assert isinstance(outcome, loop.Duplicate)
    assert len(reads) == 1
    assert world.running() == [world.ledger.get(WorkKey.for_blob(first)).job]  # type: ignore[union-attr]


def _counted(world: Loop) -> Counter[str]:
    """Count the workspace's questions about jobs and the ledger's listings, from now on."""
    calls: Counter[str] = Counter()

    def counted(owner: object, name: str) -> None:
        real = getattr(owner, name)

        def call(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return real(*args, **kwargs)

        setattr(owner, name, call)

    for name in ("job_status", "job_metrics", "register_model"):
        counted(world.workspace, name)
    counted(world.ledger, "records")
    return calls


def test_the_completion_of_a_job_of_many_versions_asks_for_the_job_once_not_once_a_version(
    tmp_path: Path,
) -> None:
    """Sixty files at once: the second job has 59 versions as new data. Its completion asks the
    workspace for the job's status, metrics and model once, and lists the ledger a fixed number of
    times, not once or twice a version: on the local stack a completion of 200 versions took 25 s
    (every version read all the job's records again), on Azure ML each question is a REST call."""
    world = Loop(tmp_path)
    refs = world.drop(*(f"day-{n:02d}.csv" for n in range(60)))
    world.finish(world.running()[0])
    [job] = world.running()
    calls = _counted(world)

    world.finish(job)

    assert [world.state(r) for r in refs] == [LedgerState.DONE] * 60
    assert len({world.ledger.get(WorkKey.for_blob(r)).model_version for r in refs[1:]}) == 1  # type: ignore[union-attr]
    assert calls["job_status"] == calls["job_metrics"] == calls["register_model"] == 1, calls
    assert calls["records"] <= 4, calls


def test_reconcile_asks_for_a_job_of_many_versions_once_a_pass_while_it_runs_and_completes_it_once(
    tmp_path: Path,
) -> None:
    """The completion event of a job of 59 versions is lost (an outage). Each reconcile pass while the
    job runs asks the workspace for its status once, not once a version (on Azure ML, a REST call each,
    every pass); the pass after it ended registers one model for the 59, asking for the job's status,
    metrics and model once."""
    world = Loop(tmp_path)
    refs = world.drop(*(f"day-{n:02d}.csv" for n in range(60)))
    world.finish(world.running()[0])
    [job] = world.running()
    calls = _counted(world)

    running = loop.reconcile(world.deps, grace=timedelta(hours=1))

    assert running.errors == () and calls["job_status"] == 1, calls
    assert [world.state(r) for r in refs[1:]] == [LedgerState.SUBMITTED] * 59
    world.workspace.finish(job, JobState.COMPLETED, METRICS)  # no event: the pass finds it ended
    calls.clear()

    ended = loop.reconcile(world.deps, grace=timedelta(hours=1))

    assert ended.errors == () and len(ended.found) == 59, ended
    assert [world.state(r) for r in refs] == [LedgerState.DONE] * 60
    assert len({world.ledger.get(WorkKey.for_blob(r)).model_version for r in refs[1:]}) == 1  # type: ignore[union-attr]
    assert calls["job_status"] == calls["job_metrics"] == calls["register_model"] == 1, calls
    assert calls["records"] <= 5, calls


def test_a_starter_still_moving_its_versions_is_left_to_it_and_no_one_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job of many versions: its starter has submitted it and moved one version when a version's
    redelivery comes, and the job ends before the rest are moved (as here, where the starter stops
    after one move). The redelivery leaves the start to the starter (it is within its lease); the
    completion moves the rest itself, as a normal step, not as a resubmission: ten to twelve
    `dispatch.resubmitted` warnings a burst were false alarms."""
    caplog.set_level(logging.INFO, logger="autoretrain")
    world = Loop(tmp_path)
    world.drop("a.csv")
    waiting = [world.blobs.put("incoming", f"{n}.csv", GOOD_CSV) for n in "bcde"]
    for ref in waiting:
        loop.ingest(blob_event(ref, event_id=f"ev-{ref.name}"), world.deps)
    slow = loop.Deps(config=world.deps.config, contract=world.deps.contract, clock=world.deps.clock,
                     workspace=world.workspace, blobs=world.blobs,
                     ledger=Crashing(world.ledger, "move", after=True, nth=3))  # type: ignore[arg-type]
    [first] = world.running()
    world.workspace.finish(first, JobState.COMPLETED, METRICS)
    with pytest.raises(WorkerDied):  # its completion starts the next job: moved one version, then stops
        loop.complete(run_event(WorkKey.of_job(first), event_id="run-first"), slow)
    [second] = world.running()
    assert sorted(str(world.state(r)) for r in waiting).count(str(LedgerState.WAITING)) == 3

    submitted = len(world.workspace.statuses)
    assert isinstance(loop.ingest(blob_event(waiting[-1], event_id="ev-again"), world.deps), loop.Duplicate)
    assert len(world.workspace.statuses) == submitted
    world.finish(second)

    assert [world.state(r) for r in waiting] == [LedgerState.DONE] * 4
    assert "dispatch.finishing_start" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
