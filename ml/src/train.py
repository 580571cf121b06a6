"""Train step: fit a scikit-learn pipeline on prep's training split; save it in MLflow format.

The whole pipeline (imputation, scaling, one-hot encoding, estimator) is one saved model, so Azure
ML can deploy it without a scoring script and a served row goes through the same preprocessing.
The estimator is the contract's `model:` (from the allow-list in datacontract.ESTIMATORS, never a
name to import); by default a linear one (logistic regression / ridge), which is decent on small
tabular data with no tuning and fits, saves and loads in milliseconds.

MLflow 3 saves scikit-learn models with skops, which loads only types it is told to trust; the
types this model needs are recorded in its MLmodel file (`skops_trusted_types`). MLflow also
refuses to load any model unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true is set by the loader.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from contract import (
    DATA_FILE,
    ESTIMATORS,
    MODES,
    Contract,
    InputError,
    load_contract,
    log_to_mlflow,
    read_split,
    run_step,
)
from datacontract import NO_CHAMPION_FILES

__all__ = ["build_model", "build_parser", "main", "parse_args"]

_log = logging.getLogger("train")


def build_parser() -> argparse.ArgumentParser:
    """The flags are the component's input and output names (components/train.yml)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_data", type=Path, required=True, help=f"folder prep wrote {DATA_FILE} to")
    parser.add_argument("--contract", type=Path, required=True, help="the contract YAML file")
    parser.add_argument("--seed", type=int, default=42, help="seed of the estimator")
    parser.add_argument("--model", type=Path, required=True, help="folder for the MLflow model")
    parser.add_argument("--mode", choices=MODES, default="train",
                        help="train: fit and save the model; score: fit nothing (the job scores the champion)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (or `argv`)."""
    return build_parser().parse_args(argv)


def build_model(contract: Contract, seed: int):  # type: ignore[no-untyped-def]
    """An unfitted scikit-learn Pipeline for the contract's columns and task."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numbers = contract.columns_of("float") + contract.columns_of("int")
    categories = contract.columns_of("category")
    parts = []
    if numbers:
        parts.append(
            ("numbers", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
             numbers)
        )
    if categories:
        parts.append(
            ("categories",
             Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                       ("encode", OneHotEncoder(handle_unknown="ignore"))]),
             categories)
        )
    return Pipeline([("prepare", ColumnTransformer(parts)), ("estimate", build_estimator(contract, seed))])


def build_estimator(contract: Contract, seed: int):  # type: ignore[no-untyped-def]
    """The contract's estimator with its parameters. The name was checked against the allow-list
    (datacontract.ESTIMATORS) when the contract was read; here each name maps to its class."""
    from sklearn import ensemble, linear_model

    classes = {
        "LogisticRegression": linear_model.LogisticRegression,
        "Ridge": linear_model.Ridge,
        "Lasso": linear_model.Lasso,
        "ElasticNet": linear_model.ElasticNet,
        "RandomForestClassifier": ensemble.RandomForestClassifier,
        "RandomForestRegressor": ensemble.RandomForestRegressor,
        "ExtraTreesClassifier": ensemble.ExtraTreesClassifier,
        "HistGradientBoostingClassifier": ensemble.HistGradientBoostingClassifier,
        "HistGradientBoostingRegressor": ensemble.HistGradientBoostingRegressor,
    }
    if set(classes) != set(ESTIMATORS):
        raise InputError(f"train knows {sorted(classes)}, the contract allows {sorted(ESTIMATORS)}; fix train.py.")
    estimator = classes[contract.model.estimator](**dict(contract.model.params))
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=seed)
    return estimator


def _requirements() -> list[str]:
    """Pinned packages the served model needs; given explicitly so MLflow skips inferring them
    (inference loads the model in a subprocess and takes seconds)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow-skinny", "scikit-learn", "pandas", "skops")]


def _empty(folder: Path) -> None:
    """Make `folder` an empty folder: save_model refuses a non-empty one, and on Azure ML the
    output folder is a mount point that must be emptied, not removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def main(train_data: Path, contract: Path, model: Path, seed: int = 42, mode: str = "train") -> Path:
    """Fit the pipeline on `train_data` and save it as an MLflow model in the `model` folder. In mode
    `score` nothing is fitted: the folder gets the "no model" marker (an MLmodel with no flavor)."""
    spec = load_contract(contract)
    if mode == "score":
        _empty(model)
        for name, text in NO_CHAMPION_FILES.items():
            (model / name).write_text(text, encoding="utf-8")
        _log.info("mode=score: nothing fitted; the job scores the champion")
        return model
    features, target = read_split(train_data, spec)
    started = time.perf_counter()
    fitted = build_model(spec, seed).fit(features, target)
    fit_seconds = time.perf_counter() - started
    _log.info("fitted rows=%d seconds=%.2f", len(features), fit_seconds)

    import mlflow.sklearn  # deferred: about a second, and argument errors should not pay it
    import skops.io
    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, Schema

    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(fitted))
    example = features.head(5)
    inferred = infer_signature(example, fitted.predict(example))
    # Every feature may be missing in a served row: the pipeline imputes it, as in training.
    inferred.inputs = Schema([ColSpec(c.type, c.name, required=False) for c in inferred.inputs.inputs])
    _empty(model)
    mlflow.sklearn.save_model(
        fitted,
        str(model),
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=trusted,
        signature=inferred,
        input_example=example,
        pip_requirements=_requirements(),
    )
    _log.info("model_saved path=%s", model)
    # Where tracking is set (Azure ML, the local workspace): what was fitted, on how many rows.
    log_to_mlflow(
        {"estimator": spec.model.estimator, "seed": seed, "task": spec.task,
         **{f"model.{name}": value for name, value in spec.model.params.items()}},
        {"train_rows": float(len(features)), "fit_seconds": round(fit_seconds, 3)},
    )
    return model


if __name__ == "__main__":
    raise SystemExit(run_step(main, parse_args))
