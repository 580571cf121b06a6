"""No training while the champion still holds, on the real local stack (Azurite, the host, the local
workspace running ml/pipeline.yml in mode `score`): with `training: {retrain_when: champion_slips}`,
a second file from the first one's distribution ends `held` with no new model, and a file whose
features have shifted trains, and its model goes through the champion gate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from localstack import ROOT, Loop, cli, start
from mlmodules import wine

from autoretrain.adapters.localworkspace.workspace import catalog_rows
from autoretrain.domain import LedgerState, WorkKey
from autoretrain.waiting import wait_until

pytestmark = pytest.mark.integration

SLIP = 0.05


def fresh_wines(rows: int, seed: int, shift: float = 0.0) -> bytes:
    """`rows` new wines from the wine data's distribution: its rows drawn again with 5% noise on every
    feature (so no row is one the champion saw); `shift` moves every feature by that many of its
    standard deviations (a changed instrument, a new supplier)."""
    rng = np.random.default_rng(seed)
    frame = wine().wine_frame()
    drawn = frame.sample(n=rows, replace=True, random_state=seed).reset_index(drop=True)
    for column in drawn.columns.drop("cultivar"):
        values = drawn[column].to_numpy(dtype="float64") * (1 + rng.normal(0, 0.05, size=rows))
        values += shift * float(frame[column].std())
        drawn[column] = values.round(0).astype("int64") if frame[column].dtype.kind == "i" else values.round(4)
    return str(drawn.to_csv(index=False)).encode()


@pytest.fixture
def scoring(tmp_path: Path, unique: str, azurite: str) -> Iterator[Loop]:
    contract = tmp_path / "score-first" / "contract.yaml"
    contract.parent.mkdir()
    contract.write_text((ROOT / "ml" / "contract.yaml").read_text(encoding="utf-8")
                        + f"training: {{retrain_when: champion_slips, slip: {SLIP}}}\n", encoding="utf-8")
    yield from start(tmp_path, unique, azurite, {"AUTORETRAIN_CONTRACT": str(contract)})


def test_the_champion_holds_on_the_same_distribution_and_a_shifted_file_trains(scoring: Loop) -> None:
    first = scoring.blobs.upload(scoring.incoming, "2026-01.csv", fresh_wines(300, seed=1))
    [champion] = scoring.wait_final([WorkKey.for_blob(first)], timeout=180).values()
    assert champion.state is LedgerState.DONE and champion.promoted, (champion.state, champion.reason)
    assert champion.metrics is not None
    promoted_with = champion.metrics.primary_value

    same = scoring.blobs.upload(scoring.incoming, "2026-02.csv", fresh_wines(300, seed=2))
    [held] = scoring.wait_final([WorkKey.for_blob(same)], timeout=180).values()

    assert held.state is LedgerState.HELD, (held.state, held.reason)
    assert held.metrics is not None and held.metrics.test_rows == 300, "scored on every row of the file"
    assert held.metrics.champion_value == promoted_with
    assert promoted_with - held.metrics.primary_value <= SLIP
    assert champion.model_version is not None and champion.model_version.endswith(f":{held.champion}")
    assert len(catalog_rows(scoring.home, "models")) == 1, "no model was trained for it"
    [score_job] = [j for j in catalog_rows(scoring.home, "jobs") if j["name"] == held.job]
    assert score_job["mode"] == "score"
    # The outcome's line is written once the ledger move is done (and the champion tagged): wait for it.
    assert wait_until(lambda: "complete.champion_held" in scoring.log.read_text(), timeout=10)
    assert "ingest.scoring_submitted" in scoring.log.read_text()

    shifted = scoring.blobs.upload(scoring.incoming, "2026-03.csv", fresh_wines(300, seed=3, shift=1.5))
    [trained] = scoring.wait_final([WorkKey.for_blob(shifted)], timeout=240).values()

    assert trained.state is LedgerState.DONE, (trained.state, trained.reason)
    assert trained.model_version is not None and trained.decision, "its model went through the gate"
    assert len(catalog_rows(scoring.home, "models")) == 2
    slipped = next(m.note for m in trained.history if m.state == "waiting")
    assert "it slipped by" in slipped
    # The held file joined the training window of the shifted file's job, as a done one does.
    [job] = [j for j in catalog_rows(scoring.home, "jobs") if j["name"] == trained.job]
    [trainset] = [t for t in catalog_rows(scoring.home, "trainsets") if f"{t['name']}:{t['version']}" == job["data"]]
    assert trainset["members"] == [champion.data_version, held.data_version, trained.data_version]

    status = cli(scoring.env, "status", scoring.incoming + "/2026-02.csv", cwd=scoring.home.parent)
    assert status.returncode == 0, status.stderr
    assert "held" in status.stdout and f"{held.metrics.primary_value:.4f}" in status.stdout
    overview = cli(scoring.env, "status", cwd=scoring.home.parent)
    assert "1 held" in overview.stdout + overview.stderr
