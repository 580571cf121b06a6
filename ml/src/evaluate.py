"""Evaluate step: score the trained model, and the current champion, on prep's test split.

Both models are scored on the same rows, so the champion gate compares like with like (a model is
never judged on an easier test split than its rival's). metrics.json is the portable record (Azure
ML SDK v2 has no metrics API; the local workspace reads files): it names the primary metric and
whether greater is better, so the gate compares models without knowing the task. Where
MLFLOW_TRACKING_URI is set (Azure ML sets it for every job, the local workspace for every step) the
metrics, and the champion's as champion_<name>, are logged to the step's MLflow run as well.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contract import DATA_FILE, MODES, Contract, InputError, load_contract, log_to_mlflow, read_split, run_step
from datacontract import is_no_champion

__all__ = ["build_parser", "main", "parse_args", "score"]

METRICS_FILE = "metrics.json"
_ALLOW_LOAD = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
_log = logging.getLogger("evaluate")


def build_parser() -> argparse.ArgumentParser:
    """The flags are the component's input and output names (components/evaluate.yml)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="folder of the MLflow model")
    parser.add_argument("--test_data", type=Path, required=True, help=f"folder prep wrote {DATA_FILE} to")
    parser.add_argument("--contract", type=Path, required=True, help="the contract YAML file")
    parser.add_argument("--champion", type=Path, required=True,
                        help="folder of the champion's MLflow model, or the no-champion marker folder")
    parser.add_argument("--metrics", type=Path, required=True, help=f"folder for {METRICS_FILE}")
    parser.add_argument("--mode", choices=MODES, default="train",
                        help="train: score the model and the champion; score: the champion alone, as the model")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (or `argv`)."""
    return build_parser().parse_args(argv)


@contextmanager
def _model_loading_allowed() -> Iterator[None]:
    """MLflow loads no model unless told to; this one was written by the train step of the same
    pipeline run, so it is trusted. The setting is restored so nothing else inherits it."""
    before = os.environ.get(_ALLOW_LOAD)
    os.environ[_ALLOW_LOAD] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[_ALLOW_LOAD]
        else:
            os.environ[_ALLOW_LOAD] = before


def _load_model(folder: Path) -> Any:
    """The fitted scikit-learn model in an MLflow model folder.

    A skops-format model (what train writes) is read with skops directly, with the trusted types
    its MLmodel file records, exactly as mlflow.sklearn.load_model does: importing MLflow costs
    about a second per run. Any other format goes through MLflow.
    """
    import yaml

    try:
        flavor = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))["flavors"]["sklearn"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise InputError(
            f"{folder}: not an MLflow scikit-learn model; pass the folder that the train step wrote."
        ) from None
    if flavor.get("serialization_format") == "skops":
        import skops.io

        return skops.io.load(folder / flavor["pickled_model"], trusted=flavor.get("skops_trusted_types"))
    import mlflow.sklearn

    with _model_loading_allowed():
        return mlflow.sklearn.load_model(str(folder))


def score(task: str, truth: Sequence[Any], predicted: Sequence[Any]) -> dict[str, float]:
    """Every metric of METRICS[task] for these predictions (a test holds the two in step)."""
    import numpy as np
    import pandas as pd
    from sklearn import metrics as m

    if task == "classification":
        # The classes as integer codes, from one hash pass over both: given string labels, each metric
        # converts and sorts them again (1.4 s of evaluate's 1.6 s on 250k test rows). The codes name
        # the same classes, the union of both, so every metric and its macro average is the same.
        both, _ = pd.factorize(np.concatenate([np.asarray(truth, dtype=object), np.asarray(predicted, dtype=object)]))
        truth, predicted = both[: len(truth)], both[len(truth):]
        values = {
            "accuracy": m.accuracy_score(truth, predicted),
            "f1_macro": m.f1_score(truth, predicted, average="macro", zero_division=0),
            "precision_macro": m.precision_score(truth, predicted, average="macro", zero_division=0),
            "recall_macro": m.recall_score(truth, predicted, average="macro", zero_division=0),
        }
    else:
        values = {
            "r2": m.r2_score(truth, predicted),
            "rmse": m.root_mean_squared_error(truth, predicted),
            "mae": m.mean_absolute_error(truth, predicted),
        }
    return {name: float(value) for name, value in values.items()}


def main(
    model: Path, test_data: Path, contract: Path, metrics: Path, champion: Path | None = None, mode: str = "train"
) -> dict[str, Any]:
    """Score `model` (and `champion`) on `test_data`; write metrics/metrics.json and return it. In mode
    `score` the champion is scored alone, in the model's place: its metrics are the job's."""
    spec: Contract = load_contract(contract)
    if mode == "score":
        if champion is None or is_no_champion(champion):
            raise InputError(f"{champion}: mode score scores the champion, and none was given; "
                             "bind the champion model.")
        model, champion = champion, None
    features, truth = read_split(test_data, spec)
    if truth.empty:
        raise InputError(f"{test_data}: the test split has no rows; rerun prep with more data.")
    fitted = _load_model(model)
    values = score(spec.task, truth.to_numpy(), fitted.predict(features))
    champion_values: dict[str, float] | None = None
    champion_error: str | None = None
    if champion is not None and is_no_champion(champion):
        champion = None  # the first model: the submitter bound the "no champion yet" marker
    if champion is not None:
        try:
            champion_values = score(spec.task, truth.to_numpy(), _load_model(champion).predict(features))
        except Exception as exc:  # a champion of another contract: the gate is told, not this step failed
            champion_error = " ".join(str(exc).split())[:300] or type(exc).__name__
            _log.warning("champion_not_scored error=%s", champion_error)
    result = {
        "primary_metric": spec.primary_metric,
        "greater_is_better": spec.greater_is_better,
        "metrics": values,
        "champion_metrics": champion_values,
        "champion_error": champion_error,
        "test_rows": len(truth),
    }
    metrics.mkdir(parents=True, exist_ok=True)
    (metrics / METRICS_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name, value in values.items():
        _log.info("metric %s=%.6g champion=%s", name, value, champion_values.get(name) if champion_values else None)
    # Where tracking is set (Azure ML, the local workspace): this run's numbers and the champion's.
    log_to_mlflow(
        {"test_rows": len(truth), "primary_metric": spec.primary_metric, "greater_is_better": spec.greater_is_better,
         "champion_scored": champion_values is not None},
        {**values, **{f"champion_{name}": value for name, value in (champion_values or {}).items()}},
    )
    return result


if __name__ == "__main__":
    raise SystemExit(run_step(main, parse_args))
