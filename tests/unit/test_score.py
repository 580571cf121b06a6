"""No training while the champion still holds: with `training: {retrain_when: champion_slips}` a new
version is first scored by the champion, and trains only if the champion slipped on it. Over fakes of
the ports; the same cases on the real local stack are in tests/integration/test_champion_holds.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from test_dispatch import Loop
from test_loop import BASE_CONTRACT, run_event

from autoretrain import loop
from autoretrain.datacontract import ContractRuleError, parse_contract
from autoretrain.domain import MODE_TAG, BlobRef, JobMode, JobState, LedgerState, Metrics, WorkKey
from autoretrain.loop.outcomes import Held

SCORE_FIRST = BASE_CONTRACT + "training: {retrain_when: champion_slips, slip: 0.02}\n"
PER_FILE = BASE_CONTRACT + "training: {retrain_when: champion_slips, jobs_in_flight: 0}\n"


def f1(value: float, rows: int = 40, champion: float | None = None) -> Metrics:
    """`value` for the job's model (or for the champion, in a scoring job); `champion`: the champion's
    on the same test rows, in a training job."""
    return Metrics({"f1_macro": value}, primary="f1_macro", test_rows=rows,
                   champion=None if champion is None else {"f1_macro": champion})


class Scoring(Loop):
    def end(self, job: str, metrics: Metrics | None = None, state: JobState = JobState.COMPLETED,
            **status: str) -> loop.CompleteOutcome:
        """End `job` with `metrics` and deliver its completion event, with the tags it was submitted with."""
        self.workspace.finish(job, state, metrics, **status)
        return loop.complete(run_event(WorkKey.of_job(job), tags=self.workspace.tags[job], event_id=f"run-{job}"),
                             self.deps)

    def record(self, ref: BlobRef) -> loop.LedgerRecord:
        found = self.ledger.get(WorkKey.for_blob(ref))
        assert found is not None
        return found

    def champion_of(self, first: str, value: float = 0.9) -> BlobRef:
        """The first file trains (there is no champion to score yet) and its model is promoted."""
        [ref] = self.drop(first)
        [job] = self.running()
        assert self.workspace.modes[job] is JobMode.TRAIN
        self.end(job, f1(value))
        assert self.record(ref).promoted is True
        return ref


def test_with_no_champion_the_first_version_trains(tmp_path: Path) -> None:
    world = Scoring(tmp_path, SCORE_FIRST)
    ref = world.champion_of("jan.csv")
    assert world.record(ref).state is LedgerState.DONE
    assert list(world.workspace.modes.values()) == [JobMode.TRAIN]


def test_a_version_the_champion_still_holds_on_is_held_with_both_numbers_and_no_model(tmp_path: Path) -> None:
    world = Scoring(tmp_path, SCORE_FIRST)
    world.champion_of("jan.csv", 0.9)
    [feb] = world.drop("feb.csv")

    [job] = world.running()
    record = world.record(feb)
    assert job == WorkKey.for_blob(feb).scoring().job_name and record.job == job
    assert record.state is LedgerState.SUBMITTED
    assert world.workspace.modes[job] is JobMode.SCORE and world.workspace.champions[job] == "1"
    assert world.workspace.tags[job][MODE_TAG] == "score"
    assert world.workspace.training_sets[WorkKey.of_job(job).value] == (record.data_version,), "its rows alone"

    outcome = world.end(job, f1(0.885, rows=37))

    assert isinstance(outcome, Held)
    held = world.record(feb)
    assert held.state is LedgerState.HELD and held.model_version is None and held.champion == "1"
    assert held.metrics is not None
    assert (held.metrics.primary_value, held.metrics.champion_value, held.metrics.test_rows) == (0.885, 0.9, 37)
    assert held.decision is not None and "within slip 0.02" in held.decision
    assert len(world.workspace.models) == 1, "no model was trained or registered"
    assert not world.running()
    assert held.as_row()["state"] == "held"
    assert "within slip 0.02" in world.workspace.model_tags["1"]["held"], "the champion is tagged where ops look"


def test_a_slipped_champion_trains_the_version_and_the_held_ones_join_its_window(tmp_path: Path) -> None:
    world = Scoring(tmp_path, SCORE_FIRST)
    jan = world.champion_of("jan.csv", 0.9)
    [feb] = world.drop("feb.csv")
    world.end(world.running()[0], f1(0.89))
    [mar] = world.drop("mar.csv")

    outcome = world.end(world.running()[0], f1(0.7))

    assert isinstance(outcome, loop.Several), "the slipped version waits, and its training job starts at once"
    assert world.record(mar).state is LedgerState.SUBMITTED
    [train] = world.running()
    assert world.workspace.modes[train] is JobMode.TRAIN
    window = world.workspace.training_sets[WorkKey.of_job(train).value]
    assert window == tuple(str(world.record(r).data_version) for r in (jan, feb, mar)), "held feb is in it"
    assert world.workspace.new_files[train] == 1

    world.end(train, f1(0.95, champion=0.7))
    assert [world.record(r).state for r in (jan, feb, mar)] == [LedgerState.DONE, LedgerState.HELD, LedgerState.DONE]
    assert world.record(mar).promoted is True
    reason = [m.note for m in world.record(mar).history if m.state == "waiting"]
    assert reason and "slipped by 0.2000, more than 0.02: it trains" in reason[0]


def test_a_lower_is_better_metric_slips_upwards(tmp_path: Path) -> None:
    contract = ("target: b\ntask: regression\nprimary_metric: rmse\nfeatures: {a: float, c: category}\n"
                "training: {retrain_when: champion_slips, slip: 0.5}\n")
    world = Scoring(tmp_path, contract)
    rmse = lambda v: Metrics({"rmse": v}, primary="rmse", greater_is_better=False, test_rows=20)  # noqa: E731
    world.drop("jan.csv")
    world.end(world.running()[0], rmse(3.0))
    [feb, mar] = world.drop("feb.csv", "mar.csv")
    feb_job, mar_job = (WorkKey.for_blob(r).scoring().job_name for r in (feb, mar))

    assert isinstance(world.end(feb_job, rmse(3.4)), Held), "0.4 worse is within 0.5"
    assert isinstance(world.end(mar_job, rmse(3.6)), loop.Several), "0.6 worse is not"
    assert world.record(mar).state is LedgerState.SUBMITTED


def test_a_scoring_job_that_fails_is_no_reason_to_skip_training(tmp_path: Path) -> None:
    world = Scoring(tmp_path, SCORE_FIRST)
    world.champion_of("jan.csv")
    [feb] = world.drop("feb.csv")

    world.end(world.running()[0], state=JobState.FAILED, failed_step="evaluate", error="out of memory")

    assert world.record(feb).state is LedgerState.SUBMITTED
    [train] = world.running()
    assert world.workspace.modes[train] is JobMode.TRAIN
    note = next(m.note for m in world.record(feb).history if m.state == "waiting")
    assert "scoring job" in note and "out of memory" in note and "it trains instead" in note


def test_a_file_prep_rejects_in_its_scoring_job_is_quarantined(tmp_path: Path) -> None:
    world = Scoring(tmp_path, SCORE_FIRST)
    world.champion_of("jan.csv")
    [feb] = world.drop("feb.csv")

    world.end(world.running()[0], state=JobState.FAILED, failed_step="prep",
              rejected="incoming/feb.csv: line 9000: 'x' in column a is not a number")

    assert world.record(feb).state is LedgerState.QUARANTINED
    assert not world.running() and len(world.workspace.models) == 1


def test_redelivered_and_reordered_scoring_events_change_nothing_twice(tmp_path: Path) -> None:
    world = Scoring(tmp_path, SCORE_FIRST)
    world.champion_of("jan.csv")
    [feb] = world.drop("feb.csv")
    job = world.running()[0]
    world.end(job, f1(0.5))  # slipped: it trains
    [train] = world.running()

    again = world.end(job, f1(0.5))

    assert isinstance(again, loop.Ignored | loop.Duplicate)
    assert world.running() == [train], "no second training job"
    world.end(train, f1(0.95, champion=0.7))
    assert isinstance(world.end(job, f1(0.5)), loop.Ignored | loop.Duplicate)
    assert world.record(feb).state is LedgerState.DONE


def test_a_champion_promoted_while_a_version_was_scored_makes_it_train(tmp_path: Path) -> None:
    world = Scoring(tmp_path, PER_FILE)
    world.champion_of("jan.csv", 0.8)
    [feb, mar] = world.drop("feb.csv", "mar.csv")
    feb_job, mar_job = (WorkKey.for_blob(r).scoring().job_name for r in (feb, mar))
    world.end(feb_job, f1(0.5))  # feb slips, trains, and its model becomes the champion
    [feb_train] = [j for j in world.running() if j != mar_job]
    world.end(feb_train, f1(0.95, champion=0.7))

    outcome = world.end(mar_job, f1(0.8))  # it held on the old champion, but that is no longer the champion

    assert not isinstance(outcome, Held)
    note = next(m.note for m in world.record(mar).history if m.state == "waiting")
    assert "the champion changed" in note


def test_reconcile_finishes_a_scoring_job_whose_event_was_lost_and_resubmits_a_lost_one(tmp_path: Path) -> None:
    world = Scoring(tmp_path, SCORE_FIRST)
    world.champion_of("jan.csv")
    [feb, mar] = world.drop("feb.csv", "mar.csv")
    feb_job, mar_job = (WorkKey.for_blob(r).scoring().job_name for r in (feb, mar))
    world.workspace.finish(feb_job, JobState.COMPLETED, f1(0.9))  # its event is lost
    del world.workspace.statuses[mar_job]  # the workspace lost this one

    report = loop.reconcile(world.deps, grace=timedelta(0))

    assert world.record(feb).state is LedgerState.HELD
    assert mar_job in world.workspace.statuses, "submitted again, under the same name"
    assert world.workspace.modes[mar_job] is JobMode.SCORE
    assert {f.what for f in report.found} >= {"finished_job"}
    # A scoring job whose version moved on is no orphan: reconcile records nothing for its key.
    assert world.ledger.get(WorkKey.of_job(feb_job)) is None


def test_a_scoring_job_whose_version_and_record_were_lost_is_recorded_under_the_versions_key(
    tmp_path: Path,
) -> None:
    """Azurite lost a drop and its ledger record after the scoring job started (a SIGKILL before it
    saved): reconcile records the version skipped, as for a training job, under the version's own key."""
    world = Scoring(tmp_path, SCORE_FIRST)
    world.champion_of("jan.csv")
    [feb] = world.drop("feb.csv")
    key = WorkKey.for_blob(feb)
    world.workspace.finish(key.scoring().job_name, JobState.COMPLETED, f1(0.9))
    del world.ledger.rows[key.value]
    del world.blobs.blobs[("incoming", feb.name)]

    loop.reconcile(world.deps, grace=timedelta(0))

    skipped = world.record(feb)
    assert skipped.state is LedgerState.SKIPPED and "the blob version is gone" in (skipped.reason or "")
    assert world.ledger.get(key.scoring()) is None


def test_a_retrain_is_an_operators_word_and_is_not_scored_first(tmp_path: Path) -> None:
    world = Scoring(tmp_path, SCORE_FIRST)
    jan = world.champion_of("jan.csv")

    outcome = loop.retrain(jan, world.deps)

    assert isinstance(outcome, loop.Submitted)
    assert world.workspace.modes[outcome.job.name] is JobMode.TRAIN


@pytest.mark.parametrize(("training", "message"), [
    ("{retrain_when: sometimes}", "training.retrain_when 'sometimes' is not one of always, champion_slips"),
    ("{retrain_when: champion_slips, slip: -1}", "training.slip"),
])
def test_the_contract_names_a_bad_retrain_rule(training: str, message: str) -> None:
    import yaml

    raw = yaml.safe_load(BASE_CONTRACT + f"training: {training}\n")
    with pytest.raises(ContractRuleError, match=message.replace(".", r"\.")):
        parse_contract(raw, "contract.yaml")


def test_the_default_rule_always_trains(tmp_path: Path) -> None:
    import yaml

    rule = parse_contract(yaml.safe_load(BASE_CONTRACT), "contract.yaml").training
    assert (rule.retrain_when, rule.slip) == ("always", 0.02)
    world = Scoring(tmp_path, BASE_CONTRACT)
    world.champion_of("jan.csv")
    world.drop("feb.csv")
    assert [world.workspace.modes[j] for j in world.running()] == [JobMode.TRAIN]
