"""Every component's command, run as a process of its own on a tiny CSV, writes its declared outputs.

The steps run as the local workspace and Azure ML run them: the command from the component YAML,
`python` replaced by this interpreter, ml/src as the working folder, wired as pipeline.yml says.
Most run as the local workspace runs them, in a fork of a warm runner (the libraries imported
once); the first pipeline (`runs`, on wine) runs each step cold, as a subprocess, as on Azure ML.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlmodules import load_ml_module, snapshot

from autoretrain.adapters.localworkspace.warm import WarmRunner
from autoretrain.datacontract import is_no_champion

ML = Path(__file__).resolve().parents[2] / "ml"
SRC = ML / "src"
WINE_CONTRACT = ML / "contract.yaml"
DIABETES_CONTRACT = ML / "contracts" / "diabetes.yaml"
WINE_CLASSES = {"class_0", "class_1", "class_2"}
_PLACEHOLDER = re.compile(r"\$\{\{(inputs|outputs)\.(\w+)\}\}")
_PARENT = re.compile(r"\$\{\{parent\.(?:inputs\.(\w+)|jobs\.(\w+)\.outputs\.(\w+))\}\}")
_OPTIONAL = re.compile(r"\$\[\[(.*?)\]\]")
_INPUT_NAME = re.compile(r"\$\{\{inputs\.(\w+)\}\}")




wine = load_ml_module(ML / "sample" / "wine.py", "ml_sample_wine")
prep = load_ml_module(SRC / "prep.py", "ml_step_prep")
evaluate = load_ml_module(SRC / "evaluate.py", "ml_step_evaluate")
contract_module = load_ml_module(SRC / "contract.py", "ml_step_contract")


def diabetes_frame() -> pd.DataFrame:
    """scikit-learn's diabetes data as CSV matching contracts/diabetes.yaml (sex as 1/2 labels)."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(as_frame=True, scaled=False)
    frame = bunch.data.copy()
    frame["sex"] = frame["sex"].astype(int).astype(str)
    frame["progression"] = bunch.target
    return frame


@dataclass(frozen=True)
class StepFailed:
    step: str
    returncode: int
    stderr: str


@dataclass
class Run:
    """Where each step's outputs went, and each step's stdout (its log)."""

    outputs: dict[str, dict[str, Path]]
    logs: dict[str, str]

    def read_json(self, step: str, output: str, file: str) -> Any:
        return json.loads((self.outputs[step][output] / file).read_text())


def _fill(command: str, bound: Mapping[tuple[str, str], str]) -> str:
    """The command with each ${{inputs.x}} / ${{outputs.y}} replaced by its (quoted) value."""
    return _PLACEHOLDER.sub(lambda m: shlex.quote(bound[(m[1], m[2])]), command)


_WARM: list[WarmRunner] = []
_WARM_LOCK = threading.Lock()


@pytest.fixture(scope="module", autouse=True)
def _warm_runner() -> Iterator[None]:
    """The warm runner the steps fork from, started on this (the main) thread: it dies with the
    thread that starts it. Stopped after the module's last test."""
    yield
    with _WARM_LOCK:
        while _WARM:
            _WARM.pop().close()


def _warm(env: Mapping[str, str]) -> WarmRunner:
    with _WARM_LOCK:
        if not _WARM:
            assert threading.current_thread() is threading.main_thread(), "a warm runner dies with its thread"
            _WARM.append(WarmRunner(sys.executable, env))
        return _WARM[0]


def _run_pipeline(
    workdir: Path, inputs: Mapping[str, Path | int | str], *, only: tuple[str, ...] | None = None,
    cold: bool = False,
) -> Run | StepFailed:
    """Run pipeline.yml's steps in order: each component's command with its inputs bound as wired;
    in a fork of the warm runner, or `cold`, each as a subprocess."""
    pipeline = yaml.safe_load((ML / "pipeline.yml").read_text())
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = Run(outputs={}, logs={})
    for step, job in pipeline["jobs"].items():
        if only is not None and step not in only:
            continue
        component_path = ML / job["component"]
        component = yaml.safe_load(component_path.read_text())
        values: dict[str, str] = {}
        for name, spec in component["inputs"].items():
            bound = job.get("inputs", {}).get(name)
            if bound is None:
                if "default" in spec:
                    values[name] = str(spec["default"])
                continue
            parent = _PARENT.fullmatch(bound)
            assert parent, f"{step}.{name}: unexpected binding {bound}"
            if parent[1] and parent[1] not in inputs:
                # Not given by the test: the pipeline's own placeholder (the champion's is the
                # "no champion yet" marker), as every submitter binds every input.
                declared = pipeline["inputs"].get(parent[1])
                if isinstance(declared, dict) and "path" in declared:
                    values[name] = str((ML / declared["path"]).resolve())
                    continue
                assert spec.get("optional") or "default" in spec, f"{step}.{name}: {parent[1]} is not given"
                if "default" in spec:
                    values[name] = str(spec["default"])
                continue
            values[name] = str(inputs[parent[1]] if parent[1] else run.outputs[parent[2]][parent[3]])
        run.outputs[step] = {name: workdir / step / name for name in component["outputs"]}
        bound = {("inputs", k): v for k, v in values.items()}
        bound |= {("outputs", k): str(v) for k, v in run.outputs[step].items()}
        # $[[ ... ]] holds the flags of optional inputs: kept only when they have a value.
        given = {k for kind, k in bound if kind == "inputs"}
        command = _OPTIONAL.sub(
            lambda m, given=given: m[1] if set(_INPUT_NAME.findall(m[1])) <= given else "", component["command"]
        )
        program, script, *args = shlex.split(_fill(command, bound))
        assert program == "python"
        code = snapshot(component_path, component, workdir / "code" / step)
        if cold:
            done = subprocess.run(
                [sys.executable, script, *args], cwd=code, env=env, capture_output=True, text=True, timeout=120
            )
            exit_code, stdout, stderr = done.returncode, done.stdout, done.stderr
        else:
            logs = workdir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            exit_code = _warm(env).run([sys.executable, script, *args], code, logs / f"{step}.out",
                                       logs / f"{step}.err", env, on_start=lambda _: None)
            stdout, stderr = ((logs / f"{step}.{kind}").read_text() for kind in ("out", "err"))
        if exit_code != 0:
            return StepFailed(step, exit_code, stderr)
        run.logs[step] = stdout
    return run


def _succeeded(result: Run | StepFailed) -> Run:
    assert isinstance(result, Run), f"step failed: {result}"
    return result


def _wine_drop_with_holes(folder: Path) -> tuple[Path, pd.DataFrame]:
    """One monthly wine drop with holes: 3 rows without a target, 3 feature values missing."""
    drop = pd.read_csv(wine.write_monthly_drops(folder / "drops", months=4, seed=0)[0], dtype=str)
    drop.loc[[1, 5, 9], "cultivar"] = ""
    drop.loc[[2, 3], "alcohol"] = ""
    drop.loc[4, "magnesium"] = "NA"
    data = folder / "2026-01.csv"
    drop.to_csv(data, index=False)
    return data, drop


def _patients_with_gaps(folder: Path) -> Path:
    """80 patients under the diabetes contract, two of them without a `sex` value."""
    frame = diabetes_frame().head(80).astype(object)
    frame.loc[[0, 7], "sex"] = ""
    data = folder / "patients.csv"
    frame.to_csv(data, index=False)
    return data


@dataclass(frozen=True)
class Runs:
    wine: Run | StepFailed
    wine_drop: pd.DataFrame
    diabetes: Run | StepFailed


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The wine and the diabetes pipelines, run side by side: wine's steps cold (mostly imports), as
    on Azure ML; diabetes's in forks of the warm runner, which starts meanwhile (on this thread)."""
    folder = tmp_path_factory.mktemp("runs")
    wine_data, drop = _wine_drop_with_holes(folder)
    patients = _patients_with_gaps(folder)
    with ThreadPoolExecutor(max_workers=1) as pool:
        wine_run = pool.submit(_run_pipeline, folder / "wine", {"data": wine_data, "contract": WINE_CONTRACT},
                               cold=True)
        diabetes_run = _run_pipeline(folder / "diabetes", {"data": patients, "contract": DIABETES_CONTRACT})
        return Runs(wine=wine_run.result(), wine_drop=drop, diabetes=diabetes_run)


@pytest.fixture(scope="module")
def wine_run(runs: Runs) -> tuple[Run, pd.DataFrame]:
    return _succeeded(runs.wine), runs.wine_drop


@pytest.fixture(scope="module")
def diabetes_run(runs: Runs) -> Run:
    return _succeeded(runs.diabetes)


def _prep_error(tmp_path: Path, frame: pd.DataFrame, contract: Path = WINE_CONTRACT) -> StepFailed:
    data = tmp_path / "bad.csv"
    frame.to_csv(data, index=False)
    result = _run_pipeline(tmp_path / "run", {"data": data, "contract": contract}, only=("prep",))
    assert isinstance(result, StepFailed)
    return result


class TestClassification:
    def test_report_counts_dropped_targets_and_missing_features(
        self, wine_run: tuple[Run, pd.DataFrame]
    ) -> None:
        """Rows without a target are dropped and counted; missing feature values are counted."""
        run, drop = wine_run
        report = run.read_json("prep", "report", "report.json")
        imputed = {c: 0 for c in drop.columns if c != "cultivar"} | {"alcohol": 2, "magnesium": 1}
        assert report == {
            "rows_in": len(drop),
            "rows_out": len(drop) - 3,
            "rows_dropped_missing_target": 3,
            "values_imputed": imputed,
            "train_rows": report["train_rows"],
            "test_rows": report["test_rows"],
            "split": "row content hash",
            "files": 1,
            "train_files": 1,
        }
        assert report["train_rows"] + report["test_rows"] == len(drop) - 3
        # A hash per row, not a quota: about the test fraction, within chance on 42 rows.
        assert 0.1 < report["test_rows"] / (len(drop) - 3) < 0.4

    def test_splits_hold_every_clean_row_once(self, wine_run: tuple[Run, pd.DataFrame]) -> None:
        """Train and test partition the rows that have a target."""
        run, drop = wine_run
        train = pd.read_parquet(run.outputs["prep"]["train_data"] / "data.parquet")
        test = pd.read_parquet(run.outputs["prep"]["test_data"] / "data.parquet")
        kept = drop[drop["cultivar"] != ""]
        assert sorted(pd.concat([train, test])["proline"]) == sorted(kept["proline"].astype(int))
        assert len(train) + len(test) == len(kept)

    def test_the_champion_is_scored_on_the_same_test_rows_as_the_new_model(
        self, wine_run: tuple[Run, pd.DataFrame], tmp_path: Path
    ) -> None:
        """The gate's two numbers come from one test split: the champion's metrics in metrics.json
        are exactly its score on the rows the new model was scored on."""
        first, _ = wine_run
        assert first.read_json("evaluate", "metrics", "metrics.json")["champion_metrics"] is None
        later = wine.write_monthly_drops(tmp_path / "drops", months=4, seed=0)[1]
        champion = first.outputs["train"]["model"]
        second = _succeeded(_run_pipeline(
            tmp_path / "second", {"data": later, "contract": WINE_CONTRACT, "champion": champion}
        ))

        metrics = second.read_json("evaluate", "metrics", "metrics.json")
        spec = contract_module.load_contract(WINE_CONTRACT)
        features, truth = contract_module.read_split(second.outputs["prep"]["test_data"], spec)
        predicted = evaluate._load_model(champion).predict(features)
        expected = evaluate.score("classification", truth.tolist(), list(predicted))
        assert (metrics["champion_metrics"], metrics["champion_error"], metrics["test_rows"]) == (
            expected, None, len(truth)
        )

    def test_mode_score_scores_the_champion_alone_on_every_row_and_trains_nothing(
        self, wine_run: tuple[Run, pd.DataFrame], tmp_path: Path
    ) -> None:
        """The pipeline in mode `score` (a scoring job, `retrain_when: champion_slips`): every row of the
        new data is a test row, train writes the "no model" marker, and evaluate's metrics are the
        champion's own on those rows."""
        first, _ = wine_run
        later = wine.write_monthly_drops(tmp_path / "drops", months=4, seed=0)[1]
        champion = first.outputs["train"]["model"]

        scored = _succeeded(_run_pipeline(
            tmp_path / "score", {"data": later, "contract": WINE_CONTRACT, "champion": champion, "mode": "score"}
        ))

        report = scored.read_json("prep", "report", "report.json")
        rows = len(pd.read_csv(later))
        assert (report["train_rows"], report["test_rows"]) == (0, rows)
        assert is_no_champion(scored.outputs["train"]["model"]), "nothing was fitted"
        spec = contract_module.load_contract(WINE_CONTRACT)
        features, truth = contract_module.read_split(scored.outputs["prep"]["test_data"], spec)
        predicted = evaluate._load_model(champion).predict(features)
        expected = evaluate.score("classification", truth.tolist(), list(predicted))
        metrics = scored.read_json("evaluate", "metrics", "metrics.json")
        assert (metrics["metrics"], metrics["champion_metrics"], metrics["test_rows"]) == (expected, None, rows)

    def test_mode_score_without_a_champion_fails_in_one_line(self, tmp_path: Path) -> None:
        later = wine.write_monthly_drops(tmp_path / "drops", months=4, seed=0)[1]
        failed = _run_pipeline(tmp_path / "score", {"data": later, "contract": WINE_CONTRACT, "mode": "score"})
        assert isinstance(failed, StepFailed) and (failed.step, failed.returncode) == ("evaluate", 2)
        assert "mode score scores the champion, and none was given" in failed.stderr

    def test_metrics_name_the_primary_metric_and_hold_every_classification_metric(
        self, wine_run: tuple[Run, pd.DataFrame]
    ) -> None:
        """metrics.json: f1_macro is primary, greater is better, all four metrics in [0, 1]."""
        run, _ = wine_run
        metrics = run.read_json("evaluate", "metrics", "metrics.json")
        report = run.read_json("prep", "report", "report.json")
        assert (metrics["primary_metric"], metrics["greater_is_better"]) == ("f1_macro", True)
        assert sorted(metrics["metrics"]) == ["accuracy", "f1_macro", "precision_macro", "recall_macro"]
        assert all(0.0 <= v <= 1.0 for v in metrics["metrics"].values())
        assert metrics["metrics"]["f1_macro"] > 0.7
        assert metrics["test_rows"] == report["test_rows"]

    def test_model_loads_with_mlflow_and_predicts_cultivars_for_rows_with_gaps(
        self, wine_run: tuple[Run, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The MLflow model loads as pyfunc (skops, trusted types from MLmodel) and imputes gaps."""
        import mlflow.pyfunc

        run, _ = wine_run
        monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
        model = mlflow.pyfunc.load_model(str(run.outputs["train"]["model"]))
        test = pd.read_parquet(run.outputs["prep"]["test_data"] / "data.parquet")
        rows = test.drop(columns="cultivar").astype(float)
        rows.loc[0, "alcohol"] = float("nan")
        predicted = list(model.predict(rows))
        assert len(predicted) == len(rows)
        assert set(predicted) <= WINE_CLASSES


    def test_metrics_are_logged_to_mlflow_when_a_tracking_uri_is_set(
        self, wine_run: tuple[Run, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With MLFLOW_TRACKING_URI set, evaluate logs every metric to a run there too."""
        import mlflow

        run, _ = wine_run
        store = tmp_path / "mlruns"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        try:
            result = evaluate.main(
                model=run.outputs["train"]["model"], test_data=run.outputs["prep"]["test_data"],
                contract=WINE_CONTRACT, metrics=tmp_path / "metrics",
            )
        finally:
            mlflow.end_run()
        logged = {p.name for p in store.glob("*/*/metrics/*")}
        assert logged == set(result["metrics"]) == {"accuracy", "f1_macro", "precision_macro", "recall_macro"}

    def test_a_tracking_failure_is_logged_and_metrics_json_still_written(
        self, wine_run: tuple[Run, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """metrics.json is the record; a tracking server that refuses the metrics does not fail the step."""
        import mlflow

        run, _ = wine_run
        monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        try:
            evaluate.main(
                model=run.outputs["train"]["model"], test_data=run.outputs["prep"]["test_data"],
                contract=WINE_CONTRACT, metrics=tmp_path / "metrics",
            )
        finally:
            mlflow.end_run()
        assert (tmp_path / "metrics" / "metrics.json").is_file()
        assert [r.message.split(" error=")[0] for r in caplog.records if r.levelname == "WARNING"] == [
            "mlflow_log_failed"
        ]


class TestRegression:
    def test_metrics_have_r2_as_primary_and_the_error_metrics(self, diabetes_run: Run) -> None:
        """Another contract, no code change: r2 is primary and greater is better; errors are positive."""
        metrics = diabetes_run.read_json("evaluate", "metrics", "metrics.json")
        assert (metrics["primary_metric"], metrics["greater_is_better"]) == ("r2", True)
        assert sorted(metrics["metrics"]) == ["mae", "r2", "rmse"]
        assert -1.0 < metrics["metrics"]["r2"] <= 1.0
        assert 0 < metrics["metrics"]["mae"] <= metrics["metrics"]["rmse"]
        report = diabetes_run.read_json("prep", "report", "report.json")
        assert metrics["test_rows"] == report["test_rows"] > 0

    def test_category_gaps_are_counted_and_the_model_encodes_categories(self, diabetes_run: Run) -> None:
        """The two missing `sex` values are counted; the model one-hot encodes the category column."""
        report = diabetes_run.read_json("prep", "report", "report.json")
        assert report["values_imputed"]["sex"] == 2
        assert (report["split"], report["train_rows"] + report["test_rows"]) == ("row content hash", 80)
        mlmodel = yaml.safe_load((diabetes_run.outputs["train"]["model"] / "MLmodel").read_text())
        inputs = json.loads(mlmodel["signature"]["inputs"])
        assert {c["name"]: c["type"] for c in inputs}["sex"] == "string"
        assert not any(c["required"] for c in inputs)


def _big_wine_csv(path: Path, rows: int) -> bytes:
    """`rows` valid wine rows (the 178 repeated) as CSV bytes, written to `path`."""
    frame = wine.wine_frame()
    big = pd.concat([frame] * (rows // len(frame) + 1), ignore_index=True).head(rows)
    data = big.to_csv(index=False).encode()
    path.write_bytes(data)
    return data


def _prep_file(tmp_path: Path, data: bytes) -> StepFailed:
    path = tmp_path / "bad.csv"
    path.write_bytes(data)
    result = _run_pipeline(tmp_path / "run", {"data": path, "contract": WINE_CONTRACT}, only=("prep",))
    assert isinstance(result, StepFailed)
    return result


class TestDeepDataErrors:
    """What ingest's head check cannot see: prep names the real line (and byte) and exits 65, the
    data's fault, so the loop quarantines the file rather than calling the job failed."""

    def test_a_bad_value_on_line_50000(self, tmp_path: Path) -> None:
        lines = _big_wine_csv(tmp_path / "ok.csv", 60_000).decode().split("\n")
        cells = lines[49_999].split(",")
        cells[2] = "n/a?"
        lines[49_999] = ",".join(cells)
        failed = _prep_file(tmp_path, "\n".join(lines).encode())
        assert (failed.step, failed.returncode) == ("prep", contract_module.DATA_ERROR_EXIT)
        assert failed.stderr == (
            "bad.csv: column 'ash' has 'n/a?' on line 50000; expected a number. Fix the file and upload it again.\n"
        )

    def test_latin_1_text_after_one_megabyte_names_the_real_line_and_byte(self, tmp_path: Path) -> None:
        data = bytearray(_big_wine_csv(tmp_path / "ok.csv", 20_000))
        # A cultivar saved by a latin-1 editor, past the first megabyte: 'class_1' becomes 'classé_1'.
        start = data.index(b"class_1\n", 1_091_000)
        data[start:start + 7] = "classé1".encode("latin-1")
        offset = start + 5
        line = data[:offset].count(b"\n") + 1
        failed = _prep_file(tmp_path, bytes(data))
        assert failed.returncode == contract_module.DATA_ERROR_EXIT
        assert failed.stderr == (
            f"bad.csv: line {line}, byte {offset} is not UTF-8; save the file as UTF-8 CSV and upload it again.\n"
        )
        assert offset > 1_091_000 and line > 15_000

    def test_a_ragged_row_on_line_30002(self, tmp_path: Path) -> None:
        lines = _big_wine_csv(tmp_path / "ok.csv", 40_000).decode().split("\n")
        lines[30_001] += ",7.5"
        failed = _prep_file(tmp_path, "\n".join(lines).encode())
        assert failed.returncode == contract_module.DATA_ERROR_EXIT
        assert failed.stderr.startswith("bad.csv: line 30002 has 15 fields, the header has 14;")

    @pytest.mark.parametrize(("case", "expected"), [
        ("few_rows", "bad.csv: 5 row(s) have a 'cultivar' value; at least 10 are needed"),
        ("one_class", "bad.csv: 'cultivar' has the single value 'class_0'; a classifier needs"),
        ("empty_target", "bad.csv: 0 row(s) have a 'cultivar' value"),
    ])
    def test_a_file_too_thin_to_train_on_is_the_file_s_fault(self, tmp_path: Path, case: str, expected: str) -> None:
        frame = wine.wine_frame()
        if case == "few_rows":
            frame = frame.head(5)
        elif case == "one_class":
            frame = frame[frame["cultivar"] == "class_0"]
        else:
            frame = frame.assign(cultivar="")
        failed = _prep_error(tmp_path, frame)
        assert failed.returncode == contract_module.DATA_ERROR_EXIT
        assert failed.stderr.startswith(expected)

    def test_first_non_utf8_counts_bytes_across_reads_and_split_characters(self, tmp_path: Path) -> None:
        """A two-byte character split across two reads is not an error; the bad byte after it is
        found at its offset in the file, not in the read that found it."""
        path = tmp_path / "f.csv"
        data = b"a,b\n" + b"x" * 5 + "é".encode() + b"yy\n" + b"\xff\n"
        path.write_bytes(data)
        assert prep.first_non_utf8(path, chunk=10) == (data.index(b"\xff"), 3)
        path.write_bytes(b"a,b\n" + "é".encode() * 10)
        assert prep.first_non_utf8(path, chunk=3) is None


class TestBadInput:
    def test_non_number_in_float_column_fails_prep_naming_column_line_and_value(self, tmp_path: Path) -> None:
        """A text value in a float column stops prep with one line: column, line, value, fix."""
        frame = wine.wine_frame().head(30).astype(object)
        frame.loc[5, "ash"] = "abc"
        failed = _prep_error(tmp_path, frame)
        assert (failed.step, failed.returncode) == ("prep", contract_module.DATA_ERROR_EXIT)
        assert failed.stderr == (
            "bad.csv: column 'ash' has 'abc' on line 7; expected a number. "
            "Fix the file and upload it again.\n"
        )

    def test_fraction_in_int_column_fails_prep(self, tmp_path: Path) -> None:
        """An int column rejects 3.5 and says a whole number is expected."""
        frame = wine.wine_frame().head(30).astype(object)
        frame.loc[0, "magnesium"] = "3.5"
        frame.loc[3, "magnesium"] = "many"
        failed = _prep_error(tmp_path, frame)
        assert failed.stderr == (
            "bad.csv: column 'magnesium' has '3.5' on line 2; expected a whole number "
            "(1 more bad value(s) in that column). Fix the file and upload it again.\n"
        )

    def test_missing_declared_column_fails_prep_naming_it(self, tmp_path: Path) -> None:
        """A file without a declared column stops prep with one line naming the column."""
        failed = _prep_error(tmp_path, wine.wine_frame().head(30).drop(columns="hue"))
        assert failed.stderr == (
            "bad.csv: line 1 (the header) lacks column(s) 'hue' required by contract.yaml; "
            "add them and upload the file again.\n"
        )

    def test_contract_with_unknown_type_fails_prep_with_the_fix(self, tmp_path: Path) -> None:
        """A contract feature of type 'text' is named, with the types that exist."""
        contract = tmp_path / "contract.yaml"
        contract.write_text(
            "target: cultivar\ntask: classification\nprimary_metric: f1_macro\nfeatures: {x: text}\n"
        )
        failed = _prep_error(tmp_path, wine.wine_frame().head(30), contract)
        assert failed.stderr == "contract.yaml: feature 'x' has type 'text'; use float, int or category.\n"


class TestSamples:
    def test_monthly_drops_partition_the_wine_data_in_dated_files(self, tmp_path: Path) -> None:
        """Four files named by month hold all 178 wines once, in the contract's columns."""
        paths = wine.write_monthly_drops(tmp_path, months=4, seed=0)
        assert [p.name for p in paths] == ["2026-01.csv", "2026-02.csv", "2026-03.csv", "2026-04.csv"]
        drops = [pd.read_csv(p) for p in paths]
        contract = yaml.safe_load(WINE_CONTRACT.read_text())
        assert all(list(d.columns) == [*contract["features"], contract["target"]] for d in drops)
        whole = pd.concat(drops).sort_values(list(drops[0].columns)).reset_index(drop=True)
        expected = wine.wine_frame().sort_values(list(drops[0].columns)).reset_index(drop=True)
        pd.testing.assert_frame_equal(whole, expected)
        assert [len(d) for d in drops] == [45, 45, 44, 44]

    def test_pipeline_default_sample_passes_prep(self, tmp_path: Path) -> None:
        """ml/sample/sample.csv, pipeline.yml's placeholder input, is valid under the contract."""
        report = prep.main(
            data=ML / "sample" / "sample.csv", contract=WINE_CONTRACT, train_data=tmp_path / "train",
            test_data=tmp_path / "test", report=tmp_path / "report",
        )
        assert (report["rows_in"], report["rows_out"]) == (40, 40)


class TestSplit:
    def test_same_seed_same_split_and_another_seed_another(self, tmp_path: Path) -> None:
        """The split is a function of the data and the seed only."""
        data = tmp_path / "wine.csv"
        wine.wine_frame().to_csv(data, index=False)

        def split(seed: int, name: str) -> pd.DataFrame:
            out = tmp_path / name
            prep.main(data=data, contract=WINE_CONTRACT, train_data=out / "train", test_data=out / "test",
                      report=out / "report", seed=seed)
            return pd.read_parquet(out / "test" / "data.parquet")

        pd.testing.assert_frame_equal(split(7, "a"), split(7, "b"))
        assert not split(7, "a").equals(split(8, "c"))

    def test_a_row_keeps_its_split_whatever_file_or_order_it_comes_in(self, tmp_path: Path) -> None:
        """Split by a hash of the row: the rows of one month stay in their split when the month
        comes again inside a bigger, shuffled window. The champion is never scored on its own
        training rows."""
        frame = wine.wine_frame()
        one_month, window = frame.iloc[:60], frame.sample(frac=1.0, random_state=3)

        def rows(data_frame: pd.DataFrame) -> set[tuple[str, ...]]:
            return set(data_frame.astype(str).itertuples(index=False, name=None))

        def test_rows(data_frame: pd.DataFrame, name: str) -> set[tuple[str, ...]]:
            data = tmp_path / f"{name}.csv"
            data_frame.to_csv(data, index=False)
            out = tmp_path / name
            prep.main(data=data, contract=WINE_CONTRACT, train_data=out / "train", test_data=out / "test",
                      report=out / "report")
            return rows(pd.read_parquet(out / "test" / "data.parquet")[list(data_frame.columns)])

        month_test = test_rows(one_month, "month")
        window_test = test_rows(window, "window")
        # The month's rows as typed as the splits' (float64, int64, str), so that a row is one text either way.
        assert month_test and month_test == window_test & rows(pd.read_csv(tmp_path / "month.csv"))

    def test_about_the_test_fraction_is_held_out_and_at_least_one_row(self) -> None:
        rows = pd.DataFrame({"a": [str(i) for i in range(1000)], "y": ["x"] * 1000})
        assert 200 < prep.hash_test_mask(rows, 0.25, seed=1).sum() < 300
        tiny = rows.head(3)
        mask = prep.hash_test_mask(tiny, 0.01, seed=1)
        assert (mask.sum(), (~mask).sum()) == (1, 2)


class TestTrainingSet:
    def test_every_file_of_the_training_set_is_read_and_a_bad_value_names_its_file(self, tmp_path: Path) -> None:
        """prep reads the MLTable the workspace registers: all its files, in order; an error names the
        file and its own line."""
        from autoretrain.datacontract import mltable_text

        drops = wine.write_monthly_drops(tmp_path / "drops", months=3, seed=0)
        folder = tmp_path / "trainset"
        folder.mkdir()
        (folder / "MLTable").write_text(mltable_text(str(d) for d in drops))
        report = prep.main(data=folder, contract=WINE_CONTRACT, train_data=tmp_path / "train",
                           test_data=tmp_path / "test", report=tmp_path / "report")
        assert report["rows_in"] == sum(len(pd.read_csv(d)) for d in drops)

        lines = drops[1].read_text().splitlines()
        cells = lines[3].split(",")
        cells[0] = "twelve"
        lines[3] = ",".join(cells)
        drops[1].write_text("\n".join(lines) + "\n")
        with pytest.raises(prep.InputError) as caught:
            prep.main(data=folder, contract=WINE_CONTRACT, train_data=tmp_path / "t2", test_data=tmp_path / "s2",
                      report=tmp_path / "r2")
        assert str(caught.value).startswith(f"{drops[1].name}: column 'alcohol' has 'twelve' on line 4;")
        # An older file of the window passed prep before: its fault now is ours (the contract), not
        # the new file's, so it is not a DataError and the new file is not quarantined for it.
        assert not isinstance(caught.value, prep.DataError)
        assert "data version 2 of 3 in the training set and passed prep before" in str(caught.value)

        drops[1].write_text(drops[0].read_text())
        lines = drops[2].read_text().splitlines()
        lines[5] = lines[5] + ",extra"
        drops[2].write_text("\n".join(lines) + "\n")
        with pytest.raises(prep.DataError) as newest:
            prep.main(data=folder, contract=WINE_CONTRACT, train_data=tmp_path / "t3", test_data=tmp_path / "s3",
                      report=tmp_path / "r3")
        assert str(newest.value).startswith(f"{drops[2].name}: line 6 has 15 fields, the header has 14;")


class TestFairGate:
    def test_a_partial_export_with_two_of_three_classes_does_not_replace_the_champion(
        self, tmp_path: Path
    ) -> None:
        """The case that broke the old gate. A model trained on a partial export (two cultivars of
        three) scores near 1.0 on that export's own test rows and beat the champion's own number.
        Scored on the same rows as the champion, rows of every accepted month, it loses, and the
        gate keeps the champion."""
        from autoretrain.datacontract import mltable_text, read_contract
        from autoretrain.domain import Metrics, ModelVersion
        from autoretrain.loop.gate import _decide

        # Two features only: a harder problem than the whole wine data, where every model scores 1.0.
        contract = tmp_path / "contract.yaml"
        contract.write_text("target: cultivar\ntask: classification\nprimary_metric: f1_macro\n"
                            "features: {alcohol: float, hue: float}\n")
        frame = wine.wine_frame().sample(frac=1.0, random_state=11)
        full, partial = frame.iloc[:120], frame.iloc[120:]
        partial = partial[partial["cultivar"] != "class_2"]
        files = {"full": tmp_path / "2026-01.csv", "partial": tmp_path / "2026-02.csv"}
        full.to_csv(files["full"], index=False)
        partial.to_csv(files["partial"], index=False)

        def training_set(name: str, members: list[Path]) -> Path:
            folder = tmp_path / name
            folder.mkdir()
            (folder / "MLTable").write_text(mltable_text(str(m) for m in members))
            return folder

        champion_run = _succeeded(_run_pipeline(
            tmp_path / "champion", {"data": training_set("set1", [files["full"]]), "contract": contract}
        ))
        champion_own = champion_run.read_json("evaluate", "metrics", "metrics.json")["metrics"]["f1_macro"]
        champion = champion_run.outputs["train"]["model"]
        # The old way: the partial export trained and tested on itself, against the stored number.
        alone = _succeeded(_run_pipeline(
            tmp_path / "alone", {"data": training_set("set2", [files["partial"]]), "contract": contract}
        ))
        alone_score = alone.read_json("evaluate", "metrics", "metrics.json")["metrics"]["f1_macro"]
        assert alone_score > champion_own  # the old gate promoted it
        # The fair way: trained on the partial export (window: last 1), tested with the champion on
        # the test rows of both months.
        fair = _succeeded(_run_pipeline(
            tmp_path / "fair",
            {"data": training_set("set3", [files["full"], files["partial"]]), "contract": contract,
             "champion": champion, "train_last": 1},
        ))

        raw = fair.read_json("evaluate", "metrics", "metrics.json")
        assert raw["metrics"]["f1_macro"] < raw["champion_metrics"]["f1_macro"]
        promote, decision = _decide(
            Metrics.from_evaluate(raw),
            ModelVersion("autoretrain-model", "1", "j", Metrics({"f1_macro": 1.0}, "f1_macro")),
            "1", read_contract(contract).promote,
        )
        assert not promote and decision.startswith("kept v1: f1_macro")


class TestReaders:
    def test_the_fast_and_the_exact_reader_give_the_same_splits(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """pandas' parser reads valid files; the csv-module reader, which names lines, takes over on
        anything unusual. A valid file (gaps, 'NA', spaces in categories) splits the same either way."""
        drop = pd.read_csv(wine.write_monthly_drops(tmp_path / "drops", months=2, seed=4)[0], dtype=str)
        drop.loc[[2, 3], "alcohol"] = ""
        drop.loc[4, "magnesium"] = "NA"
        drop.loc[5, "cultivar"] = "none"
        data = tmp_path / "drop.csv"
        drop.to_csv(data, index=False)

        def split(name: str) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
            out = tmp_path / name
            report = prep.main(data=data, contract=WINE_CONTRACT, train_data=out / "train",
                               test_data=out / "test", report=out / "report")
            return pq.read_table(out / "train" / "data.parquet"), pq.read_table(out / "test" / "data.parquet"), report

        fast = split("fast")
        monkeypatch.setattr(prep, "read_fast", lambda *_: None)
        exact = split("exact")
        for mine, theirs in zip(fast[:2], exact[:2], strict=True):
            assert mine.schema == theirs.schema
            pd.testing.assert_frame_equal(mine.to_pandas(), theirs.to_pandas())
        assert fast[2] == exact[2]
        assert fast[2]["rows_dropped_missing_target"] == 1


_SMALL_CONTRACT = ("target: cultivar\ntask: classification\nprimary_metric: f1_macro\n"
                   "features: {alcohol: float, magnesium: int, colour: category}\n")


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 17])
def test_prep_writes_a_split_slice_by_slice_as_one_write_would(tmp_path: Path, chunk: int) -> None:
    """The split is written a slice at a time (its memory): the file holds the very table, schema and
    rows, that a single write of the selected rows holds, whatever the slice, with gaps, whole numbers
    and text; and train and evaluate read it back as the selected rows, typed for the model."""
    contract = tmp_path / "contract.yaml"
    contract.write_text(_SMALL_CONTRACT)
    spec = contract_module.load_contract(contract)
    schema = contract_module.split_schema(spec)
    frame = pd.DataFrame({
        "alcohol": [13.2, None, 12.25, 14.1, 11.0, 13.0, 12.5],
        "magnesium": pd.array([100, 98, None, 101, 87, 99, 120], dtype="Int64"),
        "colour": ["red", None, "white, quoted", "white", "rosé", "red", None],
        "cultivar": ["class_0", "class_1", "class, quoted", "class_2", "class_2", "class_0", "class_1"],
    })
    for mask in ([True, False, True, True, False, True, False], [False] * 7, [True] * 7):
        folder = tmp_path / f"{chunk}-{sum(mask)}"
        folder.mkdir()
        prep._write_rows(frame, pd.Series(mask).to_numpy(), folder / contract_module.DATA_FILE, schema, chunk=chunk)
        whole = tmp_path / f"whole-{sum(mask)}.parquet"
        one = pa.Table.from_pandas(frame[mask], schema=schema, preserve_index=False)
        pq.write_table(one.replace_schema_metadata(None), whole)  # prep stores no pandas metadata
        written = pq.read_table(folder / contract_module.DATA_FILE)
        assert written.schema == schema
        assert written.equals(pq.read_table(whole))
        pd.testing.assert_frame_equal(pd.read_parquet(folder / contract_module.DATA_FILE), pd.read_parquet(whole))

        features, target = contract_module.read_split(folder, spec)
        selected = frame[mask].reset_index(drop=True)
        expected = pd.DataFrame({
            "alcohol": selected["alcohol"].astype("float64"),
            "magnesium": selected["magnesium"].astype("float64"),
            "colour": selected["colour"].astype(object).where(selected["colour"].notna(), float("nan")),
        })
        pd.testing.assert_frame_equal(features, expected)
        pd.testing.assert_series_equal(target, selected["cultivar"].astype(object))


class TestSplitFiles:
    """The splits prep writes are Parquet typed by the contract, which train and evaluate read as
    the model has always seen them: numbers as float64, categories as Python strings with NaN gaps."""

    def test_the_schema_is_the_contract_s_types_in_its_order(
        self, wine_run: tuple[Run, pd.DataFrame], diabetes_run: Run
    ) -> None:
        run, _ = wine_run
        wine_spec = contract_module.load_contract(WINE_CONTRACT)
        for output in ("train_data", "test_data"):
            schema = pq.read_schema(run.outputs["prep"][output] / "data.parquet")
            assert schema.names == [*wine_spec.features, "cultivar"]
            types = dict(zip(schema.names, schema.types, strict=True))
            assert {c: types[c] for c in wine_spec.columns_of("float")} == dict.fromkeys(
                wine_spec.columns_of("float"), pa.float64()
            )
            assert {c: types[c] for c in wine_spec.columns_of("int")} == dict.fromkeys(
                ["magnesium", "proline"], pa.int64()
            )
            assert types["cultivar"] == pa.string()
        # proline has no gap, magnesium one (its 'NA'): an int column stays int64, the gap a null.
        both = pa.concat_tables([pq.read_table(run.outputs["prep"][o] / "data.parquet") for o in ("train_data",
                                                                                                 "test_data")])
        assert (both["proline"].null_count, both["magnesium"].null_count) == (0, 1)

        diabetes_spec = contract_module.load_contract(DIABETES_CONTRACT)
        schema = pq.read_schema(diabetes_run.outputs["prep"]["train_data"] / "data.parquet")
        assert schema == contract_module.split_schema(diabetes_spec)
        types = dict(zip(schema.names, schema.types, strict=True))
        assert (types["sex"], types["progression"], types["age"]) == (pa.string(), pa.float64(), pa.float64())

    def test_train_and_evaluate_read_numbers_as_float_and_categories_as_strings_with_nan_gaps(
        self, diabetes_run: Run, wine_run: tuple[Run, pd.DataFrame]
    ) -> None:
        spec = contract_module.load_contract(DIABETES_CONTRACT)
        parts = [contract_module.read_split(diabetes_run.outputs["prep"][o], spec) for o in ("train_data", "test_data")]
        features = pd.concat([f for f, _ in parts])
        assert features["sex"].dtype == object and features["age"].dtype == "float64"
        assert parts[0][1].dtype == "float64"
        sexes = features["sex"].tolist()
        assert {type(s) for s in sexes} == {str, float} and sum(s != s for s in sexes) == 2  # two NaN gaps
        run, _ = wine_run
        wine_spec = contract_module.load_contract(WINE_CONTRACT)
        wine_features, cultivars = contract_module.read_split(run.outputs["prep"]["train_data"], wine_spec)
        assert (wine_features.dtypes == "float64").all() and cultivars.dtype == object
        assert set(cultivars) <= WINE_CLASSES

    def test_a_split_that_is_not_parquet_is_one_line_naming_the_file(self, tmp_path: Path) -> None:
        spec = contract_module.load_contract(WINE_CONTRACT)
        with pytest.raises(contract_module.InputError, match=r"data\.parquet: missing; pass the folder"):
            contract_module.read_split(tmp_path, spec)
        (tmp_path / "data.parquet").write_text("alcohol,cultivar\n1.0,class_0\n")
        not_parquet = r"data\.parquet: not a split that prep wrote \(.+\); rerun prep\.$"
        with pytest.raises(contract_module.InputError, match=not_parquet):
            contract_module.read_split(tmp_path, spec)
        pq.write_table(pa.table({"alcohol": [1.0], "cultivar": ["class_0"]}), tmp_path / "data.parquet")
        with pytest.raises(contract_module.InputError, match=r"data\.parquet: missing column\(s\) 'malic_acid', "):
            contract_module.read_split(tmp_path, spec)


def test_classification_metrics_are_sklearns_on_the_labels_themselves() -> None:
    """evaluate.score works on integer codes of the classes for speed: its numbers are sklearn's on
    the string labels, also when a class appears only in the truth or only in the predictions."""
    from sklearn import metrics as m

    rng = np.random.default_rng(3)
    truth = rng.choice(["1", "2", "3", "only-true"], size=2000).astype(object)
    predicted = rng.choice(["1", "2", "3", "only-predicted"], size=2000).astype(object)

    got = evaluate.score("classification", truth, predicted)

    expected = {
        "accuracy": m.accuracy_score(list(truth), list(predicted)),
        "f1_macro": m.f1_score(list(truth), list(predicted), average="macro", zero_division=0),
        "precision_macro": m.precision_score(list(truth), list(predicted), average="macro", zero_division=0),
        "recall_macro": m.recall_score(list(truth), list(predicted), average="macro", zero_division=0),
    }
    assert got == pytest.approx(expected, rel=0, abs=1e-15)
    assert got == evaluate.score("classification", list(truth), list(predicted)), "lists and arrays alike"
