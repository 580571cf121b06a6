"""The function app's settings as Bicep deploys them, and local.settings.json.example, against the
names autoretrain.settings knows and what Settings.from_env accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from infra_trees import ROOT, _app_settings

from autoretrain.settings import SETTING_NAMES, Settings, WorkspaceKind

LOCAL_SETTINGS_EXAMPLE = ROOT / "local.settings.json.example"

# Names only a laptop sets: a connection string to Azurite, the local workspace folder, the local host.
LOCAL_ONLY = {"AUTORETRAIN_STORAGE", "AUTORETRAIN_HOME", "AUTORETRAIN_HOST_URL", "AUTORETRAIN_AZURITE"}
# Names the Functions platform and the Azure SDKs read; allowed in Bicep beside SETTING_NAMES.
# PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: the Python worker's switch for OpenTelemetry to Application Insights.
PLATFORM_NAME = re.compile(
    r"^(AzureWebJobsStorage__(accountName|credential|clientId)|(PYTHON_)?APPLICATIONINSIGHTS_[A-Z_]+)$"
)


class TestAppSettings:
    def test_bicep_sets_only_known_names(self, trees: dict[str, Any]) -> None:
        """Every setting in Bicep is one of SETTING_NAMES or a platform name (host storage, App Insights)."""
        unknown = [n for n in _app_settings(trees) if n not in SETTING_NAMES and not PLATFORM_NAME.match(n)]
        assert not unknown, f"app settings unknown to autoretrain.settings.SETTING_NAMES: {unknown}"

    def test_bicep_sets_every_name_but_the_local_ones(self, trees: dict[str, Any]) -> None:
        """Each AUTORETRAIN_* name is set in Azure, except the four that only make sense on a laptop."""
        in_bicep = set(_app_settings(trees))
        names = {n for n in SETTING_NAMES if n.startswith("AUTORETRAIN_")}
        assert names - in_bicep == LOCAL_ONLY
        assert "AZURE_CLIENT_ID" in in_bicep

    def test_bicep_sets_no_secret_and_no_local_setting(self, trees: dict[str, Any]) -> None:
        """No connection string or key in the settings: storage is reached by URI with the identity."""
        settings = _app_settings(trees)
        assert not LOCAL_ONLY & settings.keys()
        assert "AzureWebJobsStorage" not in settings
        assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
        for name, value in settings.items():
            assert value is None or not re.search(r"AccountKey|SharedAccessSignature|sig=", value), name

    def test_outputs_use_known_names(self, trees: dict[str, Any]) -> None:
        """The AUTORETRAIN_* outputs the hook reads are setting names too."""
        outputs = [n for n in trees["main.bicep"]["outputs"] if n.startswith("AUTORETRAIN_")]
        assert outputs and not [n for n in outputs if n not in SETTING_NAMES]

    def test_settings_accept_the_bicep_values(
        self, trees: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Settings.from_env reads the Azure settings as Bicep writes them (placeholders for expressions)."""
        settings = _app_settings(trees)
        contract = settings["AUTORETRAIN_CONTRACT"]
        assert contract and not Path(contract).is_absolute(), "the contract path is relative to the app root"
        # The app root on Azure: the contract file at the path Bicep names.
        (tmp_path / contract).parent.mkdir(parents=True)
        (tmp_path / contract).write_text("placeholder\n")
        monkeypatch.chdir(tmp_path)
        env = {
            name: value if value is not None else f"deploy-time-{i}"
            for i, (name, value) in enumerate(settings.items())
        }
        parsed = Settings.from_env(env)
        assert parsed.workspace is WorkspaceKind.AZUREML
        assert parsed.storage_connection is None
        assert parsed.blob_service_uri and parsed.table_service_uri
        assert (parsed.incoming_container, parsed.quarantine_container, parsed.datasets_container) == (
            "incoming",
            "quarantine",
            "datasets",
        )
        assert parsed.ledger_table == "autoretrainledger"
        assert parsed.pipeline_component == "autoretrain_pipeline"

    def test_local_example_uses_known_names(self) -> None:
        """local.settings.json.example names only SETTING_NAMES (plus the host's own settings)."""
        document = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text())
        assert document["IsEncrypted"] is False
        values = document["Values"]
        assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
        host_names = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage", "AzureWebJobsFeatureFlags"}
        unknown = [n for n in values if n not in SETTING_NAMES and n not in host_names]
        assert not unknown, f"names unknown to autoretrain.settings.SETTING_NAMES: {unknown}"
        assert values.keys() >= LOCAL_ONLY

    def test_settings_accept_the_local_example(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Settings.from_env reads the example file as it is (the local workspace, Azurite)."""
        values = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text())["Values"]
        (tmp_path / values["AUTORETRAIN_CONTRACT"]).parent.mkdir(parents=True)
        (tmp_path / values["AUTORETRAIN_CONTRACT"]).write_text("placeholder\n")
        monkeypatch.chdir(tmp_path)
        parsed = Settings.from_env(values)
        assert parsed.workspace is WorkspaceKind.LOCAL
        assert parsed.storage_connection == "UseDevelopmentStorage=true"
