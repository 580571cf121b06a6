"""The whole loop, for real: `autoretrain up` (Azurite, the local Functions host over HTTP, the local
Event Grid) with the embedded workspace. Files go in through Blob Storage; models come out."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from localstack import Loop, blob_created, cli, per_file_contract, post_event, start
from mlmodules import wine

from autoretrain.adapters.localworkspace.workspace import catalog_rows
from autoretrain.domain import LedgerState, WorkKey

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def running(tmp_path: Path, unique: str, azurite: str) -> Iterator[Loop]:
    # Each dropped file's own job, data version and model: a job per file (the bursts' test is below).
    yield from start(tmp_path, unique, azurite, per_file_contract(tmp_path))


def _wait_for_lines(log: Path, lines: list[str], timeout: float) -> None:
    """Until the stack's log has a line containing each of `lines`."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text().splitlines()
        missing = [want for want in lines if not any(want in line for line in text)]
        if not missing:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not in {log.name} after {timeout} s: {missing}\n" + "\n".join(text[-30:]))
        time.sleep(0.1)


def _wine_months(folder: Path, months: int) -> list[Path]:
    return list(wine().write_monthly_drops(folder, months=months, seed=1))


def test_each_dropped_file_becomes_one_data_version_job_and_model(running: Loop, tmp_path: Path) -> None:
    """N good files -> N data versions, N jobs, N models with metrics; a bad file -> quarantine."""
    drops = _wine_months(tmp_path / "drops", 3)
    bad = b"alcohol,cultivar\n13.2,class_0\n"
    refs = [running.blobs.upload(running.incoming, p.name, p.read_bytes()) for p in drops]
    bad_ref = running.blobs.upload(running.incoming, "broken.csv", bad)
    keys = [WorkKey.for_blob(r) for r in refs]
    bad_key = WorkKey.for_blob(bad_ref)

    records = running.wait_final([*keys, bad_key], timeout=300)

    good = [records[k] for k in keys]
    assert [r.state for r in good] == [LedgerState.DONE] * 3, [r.reason for r in good]
    assert sorted(r.data_version for r in good) == [f"autoretrain-data:{i}" for i in (1, 2, 3)]  # type: ignore[misc]
    assert sorted(r.model_version for r in good) == [f"autoretrain-model:{i}" for i in (1, 2, 3)]  # type: ignore[misc]
    assert all(r.metrics and r.metrics.primary == "f1_macro" for r in good)
    assert sum(bool(r.promoted) for r in good) >= 1
    jobs = catalog_rows(running.home, "jobs")
    assert sorted(j["name"] for j in jobs) == sorted(k.job_name for k in keys)
    assert {j["status"] for j in jobs} == {"Completed"}
    models = catalog_rows(running.home, "models")
    assert len(models) == 3 and all("f1_macro" in m["metrics"] for m in models)
    assert sum(m["champion"] for m in models) == 1

    quarantined = records[bad_key]
    assert quarantined.state is LedgerState.QUARANTINED
    assert quarantined.reason == (
        f"{running.incoming}/broken.csv: missing column(s) 'malic_acid', 'ash', 'alcalinity_of_ash', 'magnesium', "
        "'total_phenols', 'flavanoids', 'nonflavanoid_phenols', 'proanthocyanins', 'color_intensity', 'hue', "
        "'od280_od315_of_diluted_wines', 'proline' required by contract.yaml; add them and upload the file again."
    )
    assert running.blobs.read_head(bad_ref, 1000) == bad  # the customer's file is untouched
    copy = BlobServiceClient.from_connection_string("UseDevelopmentStorage=true").get_blob_client(
        running.quarantine, f"{bad_key}/broken.csv"
    )
    assert copy.download_blob().readall() == bad
    assert copy.get_blob_properties().metadata["reason"] == quarantined.reason

    # Event Grid redelivers: the same blob version again, over HTTP, changes nothing.
    first = refs[0]
    duplicate = blob_created(first, "redelivered-1")
    assert post_event(running.url, "ingest", duplicate) == 200
    as_cloudevent = {
        "specversion": "1.0", "id": "redelivered-2", "source": duplicate["topic"], "type": duplicate["eventType"],
        "subject": duplicate["subject"], "time": duplicate["eventTime"], "data": duplicate["data"],
    }
    assert post_event(running.url, "ingest", as_cloudevent) == 200
    # Each delivery was decided as a duplicate of the done record (the host answers after the function ran).
    _wait_for_lines(running.log, ["duplicate event_id=redelivered-1 ", "duplicate event_id=redelivered-2 "], 30)
    assert len(catalog_rows(running.home, "jobs")) == 3
    assert running.ledger.get(keys[0]) == records[keys[0]]


@pytest.fixture
def running_diabetes(tmp_path: Path, unique: str, azurite: str) -> Iterator[Loop]:
    yield from start(
        tmp_path, unique, azurite, {"AUTORETRAIN_CONTRACT": str(ROOT / "ml" / "contracts" / "diabetes.yaml")}
    )


def test_another_data_sets_contract_needs_no_code_change(running_diabetes: Loop, tmp_path: Path) -> None:
    """Pointing AUTORETRAIN_CONTRACT at a regression data set trains and registers a regressor."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
    frame["sex"] = frame["sex"].map({1.0: "f", 2.0: "m"})
    ref = running_diabetes.blobs.upload(running_diabetes.incoming, "diabetes.csv", frame.to_csv(index=False).encode())
    key = WorkKey.for_blob(ref)

    record = running_diabetes.wait_final([key], timeout=240)[key]

    assert record.state is LedgerState.DONE, record.reason
    assert record.metrics is not None and record.metrics.primary == "r2"
    assert {"r2", "rmse", "mae"} <= set(record.metrics.values)


def test_a_window_of_three_drops_is_trained_on_exactly_those_three_files(running: Loop, tmp_path: Path) -> None:
    """window: all. The third drop's job trains on the three data versions, fixed at submission:
    its MLTable names exactly their three files, and the model's lineage names the three versions.
    Each drop lands once the one before is done (a version joins windows once it has trained)."""
    from autoretrain.datacontract import mltable_files

    drops = _wine_months(tmp_path / "drops", 3)
    keys = []
    for path in drops:
        ref = running.blobs.upload(running.incoming, path.name, path.read_bytes())
        keys.append(WorkKey.for_blob(ref))
        running.wait_final(keys[-1:], timeout=240)

    third = running.wait_final(keys, timeout=240)[keys[-1]]

    assert (third.training_set, third.members, third.trained_on) == ("autoretrain-data-trainset:3", 3, 3)
    [trainset] = [t for t in catalog_rows(running.home, "trainsets") if t["version"] == 3]
    assert trainset["members"] == ["autoretrain-data:1", "autoretrain-data:2", "autoretrain-data:3"]
    data_files = {str(d["version"]): d["path"] for d in catalog_rows(running.home, "data")}
    assert mltable_files(Path(trainset["path"])) == [data_files["1"], data_files["2"], data_files["3"]]
    [model] = [m for m in catalog_rows(running.home, "models") if m["job"] == keys[-1].job_name]
    assert (model["properties"]["training_files"], model["properties"]["trained_on_files"]) == ("3", "3")
    assert model["properties"]["training_set"] == "autoretrain-data-trainset:3"
    # The record keeps counts; `status FILE` still names the files, read from the training set.
    text = cli(running.env, "status", drops[-1].name, cwd=tmp_path).stdout
    assert "(window: 3 of 3: autoretrain-data:1, autoretrain-data:2, autoretrain-data:3)" in text
    [story] = json.loads(cli(running.env, "status", drops[-1].name, "--json", cwd=tmp_path).stdout)
    assert story["training_files"] == ["autoretrain-data:1", "autoretrain-data:2", "autoretrain-data:3"]


def test_retrain_runs_a_version_again_as_a_numbered_run_and_the_ledger_keeps_each(
    running: Loop, tmp_path: Path
) -> None:
    """`autoretrain retrain NAME` (and by work key): a new job and model on the same data version,
    next to the first run; a redelivery of the first event still changes nothing."""
    [drop] = _wine_months(tmp_path / "drops", 1)
    ref = running.blobs.upload(running.incoming, "2026-01.csv", drop.read_bytes())
    origin = WorkKey.for_blob(ref)
    first = running.wait_final([origin], timeout=300)[origin]
    assert first.state is LedgerState.DONE

    by_name = cli(running.env, "retrain", "2026-01.csv", cwd=tmp_path)
    by_key = cli(running.env, "retrain", origin.value, cwd=tmp_path)

    assert by_name.returncode == 0, by_name.stderr[-2000:]
    assert by_name.stdout.splitlines()[0].startswith(f"retrain 1 of {ref.path} (eTag {ref.etag}): job "
                                                     f"{origin.attempt(1).job_name} on {first.data_version}")
    assert by_key.returncode == 0, by_key.stderr[-2000:]
    assert f"retrain 2 of {ref.path}" in by_key.stdout
    attempts = sorted((r for r in running.ledger.records() if r.origin == origin), key=lambda r: r.attempt)
    assert [(r.attempt, r.state, r.data_version) for r in attempts] == [
        (0, LedgerState.DONE, first.data_version), (1, LedgerState.DONE, first.data_version),
        (2, LedgerState.DONE, first.data_version),
    ]
    assert len({r.model_version for r in attempts}) == 3 and len({r.job for r in attempts}) == 3
    assert len(catalog_rows(running.home, "data")) == 1  # one data version for the one blob version
    assert post_event(running.url, "ingest", blob_created(ref, f"late-{ref.etag}")) == 200
    assert len(list(running.ledger.records())) == 3
    status = cli(running.env, "status", "--json", cwd=tmp_path)
    assert sorted(r["attempt"] for r in json.loads(status.stdout)) == [0, 1, 2]




def test_status_blob_tells_one_file_s_story(running: Loop, tmp_path: Path) -> None:
    """`autoretrain status BLOB`: each move with its time, the data version and window, the job's
    steps with their logs, the model and the gate; `--json` the same as data."""
    [drop] = _wine_months(tmp_path / "drops", 1)
    good = running.blobs.upload(running.incoming, "2026-01.csv", drop.read_bytes())
    bad = running.blobs.upload(running.incoming, "broken.csv", b"alcohol,cultivar\n13.2,class_0\n")
    keys = [WorkKey.for_blob(good), WorkKey.for_blob(bad)]
    running.wait_final(keys, timeout=300)
    assert post_event(running.url, "ingest", blob_created(good, f"late-{good.etag}")) == 200  # a duplicate delivery

    text = cli(running.env, "status", "2026-01.csv", cwd=tmp_path)
    data = cli(running.env, "status", f"{running.incoming}/2026-01.csv", "--json", cwd=tmp_path)
    quarantined = cli(running.env, "status", keys[1].value, "--json", cwd=tmp_path)

    print(text.stdout)
    assert text.returncode == 0, text.stderr
    [story] = json.loads(data.stdout)
    assert [m["state"] for m in story["history"]] == ["claimed", "submitted", "completing", "done"]
    assert story["history"][1]["note"].startswith(f"{story['data_version']}, job {keys[0].job_name}")
    assert [s["step"] for s in story["steps"]] == ["prep", "train", "evaluate"]
    assert all(Path(s["log"]).is_file() and s["status"] == "Completed" for s in story["steps"])
    lines = text.stdout.splitlines()
    assert lines[0] == f"{good.path}  eTag {good.etag}  work key {keys[0]}  (first run): done"
    assert any(line.startswith(f"  data      {story['data_version']}, trained in ") for line in lines)
    assert any(line.startswith(f"  model     {story['model_version']}, promoted: f1_macro ") for line in lines)
    assert any(line.startswith("  gate      promoted") for line in lines)
    [bad_story] = json.loads(quarantined.stdout)
    assert [m["state"] for m in bad_story["history"]] == ["claimed", "quarantined"]
    assert bad_story["history"][1]["note"].startswith(f"{running.incoming}/broken.csv: missing column(s)")
    unknown = cli(running.env, "status", "never-dropped.csv", cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.startswith("autoretrain: never-dropped.csv: no blob version")
