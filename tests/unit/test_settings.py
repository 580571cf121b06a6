"""Settings read once from the environment, with one-line errors naming the variable."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from autoretrain import bootstrap as boot
from autoretrain.domain.errors import ConfigError
from autoretrain.settings import LOCAL_STORAGE_TOPIC, SETTING_NAMES, Settings, WorkspaceKind


def test_defaults_are_the_offline_local_mode() -> None:
    """With nothing set, everything points at the local workspace and Azurite."""
    settings = Settings.from_env({})
    assert settings.workspace is WorkspaceKind.LOCAL
    assert settings.storage_connection == "UseDevelopmentStorage=true"
    assert settings.storage_topic == LOCAL_STORAGE_TOPIC
    assert settings.contract.name == "contract.yaml" and settings.contract.is_file()


def test_azureml_needs_its_workspace_and_storage_by_identity() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"AUTORETRAIN_WORKSPACE": "azureml"})
    assert "Storage is not configured" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({
            "AUTORETRAIN_WORKSPACE": "azureml",
            "AUTORETRAIN_STORAGE__blobServiceUri": "https://acct.blob.core.windows.net",
            "AUTORETRAIN_STORAGE__tableServiceUri": "https://acct.table.core.windows.net",
            "AUTORETRAIN_AZUREML_WORKSPACE": "ws",
        })
    message = str(info.value)
    assert "AUTORETRAIN_AZUREML_SUBSCRIPTION_ID" in message and "AUTORETRAIN_STORAGE_RESOURCE_ID" in message
    assert "AUTORETRAIN_AZUREML_WORKSPACE," not in message


def test_worker_processes_are_the_functions_app_setting() -> None:
    assert Settings.from_env({}).worker_processes == 1
    assert Settings.from_env({"FUNCTIONS_WORKER_PROCESS_COUNT": "3"}).worker_processes == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AUTORETRAIN_WORKSPACE": "cloud"}, "AUTORETRAIN_WORKSPACE='cloud' is not a workspace kind"),
        (
            {"AUTORETRAIN_INCOMING_CONTAINER": "In_Coming"},
            "AUTORETRAIN_INCOMING_CONTAINER='In_Coming' is not a valid container",
        ),
        ({"AUTORETRAIN_LEDGER_TABLE": "led-ger"}, "AUTORETRAIN_LEDGER_TABLE='led-ger' is not a valid table"),
        ({"AUTORETRAIN_CONTRACT": "/nowhere.yaml"}, "AUTORETRAIN_CONTRACT='/nowhere.yaml' is not a file"),
        ({"FUNCTIONS_WORKER_PROCESS_COUNT": "0"}, "FUNCTIONS_WORKER_PROCESS_COUNT='0' must be a whole number from 1"),
        ({"FUNCTIONS_WORKER_PROCESS_COUNT": "11"}, "FUNCTIONS_WORKER_PROCESS_COUNT='11' must be a whole number"),
        ({"FUNCTIONS_WORKER_PROCESS_COUNT": "two"}, "FUNCTIONS_WORKER_PROCESS_COUNT='two' must be a whole number"),
    ],
)
def test_bad_value_is_named_in_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_values_are_read_and_trimmed(tmp_path: Path) -> None:
    contract = tmp_path / "c.yaml"
    contract.write_text("x")
    settings = Settings.from_env({
        "AUTORETRAIN_HOME": str(tmp_path), "AUTORETRAIN_CONTRACT": str(contract),
        "AUTORETRAIN_HOST_URL": " http://127.0.0.1:7099/ ", "AUTORETRAIN_INCOMING_CONTAINER": "drops",
    })
    assert (settings.home, settings.contract, settings.host_url, settings.incoming_container) == (
        tmp_path, contract, "http://127.0.0.1:7099", "drops"
    )


def test_relative_contract_path_means_the_app_root_when_not_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Functions worker may start elsewhere; ml/contract.yaml still finds the app's contract."""
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"AUTORETRAIN_CONTRACT": "ml/contract.yaml"})
    assert settings.contract == Path(__file__).resolve().parents[2] / "ml" / "contract.yaml"


AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.mark.parametrize(
    ("connection", "reads_proxy_settings"),
    [
        ("UseDevelopmentStorage=true", False),
        (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
         "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;",
         False),
        ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
         "BlobEndpoint=http://localhost:10000/devstoreaccount1;TableEndpoint=http://localhost:10002/devstoreaccount1",
         False),
        # A real account (or an emulator elsewhere) may sit behind the environment's proxy.
        ("DefaultEndpointsProtocol=https;AccountName=custacct;AccountKey=a2V5;EndpointSuffix=core.windows.net", True),
        ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
         "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;TableEndpoint=http://azurite.internal:10002/x", True),
    ],
)
def test_only_a_storage_emulator_on_this_machine_skips_the_proxy_settings(
    connection: str, reads_proxy_settings: bool
) -> None:
    """The SDK clients' HTTP session (requests) reads HTTP(S)_PROXY on every call unless told not
    to: for Azurite on loopback no proxy applies, so the clients are built without it."""
    settings = Settings(storage_connection=connection)
    for client in (boot.blob_service(settings), boot.table_service(settings)):
        transport = client._client._client._pipeline._transport
        while hasattr(transport, "_transport"):
            transport = transport._transport
        with transport:  # opens the requests session (no request is sent)
            assert transport.session.trust_env is reads_proxy_settings


def test_every_field_is_read_from_its_variable(tmp_path: Path) -> None:
    """Each setting name fills one field: set them all, and no field keeps its default."""
    contract = tmp_path / "c.yaml"
    contract.write_text("x")
    env = {name: f"v{i}x" for i, name in enumerate(SETTING_NAMES)} | {
        "AUTORETRAIN_WORKSPACE": "azureml", "AUTORETRAIN_CONTRACT": str(contract),
        "AUTORETRAIN_RECONCILE_SCHEDULE": "0 */7 * * * *", "AUTORETRAIN_RECONCILE_GRACE_SECONDS": "7",
        "AUTORETRAIN_LEASE_SECONDS": "8", "FUNCTIONS_WORKER_PROCESS_COUNT": "2", "AUTORETRAIN_AZURITE": "shared",
    }
    settings, defaults = Settings.from_env(env), Settings()
    kept = [f.name for f in fields(Settings) if getattr(settings, f.name) == getattr(defaults, f.name)]
    assert kept == []
    assert "FUNCTIONS_WORKER_PROCESS_COUNT" not in SETTING_NAMES, "the platform's setting, not ours"


def test_the_azurite_setting_is_own_or_shared() -> None:
    assert Settings.from_env({}).azurite_shared is False
    assert Settings.from_env({"AUTORETRAIN_AZURITE": "Shared"}).azurite_shared is True
    with pytest.raises(ConfigError, match="AUTORETRAIN_AZURITE='mine' is not 'own'"):
        Settings.from_env({"AUTORETRAIN_AZURITE": "mine"})
