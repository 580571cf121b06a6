"""The local MLflow tracking's plain parts: the UI's server command, the one-line hint when the full
mlflow package is missing, and step scripts that leave the tracking server to whoever runs them."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

from autoretrain import cli
from autoretrain.adapters.localworkspace import tracking
from autoretrain.local import mlflow_ui

ROOT = Path(__file__).resolve().parents[2]


def test_the_ui_runs_mlflow_server_on_the_local_store(tmp_path: Path) -> None:
    command = mlflow_ui.ui_command(tmp_path, host="127.0.0.1", port=5123, python="/venv/python")
    db = f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert command[:4] == ["/venv/python", "-m", "mlflow", "server"]
    options: dict[str, str] = {}
    for word, following in zip(command[4:], [*command[5:], "--"], strict=True):
        if word.startswith("--"):
            options[word] = "" if following.startswith("--") else following
    assert options["--backend-store-uri"] == options["--registry-store-uri"] == db == tracking.tracking_uri(tmp_path)
    assert options["--default-artifact-root"] == (tmp_path.resolve() / "mlflow" / "artifacts").as_uri()
    assert (options["--host"], options["--port"], options["--workers"]) == ("127.0.0.1", "5123", "1")
    assert options["--no-serve-artifacts"] == ""


def test_the_ui_listens_on_a_free_port_unless_given_one(tmp_path: Path) -> None:
    chosen = mlflow_ui.MlflowUI(tmp_path)
    assert chosen.port > 0 and chosen.url == f"http://127.0.0.1:{chosen.port}"
    assert mlflow_ui.MlflowUI(tmp_path, port=5999).command[-3] == "5999"


def test_without_the_full_mlflow_the_ui_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    real = importlib.metadata.distribution

    def distribution(name: str) -> importlib.metadata.Distribution:
        if name == "mlflow":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setenv("AUTORETRAIN_HOME", str(tmp_path))
    assert cli.main(["ui"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "mlflow" in err and "pip install -e '.[dev]'" in err


def test_the_full_mlflow_is_a_local_extra_not_a_function_app_requirement() -> None:
    requirements = (ROOT / "requirements.txt").read_text()
    assert not re.search(r"^mlflow\b(?!-skinny)", requirements, re.MULTILINE)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^local = \["mlflow>=3,<4"\]', pyproject, re.MULTILINE)
    assert '"autoretrain[local]"' in pyproject


def test_step_scripts_never_choose_the_tracking_server() -> None:
    """Azure ML (and the local workspace) set MLFLOW_TRACKING_URI: a script that set its own would
    send Studio's metrics elsewhere."""
    for script in (ROOT / "ml" / "src").glob("*.py"):
        text = script.read_text()
        assert "set_tracking_uri" not in text and "MLFLOW_TRACKING_URI\"] =" not in text, script.name


def test_a_step_run_points_the_step_at_its_run() -> None:
    run = tracking.StepRun(run_id="r1", parent_run_id="p1", experiment_id="3", uri="sqlite:////h/mlflow/mlflow.db")
    assert run.env() == {"MLFLOW_TRACKING_URI": "sqlite:////h/mlflow/mlflow.db", "MLFLOW_RUN_ID": "r1",
                         "MLFLOW_EXPERIMENT_ID": "3", "MLFLOW_PARENT_RUN_ID": "p1"}
    assert set(run.env()) <= set(tracking.STEP_ENV)


def test_without_the_full_mlflow_jobs_run_untracked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracker process: every call answers at once with nothing, and the reason is kept."""
    monkeypatch.setattr(tracking, "mlflow_missing", lambda: "the full 'mlflow' package is not installed")
    local = tracking.LocalTracking(tmp_path, experiment="autoretrain", model_name="autoretrain-model")
    assert local.start_job("job", {"work_key": "k"}).result(5) is None
    assert local.step_run(local.start_step("job", "prep"), timeout=5) is None
    assert local.ready(5) is False and local.flush(5)
    assert local.disabled == "the full 'mlflow' package is not installed"
    local.close()
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()
