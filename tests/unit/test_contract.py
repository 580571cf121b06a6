"""The data contract file and the head check ingest runs on each customer file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlmodules import load_ml_module

from autoretrain.contract import HEAD_BYTES, Contract, check_head, check_name, load_contract
from autoretrain.domain.errors import ConfigError, ContractError

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = Contract(target="y", task="classification", primary_metric="f1_macro",
                    features={"n": "float", "k": "int", "c": "category"})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "contract.yaml"
    path.write_text(text)
    return path


BASE = "target: y\ntask: regression\nprimary_metric: r2\nfeatures: {a: float}\n"

class TestLoadContract:
    def test_shipped_contracts_load(self) -> None:
        """The demo contract and the second data set's contract are valid."""
        wine = load_contract(ROOT / "ml" / "contract.yaml")
        diabetes = load_contract(ROOT / "ml" / "contracts" / "diabetes.yaml")
        assert (wine.target, wine.task, wine.primary_metric) == ("cultivar", "classification", "f1_macro")
        assert (diabetes.task, diabetes.primary_metric) == ("regression", "r2")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("target: y\ntask: classification\nprimary_metric: f1\n", "'features' is missing"),
            (
                "target: y\ntask: clustering\nprimary_metric: f1\nfeatures: {a: float}\n",
                "task 'clustering' is not one of",
            ),
            ("target: y\ntask: regression\nprimary_metric: r2\nfeatures: {a: text}\n", "feature 'a' has type 'text'"),
            ("target: y\ntask: regression\nprimary_metric: r2\nfeatures: {y: float}\n", "also listed as a feature"),
            ("target: [y\n", "not valid YAML"),
            ("target: y\ntask: regression\nprimary_metric: f1_macro\nfeatures: {a: float}\n", "is not written for"),
            (BASE + "model: {estimator: os.system}\n", "model.estimator 'os.system' is not allowed for regression"),
            (BASE + "model: {estimator: LogisticRegression}\n", "is not allowed for regression; use one of Ridge"),
            (BASE + "model: {estimator: Ridge, params: {solver: x}}\n", "Ridge has no parameter 'solver' here"),
            (BASE + "model: {estimator: Ridge, params: {alpha: high}}\n", "model.params.alpha is 'high'; it must be"),
            (BASE + "promote: {min_delta: -1}\n", "promote.min_delta is -1; it must be a number of at least 0"),
            (BASE + "promote: {margin: 1}\n", "promote has unknown key(s) margin"),
            (BASE + "training: {window: last}\n", "training.versions is None; it must be a whole number of at least 1"),
            (BASE + "training: {window: week}\n", "training.window 'week' is not one of all, last, days"),
            (BASE + "training: {window: all, days: 3}\n", "training window 'all' takes no days"),
            # A misspelt key used to be ignored, and its default used (window: all for `traning`).
            (BASE + "traning: {window: last, versions: 2}\n",
             "unknown key(s) traning; the keys allowed at the top level are target, task, primary_metric, features,"
             " max_bytes, model, promote, training"),
        ],
    )
    def test_bad_contract_names_the_problem(self, tmp_path: Path, text: str, message: str) -> None:
        with pytest.raises(ConfigError) as info:
            load_contract(write(tmp_path, text))
        assert message in str(info.value) and "\n" not in str(info.value)


class TestModelPromoteAndWindow:
    def test_defaults_are_todays_estimators_no_margin_and_every_version(self, tmp_path: Path) -> None:
        contract = load_contract(write(tmp_path, BASE))
        assert (contract.model.estimator, dict(contract.model.params)) == ("Ridge", {"alpha": 1.0})
        assert (contract.promote.min_delta, contract.promote.min_value) == (0.0, None)
        assert contract.training.window == "all"

    def test_an_allowed_estimator_with_its_parameters_a_rule_and_a_window(self, tmp_path: Path) -> None:
        text = (BASE.replace("regression", "classification").replace("r2", "f1_macro")
                + "model: {estimator: HistGradientBoostingClassifier, params: {max_iter: 200}}\n"
                + "promote: {min_delta: 0.01, min_value: 0.8}\ntraining: {window: last, versions: 3}\n")
        contract = load_contract(write(tmp_path, text))
        assert (contract.model.estimator, dict(contract.model.params)) == ("HistGradientBoostingClassifier",
                                                                           {"max_iter": 200})
        assert (contract.promote.min_delta, contract.promote.min_value) == (0.01, 0.8)
        assert (contract.training.window, contract.training.versions) == ("last", 3)


class TestCheckHead:
    def test_good_head_counts_rows_and_ignores_column_order_and_extra_columns(self) -> None:
        head = b"\xef\xbb\xbfextra,y,c,k,n\n" + b"z,yes,a,1,1.5\nz,no,b,,NaN\n" * 5
        assert check_head("in/a.csv", head, CONTRACT, complete=True) == 10

    def test_cut_last_line_of_a_partial_head_is_not_judged(self) -> None:
        """Only the first bytes were read: a row cut in the middle is not an error."""
        head = b"n,k,c,y\n1.5,1,a,yes\n2.5,2,b,n"
        assert check_head("in/a.csv", head + b"o\n" + b"3.5,3,a,yes\n4.5,4,b,no\n" * 4, CONTRACT, complete=True) == 10
        assert check_head("in/a.csv", head[:-3] + b"x" * 0 + b"2.", CONTRACT, complete=False) == 1

    @pytest.mark.parametrize("first", [b"1.5,1,a,yes\n", b"1.5,1,a,\n"])
    def test_a_whole_file_of_more_than_head_rows_is_not_judged_on_its_first_rows_alone(self, first: bytes) -> None:
        """A small file (all of it in the head) with 1,000 rows of one class, or with no target, and the
        other class after them: valid, so it is not quarantined for what the first 1,000 rows lack."""
        head = b"n,k,c,y\n" + first * 1000 + b"2.5,2,b,no\n" * 20
        assert len(head) < HEAD_BYTES
        assert check_head("in/a.csv", head, CONTRACT, complete=True) == 1000

    @pytest.mark.parametrize(
        ("head", "message"),
        [
            (b"n,k,c,y\n" + b"1.5,1,a,\n" * 12, "the target column 'y' has no values"),
            (b"n,k,c,y,y\n" + b"1.5,1,a,yes,no\n" * 12, "column(s) 'y' appear twice in line 1"),
            (b"n,k,c,y\n" + b"1.5,1,a,yes\n2.5,2,b,no\n" * 2, "4 row(s) have a 'y' value; at least 10 are needed"),
            (b"n,k,c,y\n" + b"1.5,1,a,yes\n" * 12, "'y' has the single value 'yes'; a classifier needs"),
        ],
    )
    def test_a_whole_file_in_the_head_is_refused_for_what_prep_would_refuse(self, head: bytes, message: str) -> None:
        """Empty target, a doubled column, too few rows, one class: quarantined at ingest, not failed in prep."""
        with pytest.raises(ContractError) as info:
            check_head("in/a.csv", head, CONTRACT, complete=True)
        assert message in str(info.value) and "\n" not in str(info.value)

    @pytest.mark.parametrize(
        ("head", "message"),
        [
            (b"n,k,y\n1,2,yes\n", "missing column(s) 'c'"),
            (b"n,k,c,y\n1.5,2.5,a,yes\n", "column 'k' has '2.5' on line 2; expected a whole number"),
            (b"n,k,c,y\n1,2,a,yes\n1,2,a\n", "line 3 has 3 fields, the header has 4"),
            # A quoted field spans lines 2-4: the bad value is on line 5, as an editor shows it.
            (b'n,k,c,y\n1,2,"a\nb\nc",yes\noops,2,a,no\n', "column 'n' has 'oops' on line 5"),
            (b'n,k,c,y\n1,2,"a\nb",yes\n1,2\n', "line 4 has 2 fields"),
            (b"n,k,c,y\n", "no data rows"),
            (b"", "no header line"),
            (b"n,k,c,y\n\xff\xfe1,2,a,yes\n", "is not UTF-8"),
        ],
    )
    def test_bad_head_is_one_actionable_line(self, head: bytes, message: str) -> None:
        with pytest.raises(ContractError) as info:
            check_head("incoming/a.csv", head, CONTRACT, complete=True)
        text = str(info.value)
        assert message in text and text.startswith("incoming/a.csv: ") and "\n" not in text

    def test_regression_target_must_be_numeric(self) -> None:
        contract = Contract(target="y", task="regression", primary_metric="r2", features={"n": "float"})
        with pytest.raises(ContractError, match="column 'y' has 'high'"):
            check_head("a.csv", b"n,y\n1,high\n", contract, complete=True)

    def test_name_and_size_are_checked_before_any_read(self) -> None:
        small = Contract(target="y", task="regression", primary_metric="r2", features={"n": "float"}, max_bytes=10)
        with pytest.raises(ContractError, match=r"only \.csv files"):
            check_name("a.parquet", 5, small)
        with pytest.raises(ContractError, match="11 bytes is over the contract's limit of 10"):
            check_name("a.csv", 11, small)
        check_name("A.CSV", 10, small)


_GOOD_ROWS = b"1.5,1,a,yes\n2.5,2,b,no\n" * 6


class TestOneCsvCheck:
    """Ingest's head check and prep's check of every row apply datacontract's rules, in its words."""

    @pytest.mark.parametrize(
        "data",
        [
            b"n,k,c,y\n1.5,1,a,yes\nabc,2,b,no\n" + _GOOD_ROWS,
            b"n,k,c,y\n1.5,1,a,yes\n2.5,2.5,b,no\n" + _GOOD_ROWS,
            b"n,k,c,y\n1.5,1,a,yes\n2.5,2,b\n" + _GOOD_ROWS,
            b"n,k,c,y,k\n" + _GOOD_ROWS.replace(b"\n", b",1\n"),
            b"n,k,c,y\n" + b"1.5,1,a,yes\n2.5,2,b,no\n" * 2,
            b"n,k,c,y\n" + b"1.5,1,a,yes\n" * 12,
        ],
        ids=["not-a-number", "not-whole", "ragged", "doubled-column", "too-few-rows", "single-class"],
    )
    def test_a_fault_reads_the_same_at_ingest_and_in_prep(self, tmp_path: Path, data: bytes) -> None:
        prep = load_ml_module(ROOT / "ml" / "src" / "prep.py", "prep_one_check")
        (tmp_path / "a.csv").write_bytes(data)
        contract = write(tmp_path, "target: y\ntask: classification\nprimary_metric: f1_macro\n"
                                   "features: {n: float, k: int, c: category}\n")
        with pytest.raises(ContractError) as ingest:
            check_head("a.csv", data, load_contract(contract), complete=True)
        with pytest.raises(prep.DataError) as step:
            prep.main(data=tmp_path / "a.csv", contract=contract, train_data=tmp_path / "train",
                      test_data=tmp_path / "test", report=tmp_path / "report")
        assert str(step.value) == str(ingest.value)

    def test_prep_s_fast_path_leaves_a_doubled_column_to_the_exact_reader(self, tmp_path: Path) -> None:
        """pandas would read a doubled column as 'k' and 'k.1'; the shared header rule sees it twice."""
        prep = load_ml_module(ROOT / "ml" / "src" / "prep.py", "prep_one_check")
        path = tmp_path / "a.csv"
        path.write_bytes(b"n,k,c,y,k\n" + _GOOD_ROWS.replace(b"\n", b",1\n"))
        contract = Contract(target="y", task="classification", primary_metric="f1_macro",
                            features={"n": "float", "k": "int", "c": "category"})
        assert prep.read_fast(path, contract) is None
        with pytest.raises(prep.DataError, match=r"^a\.csv: column\(s\) 'k' appear twice in line 1;"):
            prep.read_training_set(path, contract)


def _pipeline_contract_module() -> Any:
    return load_ml_module(ROOT / "ml" / "src" / "contract.py", "pipeline_contract")


def test_one_contract_module_is_shared_with_every_component() -> None:
    """The rules live once (autoretrain/datacontract.py); every component includes that file in its
    snapshot, azure-ai-ml's own loader accepts the field, and ml/src keeps no copy of the rules."""
    from azure.ai.ml import load_component

    shared = ROOT / "autoretrain" / "datacontract.py"
    for path in sorted((ROOT / "ml" / "components").glob("*.yml")):
        component = load_component(path)
        assert [(path.parent / i).resolve() for i in component.additional_includes] == [shared], path.name
    assert not (ROOT / "ml" / "src" / "datacontract.py").exists()
    assert "def parse_contract" not in (ROOT / "ml" / "src" / "contract.py").read_text()


def test_each_side_maps_the_neutral_error_to_its_own_with_the_same_line(tmp_path: Path) -> None:
    pipeline = _pipeline_contract_module()
    path = write(tmp_path, "target: y\ntask: regression\nprimary_metric: f1_macro\nfeatures: {a: float}\n")
    with pytest.raises(ConfigError) as ours:
        load_contract(path)
    with pytest.raises(pipeline.InputError) as theirs:
        pipeline.load_contract(path)
    assert str(ours.value) == str(theirs.value) == (
        "contract.yaml: primary_metric 'f1_macro' is not written for regression; use one of r2, rmse, mae."
    )


@pytest.mark.parametrize(
    "value",
    ["1_000", "\u0661\u0662", "\uff11\uff12", "-nan", "+nan", "NaN", " 7 ", "1e3", ".5", "5.", "+5", "0x10",
     "inf", "-Infinity", "1e400", "4.0", "2.5", "--1", "1e", "", "None"],
)
@pytest.mark.parametrize("column", ["n", "k"])
def test_ingest_accepts_a_number_exactly_when_prep_does(tmp_path: Path, value: str, column: str) -> None:
    """A value ingest lets through must not fail prep: the file would cost a job, then be quarantined
    at its end. Python's float() takes '1_000', digits of other scripts and '-nan'; pandas does not."""
    prep = load_ml_module(ROOT / "ml" / "src" / "prep.py", "prep_one_check")
    rows = [["1.5", "1", "a", "yes"] if i % 2 == 0 else ["2.5", "2", "b", "no"] for i in range(16)]
    rows[3][{"n": 0, "k": 1}[column]] = value
    data = ("n,k,c,y\n" + "".join(",".join(row) + "\n" for row in rows)).encode()
    (tmp_path / "a.csv").write_bytes(data)
    contract = write(tmp_path, "target: y\ntask: classification\nprimary_metric: f1_macro\n"
                               "features: {n: float, k: int, c: category}\n")
    try:
        check_head("a.csv", data, load_contract(contract), complete=True)
        ingest = None
    except ContractError as exc:
        ingest = str(exc)
    try:
        prep.main(data=tmp_path / "a.csv", contract=contract, train_data=tmp_path / "train",
                  test_data=tmp_path / "test", report=tmp_path / "report")
        step = None
    except prep.DataError as exc:
        step = str(exc)
    assert ingest == step
