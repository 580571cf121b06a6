"""One frozen Settings object, read from the environment once at start.

`_SETTINGS` is the one table of environment variables: each name, written once, with the field it
fills, how its text is read and how its value is checked; `from_env`, `SETTING_NAMES` and the error
messages all come from it. The names are the same in Bicep `appSettings` (infra/), in
`local.settings.json.example` and here; `SETTING_NAMES` is the list a test holds the other two to.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from autoretrain.domain.errors import ConfigError
from autoretrain.schedule import TimerSchedule

__all__ = ["LOCAL_STORAGE_TOPIC", "LOCAL_WORKSPACE_TOPIC", "PROJECT_ROOT", "SETTING_NAMES", "Settings", "WorkspaceKind"]

# The Event Grid topics the local event sources stamp on their events: the same shape as Azure's.
LOCAL_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
LOCAL_RESOURCE_GROUP = "autoretrain-local"
LOCAL_STORAGE_TOPIC = (
    f"/subscriptions/{LOCAL_SUBSCRIPTION}/resourceGroups/{LOCAL_RESOURCE_GROUP}"
    "/providers/Microsoft.Storage/storageAccounts/devstoreaccount1"
)
LOCAL_WORKSPACE_TOPIC = (
    f"/subscriptions/{LOCAL_SUBSCRIPTION}/resourceGroups/{LOCAL_RESOURCE_GROUP}"
    "/providers/Microsoft.MachineLearningServices/workspaces/local"
)

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$")
_ASSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_TABLE = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
# The project's root folder (where ml/, function_app.py and node_modules/ are): its one name.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class WorkspaceKind(StrEnum):
    LOCAL = "local"
    AZUREML = "azureml"


# Parsers turn a variable's (trimmed, non-empty) text into its field's value; checks look at the
# value, the default included. Both take the variable's name, so each message names it.


def _text(name: str, raw: str) -> str:
    return raw


def _kind(name: str, raw: str) -> WorkspaceKind:
    try:
        return WorkspaceKind(raw.lower())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a workspace kind; use 'local' or 'azureml'.") from None


def _azurite_shared(name: str, raw: str) -> bool:
    if raw.lower() not in ("own", "shared"):
        raise ConfigError(
            f"{name}={raw!r} is not 'own' (use only an Azurite serving this home's folder) or 'shared'."
        )
    return raw.lower() == "shared"


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _contract_path(name: str, raw: str) -> Path:
    path = Path(raw)
    if not path.is_absolute() and not path.exists():
        # On Azure the worker's working folder need not be the app root: a relative path
        # such as ml/contract.yaml means the one shipped with the app.
        return PROJECT_ROOT / path
    return path


def _url(name: str, raw: str) -> str:
    return raw.rstrip("/")


def _seconds(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name}={raw!r} is not a whole number of seconds; use e.g. 600.")
    return value


def _worker_processes(name: str, raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 10:
        raise ConfigError(f"{name}={raw!r} must be a whole number from 1 to 10.")
    return int(raw)


def _is_file(name: str, value: Path) -> None:
    if not value.is_file():
        raise ConfigError(
            f"{name}={str(value)!r} is not a file; point it at a contract YAML such as ml/contract.yaml."
        )


def _schedule(name: str, value: str) -> None:
    try:
        TimerSchedule.parse(value)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _container(name: str, value: str) -> None:
    if not _NAME.match(value) or "--" in value:
        raise ConfigError(
            f"{name}={value!r} is not a valid container name; use 3-63 lowercase letters, "
            "digits and single hyphens."
        )


def _table(name: str, value: str) -> None:
    if not _TABLE.fullmatch(value):
        raise ConfigError(
            f"{name}={value!r} is not a valid table name; use 3-63 letters and digits, starting with a letter."
        )


def _azureml_name(name: str, value: str) -> None:
    if not _ASSET.match(value):
        raise ConfigError(
            f"{name}={value!r} is not a valid Azure ML name; use letters, digits, '-', '_' "
            "and '.', starting with a letter or digit."
        )


@dataclass(frozen=True, slots=True)
class _Setting:
    """One environment variable: the Settings field it fills, how its text is read and checked."""

    name: str
    field: str
    parse: Callable[[str, str], Any] = _text
    check: Callable[[str, Any], None] | None = None
    # Unset in azureml mode, or left at its local default, it stops the start with the others missing.
    needed_by_azureml: bool = False
    # Unset means the field's default; not so for the storage connection, whose default depends
    # on the workspace kind and the service URIs (`Settings._storage`).
    defaulted: bool = True
    # FUNCTIONS_WORKER_PROCESS_COUNT is the Functions platform's own setting: read, not in SETTING_NAMES.
    ours: bool = True


# Checks run in this order, so with several bad values the first one here is reported.
_SETTINGS: tuple[_Setting, ...] = (
    _Setting("AUTORETRAIN_WORKSPACE", "workspace", _kind),
    _Setting("AUTORETRAIN_HOME", "home", _path),
    _Setting("AUTORETRAIN_CONTRACT", "contract", _contract_path, _is_file),
    _Setting("AUTORETRAIN_STORAGE", "storage_connection", defaulted=False),
    _Setting("AUTORETRAIN_STORAGE__blobServiceUri", "blob_service_uri"),
    _Setting("AUTORETRAIN_STORAGE__tableServiceUri", "table_service_uri"),
    _Setting("AUTORETRAIN_RECONCILE_SCHEDULE", "reconcile_schedule", check=_schedule),
    _Setting("AUTORETRAIN_RECONCILE_GRACE_SECONDS", "reconcile_grace_seconds", _seconds),
    _Setting("AUTORETRAIN_LEASE_SECONDS", "lease_seconds", _seconds),
    _Setting("AUTORETRAIN_INCOMING_CONTAINER", "incoming_container", check=_container),
    _Setting("AUTORETRAIN_QUARANTINE_CONTAINER", "quarantine_container", check=_container),
    _Setting("AUTORETRAIN_DATASETS_CONTAINER", "datasets_container", check=_container),
    _Setting("AUTORETRAIN_LEDGER_TABLE", "ledger_table", check=_table),
    _Setting("AUTORETRAIN_EXPERIMENT", "experiment", check=_azureml_name),
    _Setting("AUTORETRAIN_DATA_ASSET", "data_asset", check=_azureml_name),
    _Setting("AUTORETRAIN_MODEL_NAME", "model_name", check=_azureml_name),
    _Setting("AUTORETRAIN_PIPELINE_COMPONENT", "pipeline_component", check=_azureml_name),
    _Setting("AUTORETRAIN_AZUREML_SUBSCRIPTION_ID", "azureml_subscription_id", needed_by_azureml=True),
    _Setting("AUTORETRAIN_AZUREML_RESOURCE_GROUP", "azureml_resource_group", needed_by_azureml=True),
    _Setting("AUTORETRAIN_AZUREML_WORKSPACE", "azureml_workspace", needed_by_azureml=True),
    _Setting("AUTORETRAIN_AZUREML_DATASTORE", "azureml_datastore", needed_by_azureml=True),
    _Setting("AUTORETRAIN_AZUREML_COMPUTE", "azureml_compute", needed_by_azureml=True),
    # The storage account's resource id: the topic its blob events come from.
    _Setting("AUTORETRAIN_STORAGE_RESOURCE_ID", "storage_topic", needed_by_azureml=True),
    _Setting("AUTORETRAIN_HOST_URL", "host_url", _url),
    _Setting("AUTORETRAIN_AZURITE", "azurite_shared", _azurite_shared),
    _Setting("AZURE_CLIENT_ID", "azure_client_id"),
    _Setting("FUNCTIONS_WORKER_PROCESS_COUNT", "worker_processes", _worker_processes, ours=False),
)

SETTING_NAMES: tuple[str, ...] = tuple(setting.name for setting in _SETTINGS if setting.ours)
_ENV_NAME = {setting.field: setting.name for setting in _SETTINGS}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything autoretrain reads from its environment, validated."""

    workspace: WorkspaceKind = WorkspaceKind.LOCAL
    home: Path = Path(".autoretrain")
    contract: Path = PROJECT_ROOT / "ml" / "contract.yaml"
    # Local: a connection string (UseDevelopmentStorage=true reaches Azurite). Azure: None, and the
    # two service URIs below are reached with the managed identity.
    storage_connection: str | None = "UseDevelopmentStorage=true"
    blob_service_uri: str | None = None
    table_service_uri: str | None = None
    storage_topic: str = LOCAL_STORAGE_TOPIC
    incoming_container: str = "incoming"
    quarantine_container: str = "quarantine"
    datasets_container: str = "datasets"
    ledger_table: str = "autoretrainledger"
    experiment: str = "autoretrain"
    data_asset: str = "autoretrain-data"
    model_name: str = "autoretrain-model"
    pipeline_component: str = "autoretrain_pipeline"
    azureml_subscription_id: str | None = None
    azureml_resource_group: str | None = None
    azureml_workspace: str | None = None
    azureml_datastore: str | None = None
    azureml_compute: str | None = None
    # Where the local workspace sends its run events: the local Functions host.
    host_url: str = "http://127.0.0.1:7071"
    # The reconcile timer's NCRONTAB schedule (the function reads it as %AUTORETRAIN_RECONCILE_SCHEDULE%).
    reconcile_schedule: str = "0 */5 * * * *"
    # A blob version younger than this has its event still on its way: reconcile leaves it alone.
    reconcile_grace_seconds: int = 600
    # How long a worker holds a claimed or completing record before another may take it over.
    lease_seconds: int = 600
    azure_client_id: str | None = None
    # Local only: use any Azurite found listening ("shared"), not only one serving this home ("own").
    azurite_shared: bool = False
    # Language worker processes per host (the Functions app setting of the same name, 1-10): the
    # local host serves requests from that many processes, as the real host dispatches to them.
    worker_processes: int = 1

    @property
    def reconcile_grace(self) -> timedelta:
        return timedelta(seconds=self.reconcile_grace_seconds)

    @property
    def workspace_topic(self) -> str:
        """The Event Grid topic the workspace's run events come from."""
        if self.workspace is WorkspaceKind.LOCAL:
            return LOCAL_WORKSPACE_TOPIC
        return (
            f"/subscriptions/{self.azureml_subscription_id}/resourceGroups/{self.azureml_resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.azureml_workspace}"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; a bad one raises ConfigError with a one-line message."""
        env = os.environ if env is None else env
        defaults = cls()
        values: dict[str, Any] = {}
        for setting in _SETTINGS:
            raw = env.get(setting.name, "").strip()
            if raw:
                values[setting.field] = setting.parse(setting.name, raw)
            else:
                values[setting.field] = getattr(defaults, setting.field) if setting.defaulted else None
        values["storage_connection"] = cls._storage(values, defaults)
        settings = cls(**values)
        settings._validate()
        return settings

    @staticmethod
    def _storage(values: Mapping[str, Any], defaults: Settings) -> str | None:
        """The storage connection: given, or Azurite's for the local workspace without service URIs."""
        connection: str | None = values["storage_connection"]
        blob_uri, table_uri = values["blob_service_uri"], values["table_service_uri"]
        if connection is None and blob_uri is None and values["workspace"] is WorkspaceKind.LOCAL:
            connection = defaults.storage_connection
        if connection is None and (blob_uri is None or table_uri is None):
            raise ConfigError(
                f"Storage is not configured: set {_ENV_NAME['blob_service_uri']} and "
                f"{_ENV_NAME['table_service_uri']} (managed identity), or {_ENV_NAME['storage_connection']} "
                "to a connection string (local only)."
            )
        return connection

    def _validate(self) -> None:
        for setting in _SETTINGS:
            if setting.check is not None:
                setting.check(setting.name, getattr(self, setting.field))
        if self.workspace is not WorkspaceKind.AZUREML:
            return
        defaults = Settings()
        missing = [
            setting.name
            for setting in _SETTINGS
            if setting.needed_by_azureml
            and getattr(self, setting.field) in (None, "", getattr(defaults, setting.field))
        ]
        if missing:
            raise ConfigError(
                f"{_ENV_NAME['workspace']}=azureml needs {', '.join(missing)}; set them in the app "
                "settings (infra/ sets them on deploy)."
            )
