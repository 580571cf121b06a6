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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
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
    "TASKS",
    "WINDOWS",
    "Contract",
    "ContractRuleError",
    "ModelSpec",
    "PromoteRule",
    "TrainingWindow",
    "is_no_champion",
    "mltable_files",
    "mltable_text",
    "parse_contract",
    "read_contract",
    "rejection",
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
# prep's report output (a uri_folder) holds this file. When the new file breaks the contract, prep
# writes it with a `rejected` entry (reason, file, line, byte) before it exits: the loop reads that,
# never the wording of the service's error message.
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
class TrainingWindow:
    """Which accepted data versions a job trains on: all, the last `versions`, or the last `days`."""

    window: str = "all"
    versions: int | None = None
    days: float | None = None


@dataclass(frozen=True, slots=True)
class Contract:
    target: str
    task: str
    primary_metric: str
    features: Mapping[str, str]
    max_bytes: int = DEFAULT_MAX_BYTES
    model: ModelSpec = ModelSpec("LogisticRegression", {"max_iter": 1000})
    promote: PromoteRule = PromoteRule()
    training: TrainingWindow = TrainingWindow()
    source: str = "contract.yaml"

    @property
    def columns(self) -> tuple[str, ...]:
        """Every declared column, features first, then the target."""
        return (*self.features, self.target)

    @property
    def greater_is_better(self) -> bool:
        """Whether a higher primary metric is a better model (false for error metrics)."""
        return METRICS[self.task][self.primary_metric]

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


def _training(raw: Mapping[str, Any], where: str) -> TrainingWindow:
    spec = _mapping(raw, where, "training")
    window = spec.get("window", "all")
    if window not in WINDOWS:
        raise ContractRuleError(f"{where}: training.window {window!r} is not one of {', '.join(WINDOWS)}.")
    allowed = {"all": {"window"}, "last": {"window", "versions"}, "days": {"window", "days"}}[window]
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ContractRuleError(f"{where}: training window {window!r} takes no {', '.join(extra)}.")
    if window == "last":
        versions = _number(spec.get("versions"), where, "training.versions", minimum=1, whole=True)
        return TrainingWindow("last", versions=int(versions))
    if window == "days":
        days = _number(spec.get("days"), where, "training.days", minimum=0)
        if days == 0:
            raise ContractRuleError(f"{where}: training.days is 0; it must be above 0.")
        return TrainingWindow("days", days=float(days))
    return TrainingWindow()


def parse_contract(raw: Any, where: str) -> Contract:
    """Check a parsed contract; ContractRuleError names the file, the key and the fix."""
    if not isinstance(raw, Mapping):
        raise ContractRuleError(f"{where}: expected a mapping with target, task, primary_metric and features.")
    for key in ("target", "task", "primary_metric", "features"):
        if key not in raw:
            raise ContractRuleError(f"{where}: '{key}' is missing; see ml/contract.yaml for the shape.")
    target, task, metric, features = raw["target"], raw["task"], raw["primary_metric"], raw["features"]
    if not isinstance(target, str) or not target:
        raise ContractRuleError(f"{where}: 'target' must be a column name.")
    if task not in TASKS:
        raise ContractRuleError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}.")
    if metric not in METRICS[task]:
        raise ContractRuleError(
            f"{where}: primary_metric {metric!r} is not written for {task}; use one of {', '.join(METRICS[task])}."
        )
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
    max_bytes = raw.get("max_bytes", DEFAULT_MAX_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ContractRuleError(f"{where}: max_bytes {max_bytes!r} must be a positive whole number of bytes.")
    return Contract(
        target=target,
        task=task,
        primary_metric=metric,
        features=MappingProxyType({str(k): str(v) for k, v in features.items()}),
        max_bytes=max_bytes,
        model=_model(raw, where, task),
        promote=_promote(raw, where),
        training=_training(raw, where),
        source=where,
    )


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
