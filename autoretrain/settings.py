"""One frozen Settings object, read from the environment once at start.

The variable names are the same in Bicep `appSettings` (infra/), in `local.settings.json.example`
and here; `SETTING_NAMES` is the list a test holds the other two to.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

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

SETTING_NAMES: tuple[str, ...] = (
    "AUTORETRAIN_WORKSPACE",
    "AUTORETRAIN_HOME",
    "AUTORETRAIN_CONTRACT",
    "AUTORETRAIN_STORAGE",
    "AUTORETRAIN_STORAGE__blobServiceUri",
    "AUTORETRAIN_STORAGE__tableServiceUri",
    "AUTORETRAIN_STORAGE_RESOURCE_ID",
    "AUTORETRAIN_INCOMING_CONTAINER",
    "AUTORETRAIN_QUARANTINE_CONTAINER",
    "AUTORETRAIN_DATASETS_CONTAINER",
    "AUTORETRAIN_LEDGER_TABLE",
    "AUTORETRAIN_EXPERIMENT",
    "AUTORETRAIN_DATA_ASSET",
    "AUTORETRAIN_MODEL_NAME",
    "AUTORETRAIN_PIPELINE_COMPONENT",
    "AUTORETRAIN_AZUREML_SUBSCRIPTION_ID",
    "AUTORETRAIN_AZUREML_RESOURCE_GROUP",
    "AUTORETRAIN_AZUREML_WORKSPACE",
    "AUTORETRAIN_AZUREML_DATASTORE",
    "AUTORETRAIN_AZUREML_COMPUTE",
    "AUTORETRAIN_HOST_URL",
    "AUTORETRAIN_RECONCILE_SCHEDULE",
    "AUTORETRAIN_RECONCILE_GRACE_SECONDS",
    "AUTORETRAIN_LEASE_SECONDS",
    "AZURE_CLIENT_ID",
)

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$")
_ASSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
# The project's root folder (where ml/, function_app.py and node_modules/ are): its one name.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _seconds(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name}={raw!r} is not a whole number of seconds; use e.g. 600.")
    return value


def _worker_processes(raw: str | None) -> int:
    if raw is None:
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= 10:
        raise ConfigError(f"FUNCTIONS_WORKER_PROCESS_COUNT={raw!r} must be a whole number from 1 to 10.")
    return int(raw)


class WorkspaceKind(StrEnum):
    LOCAL = "local"
    AZUREML = "azureml"


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

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        raw_kind = get("AUTORETRAIN_WORKSPACE") or WorkspaceKind.LOCAL.value
        try:
            kind = WorkspaceKind(raw_kind.lower())
        except ValueError:
            raise ConfigError(
                f"AUTORETRAIN_WORKSPACE={raw_kind!r} is not a workspace kind; use 'local' or 'azureml'."
            ) from None

        defaults = cls()
        blob_uri = get("AUTORETRAIN_STORAGE__blobServiceUri")
        table_uri = get("AUTORETRAIN_STORAGE__tableServiceUri")
        connection = get("AUTORETRAIN_STORAGE")
        if connection is None and blob_uri is None and kind is WorkspaceKind.LOCAL:
            connection = defaults.storage_connection
        if connection is None and (blob_uri is None or table_uri is None):
            raise ConfigError(
                "Storage is not configured: set AUTORETRAIN_STORAGE__blobServiceUri and "
                "AUTORETRAIN_STORAGE__tableServiceUri (managed identity), or AUTORETRAIN_STORAGE "
                "to a connection string (local only)."
            )

        contract = Path(get("AUTORETRAIN_CONTRACT") or defaults.contract)
        if not contract.is_absolute() and not contract.exists():
            # On Azure the worker's working folder need not be the app root: a relative path
            # such as ml/contract.yaml means the one shipped with the app.
            contract = PROJECT_ROOT / contract
        if not contract.is_file():
            raise ConfigError(
                f"AUTORETRAIN_CONTRACT={str(contract)!r} is not a file; point it at a contract YAML "
                "such as ml/contract.yaml."
            )

        settings = cls(
            workspace=kind,
            home=Path(get("AUTORETRAIN_HOME") or defaults.home),
            contract=contract,
            storage_connection=connection,
            blob_service_uri=blob_uri,
            table_service_uri=table_uri,
            storage_topic=get("AUTORETRAIN_STORAGE_RESOURCE_ID") or defaults.storage_topic,
            incoming_container=get("AUTORETRAIN_INCOMING_CONTAINER") or defaults.incoming_container,
            quarantine_container=get("AUTORETRAIN_QUARANTINE_CONTAINER") or defaults.quarantine_container,
            datasets_container=get("AUTORETRAIN_DATASETS_CONTAINER") or defaults.datasets_container,
            ledger_table=get("AUTORETRAIN_LEDGER_TABLE") or defaults.ledger_table,
            experiment=get("AUTORETRAIN_EXPERIMENT") or defaults.experiment,
            data_asset=get("AUTORETRAIN_DATA_ASSET") or defaults.data_asset,
            model_name=get("AUTORETRAIN_MODEL_NAME") or defaults.model_name,
            pipeline_component=get("AUTORETRAIN_PIPELINE_COMPONENT") or defaults.pipeline_component,
            azureml_subscription_id=get("AUTORETRAIN_AZUREML_SUBSCRIPTION_ID"),
            azureml_resource_group=get("AUTORETRAIN_AZUREML_RESOURCE_GROUP"),
            azureml_workspace=get("AUTORETRAIN_AZUREML_WORKSPACE"),
            azureml_datastore=get("AUTORETRAIN_AZUREML_DATASTORE"),
            azureml_compute=get("AUTORETRAIN_AZUREML_COMPUTE"),
            host_url=(get("AUTORETRAIN_HOST_URL") or defaults.host_url).rstrip("/"),
            reconcile_schedule=get("AUTORETRAIN_RECONCILE_SCHEDULE") or defaults.reconcile_schedule,
            reconcile_grace_seconds=_seconds(
                "AUTORETRAIN_RECONCILE_GRACE_SECONDS", get("AUTORETRAIN_RECONCILE_GRACE_SECONDS"),
                defaults.reconcile_grace_seconds,
            ),
            lease_seconds=_seconds(
                "AUTORETRAIN_LEASE_SECONDS", get("AUTORETRAIN_LEASE_SECONDS"), defaults.lease_seconds
            ),
            azure_client_id=get("AZURE_CLIENT_ID"),
            worker_processes=_worker_processes(get("FUNCTIONS_WORKER_PROCESS_COUNT")),
        )
        settings._validate()
        return settings

    def _validate(self) -> None:
        try:
            TimerSchedule.parse(self.reconcile_schedule)
        except ConfigError as exc:
            raise ConfigError(f"AUTORETRAIN_RECONCILE_SCHEDULE: {exc}") from None
        for env_name, value in (
            ("AUTORETRAIN_INCOMING_CONTAINER", self.incoming_container),
            ("AUTORETRAIN_QUARANTINE_CONTAINER", self.quarantine_container),
            ("AUTORETRAIN_DATASETS_CONTAINER", self.datasets_container),
        ):
            if not _NAME.match(value) or "--" in value:
                raise ConfigError(
                    f"{env_name}={value!r} is not a valid container name; use 3-63 lowercase letters, "
                    "digits and single hyphens."
                )
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", self.ledger_table):
            raise ConfigError(
                f"AUTORETRAIN_LEDGER_TABLE={self.ledger_table!r} is not a valid table name; use 3-63 "
                "letters and digits, starting with a letter."
            )
        for env_name, value in (
            ("AUTORETRAIN_EXPERIMENT", self.experiment),
            ("AUTORETRAIN_DATA_ASSET", self.data_asset),
            ("AUTORETRAIN_MODEL_NAME", self.model_name),
            ("AUTORETRAIN_PIPELINE_COMPONENT", self.pipeline_component),
        ):
            if not _ASSET.match(value):
                raise ConfigError(
                    f"{env_name}={value!r} is not a valid Azure ML name; use letters, digits, '-', '_' "
                    "and '.', starting with a letter or digit."
                )
        if self.workspace is WorkspaceKind.AZUREML:
            missing = [
                env_name
                for env_name, value in (
                    ("AUTORETRAIN_AZUREML_SUBSCRIPTION_ID", self.azureml_subscription_id),
                    ("AUTORETRAIN_AZUREML_RESOURCE_GROUP", self.azureml_resource_group),
                    ("AUTORETRAIN_AZUREML_WORKSPACE", self.azureml_workspace),
                    ("AUTORETRAIN_AZUREML_DATASTORE", self.azureml_datastore),
                    ("AUTORETRAIN_AZUREML_COMPUTE", self.azureml_compute),
                )
                if not value
            ]
            if self.storage_topic == LOCAL_STORAGE_TOPIC:
                missing.append("AUTORETRAIN_STORAGE_RESOURCE_ID")
            if missing:
                raise ConfigError(
                    f"AUTORETRAIN_WORKSPACE=azureml needs {', '.join(missing)}; set them in the app "
                    "settings (infra/ sets them on deploy)."
                )
