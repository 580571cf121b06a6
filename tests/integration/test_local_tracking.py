"""The local workspace's MLflow tracking, read back with MlflowClient: what Azure ML Studio shows
for a real job (a run per job, a child run per step, the registered model and its champion), on
this machine's store under AUTORETRAIN_HOME."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
import urllib.request
from io import StringIO
from pathlib import Path
from typing import Any

import mlmodules
import pytest
from azure.storage.blob import BlobServiceClient

from autoretrain.adapters.localworkspace.tracking import LocalTracking, tracking_uri
from autoretrain.adapters.localworkspace.workspace import LocalWorkspace
from autoretrain.adapters.storage import AzureBlobStore
from autoretrain.bootstrap import PIPELINE
from autoretrain.domain import JOB_TAG, BlobRef, JobState, ModelVersion, TrainingMember, WorkKey, job_output_path
from autoretrain.local.mlflow_ui import run_ui

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "ml" / "contract.yaml"


def wine_csv(rows: slice) -> bytes:
    return mlmodules.wine_csv(rows, seed=5)


def client(home: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(home), registry_uri=tracking_uri(home))


def runs_of(mlflow: Any, job: str) -> tuple[Any, dict[str, Any]]:
    """The job's run and its step runs by name; asserts there is exactly one job run."""
    experiment = mlflow.get_experiment_by_name("autoretrain")
    found = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`autoretrain.job` = '{job}'")
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in found]
    parent = parents[0]
    steps = {r.info.run_name: r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(found) == 1 + len(steps)
    return parent, steps


@pytest.fixture
def store(azurite: str) -> AzureBlobStore:
    return AzureBlobStore(BlobServiceClient.from_connection_string(azurite))


def run_job(
    workspace: LocalWorkspace, store: AzureBlobStore, container: str, name: str, rows: slice,
    champion: ModelVersion | None = None,
) -> tuple[str, WorkKey, BlobRef]:
    blob = store.upload(container, name, wine_csv(rows))
    key = WorkKey.for_blob(blob)
    data = workspace.register_data(blob, key, {"blob": blob.path, "etag": blob.etag, "work_key": key.value})
    window = workspace.register_training_set(key, [TrainingMember(f"{data.name}:{data.version}", blob.name)])
    job = workspace.submit(window, key, {JOB_TAG: key.value, "blob": blob.path, "etag": blob.etag}, champion=champion)
    status = workspace.wait(job.name, timeout=180)
    assert status.state is JobState.COMPLETED, status
    return job.name, key, blob


def test_each_job_is_a_run_with_its_steps_and_each_model_a_registered_version(
    tmp_path: Path, store: AzureBlobStore, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="autoretrain.adapters.localworkspace.tracking")
    workspace = LocalWorkspace(tmp_path, pipeline=PIPELINE, contract=CONTRACT, blobs=store)
    container = f"ds{unique}"
    first_job, first_key, first_blob = run_job(workspace, store, container, "k/2026-01.csv", slice(0, 90))
    first = workspace.register_model(first_job, first_key, workspace.job_metrics(first_job), {"job": first_job})
    promoted = workspace.promote(first, replacing=None)
    assert promoted is not None
    second_job, second_key, _ = run_job(workspace, store, container, "k/2026-02.csv", slice(60, 178), champion=promoted)
    second = workspace.register_model(second_job, second_key, workspace.job_metrics(second_job), {"job": second_job})
    workspace.record_decision(second, "promoted: better")
    assert workspace.promote(second, replacing=promoted) is not None
    assert workspace.flush_tracking(60)
    workspace.close()
    # Its tracker was forked from the warm step runner, which had imported MLflow already.
    ready = [r.getMessage() for r in caplog.records if "tracking.ready" in r.getMessage()]
    assert len(ready) == 1 and ready[0].endswith("tracker=forked"), caplog.text

    mlflow = client(tmp_path)
    experiment = mlflow.get_experiment_by_name("autoretrain")
    assert experiment is not None

    # One run per job, named by the job, tagged with the blob version it is for.
    parent, steps = runs_of(mlflow, first_job)
    assert parent.info.run_name == first_job and parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert (tags["work_key"], tags["blob"], tags["etag"]) == (first_key.value, first_blob.path, first_blob.etag)
    assert tags["data_version"] == "autoretrain-data:1"
    assert tags["training_set"] == "autoretrain-data-trainset:1"
    assert tags["model_version"] == "autoretrain-model:1"

    # Its three steps as child runs, each with what its script logged.
    assert sorted(steps) == ["evaluate", "prep", "train"]
    assert {s.info.status for s in steps.values()} == {"FINISHED"}
    report = json.loads((workspace.root / job_output_path(first_job, "report") / "report.json").read_text())
    prep = steps["prep"].data
    assert {k: prep.metrics[k] for k in ("rows_in", "train_rows", "test_rows")} == {
        k: float(report[k]) for k in ("rows_in", "train_rows", "test_rows")
    }
    assert prep.params["seed"] == "42"
    train = steps["train"].data
    assert train.params["estimator"] == "LogisticRegression" and train.metrics["train_rows"] == report["train_rows"]
    evaluate = steps["evaluate"].data
    assert {k: v for k, v in evaluate.metrics.items() if not k.startswith("champion_")} == dict(first.metrics.values)
    assert evaluate.params["test_rows"] == str(first.metrics.test_rows)
    # The job's run carries evaluate's metrics too: the UI charts them across retrains.
    assert parent.data.metrics[first.metrics.primary] == first.metrics.primary_value

    # The second job scored the champion on the same rows: its numbers are the champion_ metrics.
    _, steps2 = runs_of(mlflow, second_job)
    assert second.metrics.champion is not None
    evaluate2 = steps2["evaluate"].data.metrics
    assert {k: v for k, v in evaluate2.items() if not k.startswith("champion_")} == dict(second.metrics.values)
    assert {k.removeprefix("champion_"): v for k, v in evaluate2.items() if k.startswith("champion_")} == dict(
        second.metrics.champion
    )

    # Each model a version of the registered model, with its metrics as tags, the champion its alias.
    versions = {str(v.version): v for v in mlflow.search_model_versions("name = 'autoretrain-model'")}
    assert sorted(versions, key=int) == ["1", "2"]
    for model, version in ((first, versions["1"]), (second, versions["2"])):
        assert {k: float(version.tags[k]) for k in model.metrics.values} == dict(model.metrics.values)
        assert version.tags["autoretrain.local_version"] == model.version
    assert versions["1"].run_id == parent.info.run_id
    assert versions["2"].tags["gate"] == "promoted: better"
    assert str(mlflow.get_model_version_by_alias("autoretrain-model", "champion").version) == "2"
    files = {f.path for f in mlflow.list_artifacts(parent.info.run_id, "model")}
    assert "model/MLmodel" in files


def test_a_failed_step_fails_its_run_and_the_job_run(tmp_path: Path, store: AzureBlobStore, unique: str) -> None:
    workspace = LocalWorkspace(tmp_path, pipeline=PIPELINE, contract=CONTRACT, blobs=store)
    text = wine_csv(slice(0, 20)).decode().splitlines()
    target = text[0].split(",").index("cultivar")
    rows = [",".join("" if i == target else v for i, v in enumerate(line.split(","))) for line in text[1:]]
    blob = store.upload(f"ds{unique}", "k/no-target.csv", ("\n".join([text[0], *rows]) + "\n").encode())
    key = WorkKey.for_blob(blob)
    job = workspace.submit(workspace.register_data(blob, key, {}), key, {JOB_TAG: key.value})
    assert workspace.wait(job.name, timeout=120).state is JobState.FAILED
    assert workspace.flush_tracking(60)
    workspace.close()

    parent, steps = runs_of(client(tmp_path), job.name)
    assert parent.info.status == "FAILED"
    assert {name: run.info.status for name, run in steps.items()} == {"prep": "FAILED"}


def test_a_resumed_job_keeps_its_run_and_starts_its_steps_anew(tmp_path: Path) -> None:
    tracking = LocalTracking(tmp_path, experiment="autoretrain", model_name="autoretrain-model")
    first = tracking.start_job("autoretrain-job", {"work_key": "k"}).result(60)
    interrupted = tracking.step_run(tracking.start_step("autoretrain-job", "prep"))
    again = tracking.start_job("autoretrain-job", {"work_key": "k"}).result(60)
    prep = tracking.step_run(tracking.start_step("autoretrain-job", "prep"))
    assert interrupted is not None and prep is not None and again == first == prep.parent_run_id
    assert tracking.flush(30)
    tracking.close()

    parent, steps = runs_of(client(tmp_path), "autoretrain-job")
    assert parent.info.run_id == first and parent.info.status == "RUNNING"
    assert {name: run.info.run_id for name, run in steps.items()} == {"prep": prep.run_id}


def test_run_ui_prints_the_address_serves_the_store_and_stops_when_told(tmp_path: Path) -> None:
    """`autoretrain ui`: mlflow server on a free port answers /health, and is gone once stopped."""
    stop, out = threading.Event(), StringIO()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_ui(tmp_path, experiment="autoretrain", out=out,
                                                                  stop=stop, signals=())))
    thread.start()
    deadline = time.monotonic() + 120
    while "MLflow UI: http://127.0.0.1:" not in out.getvalue() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    url = re.search(r"MLflow UI: (http://127\.0\.0\.1:\d+)", out.getvalue())[1]  # type: ignore[index]
    assert "no job has run yet" in out.getvalue()
    with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
        assert answer.status == 200
    stop.set()
    thread.join(30)
    assert result == [0] and out.getvalue().rstrip().endswith("MLflow UI stopped.")
    with pytest.raises(OSError):  # the server is gone with it
        urllib.request.urlopen(f"{url}/health", timeout=2)


def _schema(db: Path) -> tuple[dict[str, list[str]], list[tuple[str]]]:
    """Each table's and index's definition, as its sorted lines (MLflow's migrations may order a
    table's constraints differently from one build to the next), and the migration head."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
        head = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    return {name: sorted(line.strip().rstrip(",") for line in sql.splitlines()) for name, sql in rows}, head


def _default_experiment(home: Path) -> Any:
    return client(home).get_experiment("0")  # MLflow adds it to a store it opens


def test_a_new_store_starts_from_mlflows_empty_schema_kept_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first new store builds the template (MLflow's own table initialisation) in the cache
    folder; the next one is a copy of it (a mark put into the template shows up); either is the
    store MLflow builds itself, with its default experiment under its own home. A cache that cannot
    be written only means MLflow builds the store."""
    from autoretrain.adapters.localworkspace import tracker

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second, without = (tmp_path / name for name in ("first", "second", "without"))
    for home in (first, second, without):
        (home / "mlflow").mkdir(parents=True)

    tracker._new_store_from_template(tracking_uri(first))
    [template] = (tmp_path / "cache" / "autoretrain" / "mlflow").glob("empty-store-*.db")
    assert (first / "mlflow" / "mlflow.db").read_bytes() == template.read_bytes()
    with sqlite3.connect(template) as connection:
        connection.execute("CREATE TABLE autoretrain_mark (x)")
    tracker._new_store_from_template(tracking_uri(second))
    assert "autoretrain_mark" in dict(_schema(second / "mlflow" / "mlflow.db")[0])

    (tmp_path / "cache").rename(tmp_path / "moved")
    (tmp_path / "cache").write_text("not a folder")  # the cache cannot be written
    tracker._new_store_from_template(tracking_uri(without))
    assert not (without / "mlflow" / "mlflow.db").exists()  # MLflow builds it, below

    assert _default_experiment(first).name == _default_experiment(without).name == "Default"
    assert _schema(first / "mlflow" / "mlflow.db") == _schema(without / "mlflow" / "mlflow.db")
    # An existing store is never replaced.
    before = (first / "mlflow" / "mlflow.db").read_bytes()
    tracker._new_store_from_template(tracking_uri(first))
    assert (first / "mlflow" / "mlflow.db").read_bytes() == before


def test_two_trackers_starting_at_once_on_a_new_home_both_track(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`autoretrain up` and a command such as `autoretrain reconcile` on a new home: each tracker used
    to run MLflow's migrations on the one new store at the same time, and one failed ("table
    experiments already exists"), its jobs untracked. A store now appears whole, or not at all."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the template is built at once too
    trackers = [LocalTracking(tmp_path / "home", experiment="autoretrain", model_name="autoretrain-model")
                for _ in range(2)]
    try:
        assert [t.ready(120) for t in trackers] == [True, True], [t.disabled for t in trackers]
        runs = [t.start_job(f"autoretrain-job-{i}", {}).result(60) for i, t in enumerate(trackers)]
        assert all(runs) and len(set(runs)) == 2
    finally:
        for tracker in trackers:
            tracker.close()


def test_a_call_the_tracker_dies_under_is_made_again_on_a_new_one(tmp_path: Path) -> None:
    """SIGKILL the tracker between calls: the next call finds it dead, starts a new tracker and is
    made there, not dropped (before, that call was lost: a champion alias, a step's run, a job's end).
    A call made again finds what the dead tracker made (here: the job's run), so nothing is doubled."""
    import psutil

    tracking = LocalTracking(tmp_path, experiment="autoretrain", model_name="autoretrain-model")
    logs = StringIO()
    handler = logging.StreamHandler(logs)
    logging.getLogger("autoretrain").addHandler(handler)
    try:
        first = tracking.start_job("autoretrain-job", {"work_key": "k"}, resumed=False).result(60)

        def kill_the_tracker() -> None:
            [tracker] = [p for p in psutil.Process().children()
                         if "tracker import serve" in " ".join(p.cmdline())]
            tracker.kill()
            tracker.wait(10)

        kill_the_tracker()
        prep = tracking.step_run(tracking.start_step("autoretrain-job", "prep"), timeout=60)
        assert prep is not None and prep.parent_run_id == first
        tracking.end_step(prep, ok=True)
        kill_the_tracker()
        tracking.end_job("autoretrain-job", "FINISHED")
        assert tracking.flush(60)
        tracking.close()
    finally:
        logging.getLogger("autoretrain").removeHandler(handler)

    assert logs.getvalue().count("tracking.tracker_died") == 2, logs.getvalue()
    parent, steps = runs_of(client(tmp_path), "autoretrain-job")
    assert parent.info.run_id == first and parent.info.status == "FINISHED"
    assert list(steps) == ["prep"] and steps["prep"].info.status == "FINISHED"


def test_a_call_made_again_after_its_tracker_did_it_and_died_changes_nothing(tmp_path: Path) -> None:
    """The tracker can die after its work and before its answer: each call made again on the next
    tracker (which has nothing cached) gets the same answer, and the store no second job run, step
    run or set of metrics."""
    from autoretrain.adapters.localworkspace.tracker import _Tracker

    (tmp_path / "mlflow").mkdir()
    uri, artifacts = tracking_uri(tmp_path), (tmp_path / "mlflow" / "artifacts").as_uri()
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"metrics": {"f1_macro": 0.9}, "primary_metric": "f1_macro", "test_rows": 10}))
    job = "autoretrain-job"

    def twice(request: dict[str, Any]) -> Any:
        """Made on one tracker, then again (as after its death) on a new one: both answers."""
        first = _Tracker(uri, artifacts, "autoretrain", "autoretrain-model").handle(request)
        again = {**request, "again": True, **({"resumed": True} if request["op"] == "start_job" else {})}
        return first, _Tracker(uri, artifacts, "autoretrain", "autoretrain-model").handle(again)

    run, run_again = twice({"op": "start_job", "job": job, "tags": {}, "resumed": False})
    step, step_again = twice({"op": "start_step", "job": job, "step": "prep"})
    twice({"op": "end_run", "run_id": step["run_id"], "status": "FINISHED"})
    end_job = {"op": "end_job", "job": job, "status": "FINISHED", "metrics_file": str(metrics)}
    _Tracker(uri, artifacts, "autoretrain", "autoretrain-model").handle(end_job)
    client(tmp_path).update_run(run, status="RUNNING")  # it died after the metrics, before the run's end
    _Tracker(uri, artifacts, "autoretrain", "autoretrain-model").handle({**end_job, "again": True})
    twice(end_job)  # and after the run's end

    assert run_again == run and step_again == step
    mlflow = client(tmp_path)
    parent, steps = runs_of(mlflow, job)
    assert parent.info.run_id == run and parent.info.status == "FINISHED" and list(steps) == ["prep"]
    assert len(mlflow.get_metric_history(run, "f1_macro")) == 1
