"""The data contract's rules: one module, read by the function app and by every pipeline step.

The function app imports it as `autoretrain.datacontract`; each component lists it under
`additional_includes`, so Azure ML (and the local workspace, which honours the same field) copies
it into the step's code snapshot, where the scripts import it as `datacontract`. So it imports only
the standard library and PyYAML, and raises one neutral error, `ContractRuleError`, which each
side maps to its own (`ConfigError` in the app, `InputError` in a step).

    target: cultivar
    task: classification            # classification | regression
    primary_metric: f1_macro        # one of METRICS[task]
    features: {alcohol: float, magnesium: int, region: category}
    max_bytes: 536870912            # optional: larger files are quarantined unread
    model:                          # optional: an estimator from ESTIMATORS, and its parameters
      estimator: HistGradientBoostingClassifier
      params: {max_iter: 200}
    promote: {min_delta: 0.01, min_value: 0.8}   # optional: the champion gate's rule
    training: {window: all}         # all (default) | {window: last, versions: N} | {window: days, days: D}
                                    # jobs_in_flight: 1 (default; 0: no limit), quiet_seconds: 0,
                                    # retrain_when: always (default) | champion_slips, slip: 0.02

It also holds the one check of a data file's CSV against the contract: ingest's head check
(`autoretrain.contract.check_head`, the csv module on a file's first bytes) and prep's check of the
whole training set (pandas) apply the same rules and build every message here, so a fault reads
the same wherever it is found.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "DATA_ERROR_EXIT",
    "DEFAULT_MAX_BYTES",
    "ESTIMATORS",
    "FEATURE_TYPES",
    "METRICS",
    "MIN_ROWS",
    "MISSING",
    "NO_CHAMPION_FILES",
    "REPORT_FILE",
    "RETRAIN_WHEN",
    "TASKS",
    "TOP_KEYS",
    "WINDOWS",
    "Contract",
    "ContractRuleError",
    "ModelSpec",
    "PromoteRule",
    "TrainingRule",
    "bad_value_message",
    "cell_problem",
    "expected_value",
    "header_not_csv_message",
    "header_problem",
    "is_missing",
    "is_no_champion",
    "mltable_files",
    "mltable_text",
    "no_data_rows_message",
    "no_header_message",
    "no_target_values_message",
    "not_csv_message",
    "not_utf8_message",
    "parse_contract",
    "ragged_row_message",
    "read_contract",
    "rejection",
    "single_class_message",
    "target_problem",
    "too_few_rows_message",
]

FEATURE_TYPES = ("float", "int", "category")
TASKS = ("classification", "regression")
# Metric name -> greater_is_better, per task: what evaluate writes, and what the gate compares.
METRICS: Mapping[str, Mapping[str, bool]] = MappingProxyType(
    {
        "classification": MappingProxyType(
            {"accuracy": True, "f1_macro": True, "precision_macro": True, "recall_macro": True}
        ),
        "regression": MappingProxyType({"r2": True, "rmse": False, "mae": False}),
    }
)
# Cell values read as "no value", compared lower-cased after stripping.
MISSING = frozenset({"", "na", "nan", "null", "none"})
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
# Rows with a target a file needs to train and test on (ingest checks it when the head is the whole file).
MIN_ROWS = 10
# A step's exit code when the data file breaks the contract (sysexits' EX_DATAERR): the file's
# fault, so the loop quarantines the blob version instead of calling the job failed.
DATA_ERROR_EXIT = 65
# prep's report output (a uri_folder) holds this file. When a new file breaks the contract, prep writes
# it with `rejected` (reason, line, byte) before it exits: the loop reads that, never the service's words.
REPORT_FILE = "report.json"
# The "no champion yet" marker: a model folder bound to evaluate's `champion` input for the first
# job, so every input of the published pipeline is always bound (the service has not been seen to
# accept an unbound optional input of a pipeline component job). Its MLmodel names no flavor.
NO_CHAMPION_MARKER = "autoretrain-no-champion"
NO_CHAMPION_FILES: Mapping[str, str] = MappingProxyType({
    "MLmodel": f"# Not a model: no champion exists yet.\nflavors: {{}}\nmetadata:\n  {NO_CHAMPION_MARKER}: true\n",
    "README.md": "Bound to the pipeline's `champion` input while no model is champion; evaluate scores no champion.\n",
})
WINDOWS = ("all", "last", "days")
RETRAIN_WHEN = ("always", "champion_slips")
TOP_KEYS = ("target", "task", "primary_metric", "features", "max_bytes", "model", "promote", "training")

_INT, _FLOAT, _STR, _BOOL = (int,), (int, float), (str,), (bool,)
# The estimators a contract may name, per task, with the parameters it may set and their types.
# A data file never names code to import: train maps these names to scikit-learn classes itself.
ESTIMATORS: Mapping[str, tuple[str, Mapping[str, tuple[type, ...]]]] = MappingProxyType({
    "LogisticRegression": ("classification", {"C": _FLOAT, "max_iter": _INT, "class_weight": _STR}),
    "RandomForestClassifier": ("classification", {
        "n_estimators": _INT, "max_depth": _INT, "min_samples_leaf": _INT, "class_weight": _STR, "n_jobs": _INT,
    }),
    "ExtraTreesClassifier": ("classification", {
        "n_estimators": _INT, "max_depth": _INT, "min_samples_leaf": _INT, "n_jobs": _INT,
    }),
    "HistGradientBoostingClassifier": ("classification", {
        "max_iter": _INT, "learning_rate": _FLOAT, "max_depth": _INT, "max_leaf_nodes": _INT,
        "l2_regularization": _FLOAT, "early_stopping": _BOOL,
    }),
    "Ridge": ("regression", {"alpha": _FLOAT}),
    "Lasso": ("regression", {"alpha": _FLOAT, "max_iter": _INT}),
    "ElasticNet": ("regression", {"alpha": _FLOAT, "l1_ratio": _FLOAT, "max_iter": _INT}),
    "RandomForestRegressor": ("regression", {
        "n_estimators": _INT, "max_depth": _INT, "min_samples_leaf": _INT, "n_jobs": _INT,
    }),
    "HistGradientBoostingRegressor": ("regression", {
        "max_iter": _INT, "learning_rate": _FLOAT, "max_depth": _INT, "max_leaf_nodes": _INT,
        "l2_regularization": _FLOAT, "early_stopping": _BOOL,
    }),
})
# What a contract without `model:` gets: the linear models this project started with.
DEFAULT_ESTIMATORS: Mapping[str, tuple[str, Mapping[str, Any]]] = MappingProxyType({
    "classification": ("LogisticRegression", MappingProxyType({"max_iter": 1000})),
    "regression": ("Ridge", MappingProxyType({"alpha": 1.0})),
})


class ContractRuleError(ValueError):
    """A contract breaks a rule; the message is one line naming the file, the key and the fix."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    estimator: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PromoteRule:
    """A challenger replaces the champion when it is better by more than `min_delta` on the same test
    rows (a tie keeps the champion), and, when `min_value` is set, reaches it."""

    min_delta: float = 0.0
    min_value: float | None = None


@dataclass(frozen=True, slots=True)
class TrainingRule:
    """Which accepted data versions a job trains on (all, the last `versions`, or the last `days`), and
    how many jobs may run at once: while `jobs_in_flight` jobs run (0: no limit), an accepted version
    waits, and every version waiting when a job ends is the new data of one next job. With
    `quiet_seconds`, a burst settles first: no job starts until nothing has arrived for that long.
    With `retrain_when: champion_slips` a new version is first scored by the champion: it trains only
    if the champion's primary metric there is more than `slip` worse than the value it was promoted with."""

    window: str = "all"
    versions: int | None = None
    days: float | None = None
    jobs_in_flight: int = 1
    quiet_seconds: float = 0.0
    retrain_when: str = "always"
    slip: float = 0.02


@dataclass(frozen=True, slots=True)
class Contract:
    target: str
    task: str
    primary_metric: str
    features: Mapping[str, str]
    max_bytes: int = DEFAULT_MAX_BYTES
    model: ModelSpec = ModelSpec("LogisticRegression", {"max_iter": 1000})
    promote: PromoteRule = PromoteRule()
    training: TrainingRule = TrainingRule()
    source: str = "contract.yaml"

    @property
    def columns(self) -> tuple[str, ...]:
        """Every declared column, features first, then the target."""
        return (*self.features, self.target)

    @property
    def greater_is_better(self) -> bool:
        """Whether a higher primary metric is a better model (false for error metrics)."""
        return METRICS[self.task][self.primary_metric]

    @property
    def kinds(self) -> dict[str, str]:
        """Every declared column's type, features first: the target is a category to a classifier
        and a float to a regressor."""
        return {**self.features, self.target: "category" if self.task == "classification" else "float"}

    def columns_of(self, kind: str) -> list[str]:
        """Feature names declared with type `kind`, in contract order."""
        return [name for name, declared in self.features.items() if declared == kind]


def read_contract(path: Path) -> Contract:
    """Read and check a contract file."""
    import yaml  # here: the module is imported by code that may never read a contract

    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ContractRuleError(f"{path}: cannot read the contract ({exc.strerror}).") from None
    except yaml.YAMLError as exc:
        raise ContractRuleError(f"{path.name}: not valid YAML ({str(exc).splitlines()[0]}).") from None
    return parse_contract(raw, path.name)


def _mapping(raw: Any, where: str, key: str) -> Mapping[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise ContractRuleError(f"{where}: '{key}' must be a mapping; see ml/contract.yaml for the shape.")
    return value


def _number(value: Any, where: str, name: str, *, minimum: float | None = None, whole: bool = False) -> Any:
    kinds = _INT if whole else _FLOAT
    if isinstance(value, bool) or not isinstance(value, kinds) or (minimum is not None and value < minimum):
        what = "a whole number" if whole else "a number"
        bound = f" of at least {minimum:g}" if minimum is not None else ""
        raise ContractRuleError(f"{where}: {name} is {value!r}; it must be {what}{bound}.")
    return value


def _model(raw: Mapping[str, Any], where: str, task: str) -> ModelSpec:
    if "model" not in raw:
        default_name, default_params = DEFAULT_ESTIMATORS[task]
        return ModelSpec(default_name, default_params)
    spec = _mapping(raw, where, "model")
    unknown_keys = sorted(set(spec) - {"estimator", "params"})
    if unknown_keys:
        raise ContractRuleError(
            f"{where}: model has unknown key(s) {', '.join(unknown_keys)}; use estimator and params."
        )
    name = str(spec.get("estimator"))
    allowed = [n for n, (t, _) in ESTIMATORS.items() if t == task]
    if name not in ESTIMATORS or ESTIMATORS[name][0] != task:
        raise ContractRuleError(
            f"{where}: model.estimator {name!r} is not allowed for {task}; use one of {', '.join(allowed)}."
        )
    params = _mapping(spec, where, "params")
    accepted = ESTIMATORS[name][1]
    for param, value in params.items():
        if param not in accepted:
            raise ContractRuleError(
                f"{where}: {name} has no parameter {param!r} here; use one of {', '.join(sorted(accepted))}."
            )
        kinds = accepted[param]
        if isinstance(value, bool) != (kinds == _BOOL) or not isinstance(value, kinds):
            names: dict[tuple[type, ...], str] = {
                _INT: "a whole number", _FLOAT: "a number", _STR: "a string", _BOOL: "true or false",
            }
            expected = names[kinds]
            raise ContractRuleError(f"{where}: model.params.{param} is {value!r}; it must be {expected}.")
    return ModelSpec(name, MappingProxyType(dict(params)))


def _promote(raw: Mapping[str, Any], where: str) -> PromoteRule:
    spec = _mapping(raw, where, "promote")
    unknown_keys = sorted(set(spec) - {"min_delta", "min_value"})
    if unknown_keys:
        raise ContractRuleError(
            f"{where}: promote has unknown key(s) {', '.join(unknown_keys)}; use min_delta and min_value."
        )
    delta = _number(spec.get("min_delta", 0.0), where, "promote.min_delta", minimum=0)
    value = spec.get("min_value")
    if value is not None:
        _number(value, where, "promote.min_value")
    return PromoteRule(float(delta), None if value is None else float(value))


def _training(raw: Mapping[str, Any], where: str) -> TrainingRule:
    spec = _mapping(raw, where, "training")
    window = spec.get("window", "all")
    if window not in WINDOWS:
        raise ContractRuleError(f"{where}: training.window {window!r} is not one of {', '.join(WINDOWS)}.")
    allowed = {"window", "jobs_in_flight", "quiet_seconds", "retrain_when", "slip",
               *({"last": ["versions"], "days": ["days"]}.get(window, []))}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ContractRuleError(
            f"{where}: training window {window!r} takes no {', '.join(extra)}; it takes {', '.join(sorted(allowed))}."
        )
    versions = int(_number(spec.get("versions"), where, "training.versions", minimum=1, whole=True)) \
        if window == "last" else None
    days = float(_number(spec.get("days"), where, "training.days", minimum=0)) if window == "days" else None
    if days == 0:
        raise ContractRuleError(f"{where}: training.days is 0; it must be above 0.")
    in_flight = int(_number(spec.get("jobs_in_flight", 1), where, "training.jobs_in_flight", minimum=0, whole=True))
    quiet = float(_number(spec.get("quiet_seconds", 0), where, "training.quiet_seconds", minimum=0))
    when = spec.get("retrain_when", "always")
    if when not in RETRAIN_WHEN:
        raise ContractRuleError(f"{where}: training.retrain_when {when!r} is not one of {', '.join(RETRAIN_WHEN)}.")
    slip = float(_number(spec.get("slip", 0.02), where, "training.slip", minimum=0))
    return TrainingRule(window, versions, days, in_flight, quiet, retrain_when=when, slip=slip)


def parse_contract(raw: Any, where: str) -> Contract:
    """Check a parsed contract; ContractRuleError names the file, the key and the fix."""
    target, task, metric = _target_task_metric(raw, where)
    return Contract(
        target=target,
        task=task,
        primary_metric=metric,
        features=_features(raw["features"], target, where),
        max_bytes=_max_bytes(raw, where),
        model=_model(raw, where, task),
        promote=_promote(raw, where),
        training=_training(raw, where),
        source=where,
    )


def _target_task_metric(raw: Any, where: str) -> tuple[str, str, str]:
    if not isinstance(raw, Mapping):
        raise ContractRuleError(f"{where}: expected a mapping with target, task, primary_metric and features.")
    unknown = sorted(str(k) for k in set(raw) - set(TOP_KEYS))  # a misspelt key must not fall back to a default
    if unknown:
        raise ContractRuleError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys allowed at the top "
                                f"level are {', '.join(TOP_KEYS)}.")
    for key in ("target", "task", "primary_metric", "features"):
        if key not in raw:
            raise ContractRuleError(f"{where}: '{key}' is missing; see ml/contract.yaml for the shape.")
    target, task, metric = raw["target"], raw["task"], raw["primary_metric"]
    if not isinstance(target, str) or not target:
        raise ContractRuleError(f"{where}: 'target' must be a column name.")
    if task not in TASKS:
        raise ContractRuleError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}.")
    if metric not in METRICS[task]:
        raise ContractRuleError(
            f"{where}: primary_metric {metric!r} is not written for {task}; use one of {', '.join(METRICS[task])}."
        )
    return target, task, metric


def _features(features: Any, target: str, where: str) -> Mapping[str, str]:
    if not isinstance(features, Mapping) or not features:
        raise ContractRuleError(f"{where}: 'features' must map at least one column name to a type.")
    for name, kind in features.items():
        if kind not in FEATURE_TYPES:
            raise ContractRuleError(
                f"{where}: feature {name!r} has type {kind!r}; use {', '.join(FEATURE_TYPES[:-1])} "
                f"or {FEATURE_TYPES[-1]}."
            )
    if target in features:
        raise ContractRuleError(f"{where}: the target {target!r} is also listed as a feature; remove it there.")
    return MappingProxyType({str(k): str(v) for k, v in features.items()})


def _max_bytes(raw: Mapping[str, Any], where: str) -> int:
    max_bytes = raw.get("max_bytes", DEFAULT_MAX_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ContractRuleError(f"{where}: max_bytes {max_bytes!r} must be a positive whole number of bytes.")
    return max_bytes


# ---- the CSV check: ingest's head check and prep's whole-file check ----------------------------
# Each side reads the file its own way (ingest: the csv module on the head; prep: csv or pandas on
# every row, vectorised) and asks these for the rule and the words. A `name` is what a message
# calls the file: the blob path at ingest, the file (or training set) name in prep.


def is_missing(value: str) -> bool:
    """Whether a cell holds no value (MISSING, whatever its case and surrounding spaces)."""
    return value.strip().lower() in MISSING


def expected_value(kind: str) -> str:
    """What a cell of a numeric column of type `kind` must hold, in a message's words."""
    return "a whole number" if kind == "int" else "a number"


# A number as pandas reads one (prep types whole columns with it): ASCII digits, an optional sign,
# point and exponent. Python's float() also takes '1_000', digits of other scripts (Arabic-Indic, full-width) and
# '-nan', which prep would then refuse: a job spent on a file ingest could have refused at once.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def cell_problem(kind: str, value: str) -> str | None:
    """None when `value` fits a column of type `kind` (any category, a gap, a finite number of the
    kind); else what was expected there. prep applies it to whole columns with pandas."""
    if kind == "category" or is_missing(value):
        return None
    if not _NUMBER.fullmatch(value.strip()):
        return expected_value(kind)
    number = float(value)
    fits = math.isfinite(number) and number == int(number) if kind == "int" else not math.isinf(number)
    return None if fits else expected_value(kind)


def header_problem(header: Sequence[str], contract: Contract, name: str, *, cite_line: bool = False) -> str | None:
    """What is wrong with a header (its column names), or None: a declared column is missing or
    appears twice. `cite_line` words a missing column as prep always has ("line 1 (the header)
    lacks column(s)"); ingest says "missing column(s)"."""
    missing = [c for c in contract.columns if c not in header]
    if missing:
        lacks = "line 1 (the header) lacks" if cite_line else "missing"
        return (
            f"{name}: {lacks} column(s) {', '.join(map(repr, missing))} required by {contract.source}; "
            "add them and upload the file again."
        )
    doubled = sorted({c for c in contract.columns if header.count(c) > 1})
    if doubled:
        return (
            f"{name}: column(s) {', '.join(map(repr, doubled))} appear twice in line 1; keep one and "
            "upload the file again."
        )
    return None


def target_problem(name: str, contract: Contract, targets: Collection[Any]) -> str | None:
    """What makes a file too thin to train on, or None: fewer than MIN_ROWS target values, or a
    classifier's single class. `targets`: the values present in the target column, in file order."""
    if len(targets) < MIN_ROWS:
        return too_few_rows_message(name, len(targets), contract.target)
    if contract.task == "classification":
        classes: list[Any] = []
        for value in targets:  # stops at the second class: a sorted file is not read to its end
            if value not in classes:
                classes.append(value)
                if len(classes) == 2:
                    return None
        return single_class_message(name, contract.target, classes[0])
    return None


def bad_value_message(name: str, column: str, value: str, line: int, kind: str, more: int = 0) -> str:
    """A value that does not fit its column's type; `more`: how many other bad values it has."""
    also = f" ({more} more bad value(s) in that column)" if more else ""
    return (
        f"{name}: column {column!r} has {value!r} on line {line}; expected {expected_value(kind)}{also}. "
        "Fix the file and upload it again."
    )


def ragged_row_message(name: str, line: int, fields: int, header_fields: int) -> str:
    return (f"{name}: line {line} has {fields} fields, the header has {header_fields}; "
            "fix the row and upload the file again.")


def not_utf8_message(name: str, byte: int, line: int | None = None) -> str:
    at = f"line {line}, byte {byte}" if line is not None else f"byte {byte}"
    return f"{name}: {at} is not UTF-8; save the file as UTF-8 CSV and upload it again."


def no_header_message(name: str) -> str:
    return f"{name}: no header line; the first line must name the columns."


def header_not_csv_message(name: str, error: object) -> str:
    return f"{name}: line 1 is not CSV ({error}); fix the file and upload it again."


def not_csv_message(name: str, line: int, error: object) -> str:
    return f"{name}: not valid CSV near line {line} ({error})."


def no_data_rows_message(name: str) -> str:
    return f"{name}: the header has no data rows under it; upload a file with data."


def no_target_values_message(name: str, target: str) -> str:
    return f"{name}: the target column {target!r} has no values; fill it in and upload the file again."


def too_few_rows_message(name: str, rows: int, target: str) -> str:
    return (f"{name}: {rows} row(s) have a {target!r} value; at least {MIN_ROWS} are needed to train and test. "
            "Upload a file with more rows.")


def single_class_message(name: str, target: str, value: object) -> str:
    return (f"{name}: {target!r} has the single value {value!r}; a classifier needs at least two classes. "
            "Upload a file with more than one class.")


# ---- the training set: which files a job trains on -------------------------------------------


def mltable_text(files: Iterable[str]) -> str:
    """An MLTable (Azure ML's own format for a set of files) naming exactly these CSV files."""
    lines = ["# The exact, immutable data versions one job trains on.", "type: mltable", "paths:"]
    lines += [f"  - file: {json.dumps(f)}" for f in files]
    lines += ["transformations:", "  - read_delimited:", '      delimiter: ","',
              "      header: all_files_same_headers", "      encoding: utf8"]
    return "\n".join(lines) + "\n"


def mltable_files(folder: Path) -> list[str]:
    """The files an MLTable folder names, in order: local paths resolved against the folder, URIs
    (azureml://, https://) as they are."""
    import yaml

    try:
        raw: Any = yaml.safe_load((folder / "MLTable").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ContractRuleError(f"{folder}: no readable MLTable file ({exc}); pass a training set.") from None
    paths = raw.get("paths") if isinstance(raw, Mapping) else None
    if not isinstance(paths, list) or not all(isinstance(p, Mapping) and "file" in p for p in paths):
        raise ContractRuleError(f"{folder}/MLTable: 'paths' must list '- file: ...' entries.")
    files = []
    for entry in paths:
        name = str(entry["file"])
        files.append(name if "://" in name else str((folder / name).resolve()))
    return files


# ---- between the steps and the loop ------------------------------------------------------------


def is_no_champion(folder: Path) -> bool:
    """Whether a `champion` input is the "no champion yet" marker folder (NO_CHAMPION_FILES)."""
    import yaml

    try:
        raw: Any = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    metadata = raw.get("metadata") if isinstance(raw, Mapping) else None
    return isinstance(metadata, Mapping) and metadata.get(NO_CHAMPION_MARKER) is True


def rejection(report: Any) -> str | None:
    """prep's one-line reason from its report (the parsed REPORT_FILE) when the new data file broke
    the contract; None for any other report (a good file, or a failure that is ours)."""
    rejected = report.get("rejected") if isinstance(report, Mapping) else None
    reason = rejected.get("reason") if isinstance(rejected, Mapping) else None
    return " ".join(reason.split()) if isinstance(reason, str) and reason.strip() else None
