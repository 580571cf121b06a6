"""The one composition root: settings in, the loop's dependencies out.

Adapters are built here and nowhere else; tests pass their own by keyword. The function app
builds them once per worker process (`runtime()`), on first use, not at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoretrain.contract import load_contract
from autoretrain.domain.errors import ConfigError
from autoretrain.domain.ports import BlobStore, Ledger, Workspace
from autoretrain.loading import no_collection
from autoretrain.loop import Deps, LoopConfig
from autoretrain.settings import PROJECT_ROOT, Settings, WorkspaceKind

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

    from autoretrain.adapters.storage import DeadLetterContainer

__all__ = [
    "PIPELINE",
    "PROJECT_ROOT",
    "Operator",
    "bootstrap",
    "create_local_storage",
    "ml_client",
    "operator",
    "resume_jobs",
    "resume_orphaned_jobs",
    "runtime",
    "runtime_settings",
    "shutdown",
]

log = logging.getLogger("autoretrain.bootstrap")

PIPELINE = PROJECT_ROOT / "ml" / "pipeline.yml"


def _credential(settings: Settings):  # type: ignore[no-untyped-def]
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)


# The SDKs' default retries (10, exponential) can hold one call for minutes; Event Grid waits 30 s
# for an answer and retries itself, so a call gives up sooner and the event is redelivered.
_RETRIES: dict[str, Any] = {"retry_total": 3, "retry_backoff_factor": 0.5, "connection_timeout": 10, "read_timeout": 30}


def ml_client(settings: Settings, **options: Any) -> MLClient:
    """The client of the settings' Azure ML workspace, with the app's credential (`options` go to
    MLClient). Building it reads no network; the first call does."""
    # Imported here: azure-ai-ml takes ~2 s to import, which only an Azure ML app should pay.
    from azure.ai.ml import MLClient

    return MLClient(
        _credential(settings),
        str(settings.azureml_subscription_id),
        str(settings.azureml_resource_group),
        str(settings.azureml_workspace),
        **options,
    )


def _emulator_options(connection: str) -> dict[str, Any]:
    """Azurite on this machine: no proxy applies, so the SDK's HTTP session does not read the
    environment's proxy settings (requests does that on every call: ~2 ms of CPU an ingest)."""
    endpoints = re.findall(r"(?i)(?:^|;)\s*\w*Endpoint=(https?://[^;/]+)", connection)
    local = "usedevelopmentstorage=true" in connection.lower().replace(" ", "") or (
        endpoints and all(re.match(r"(?i)https?://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?$", e) for e in endpoints)
    )
    return {"use_env_settings": False} if local else {}


def blob_service(settings: Settings):  # type: ignore[no-untyped-def]
    from azure.storage.blob import BlobServiceClient

    from autoretrain.adapters.storage import client_options

    if settings.storage_connection:
        return BlobServiceClient.from_connection_string(
            settings.storage_connection, **client_options(), **_emulator_options(settings.storage_connection)
        )
    return BlobServiceClient(str(settings.blob_service_uri), credential=_credential(settings), **client_options())


def table_service(settings: Settings):  # type: ignore[no-untyped-def]
    from azure.data.tables import TableServiceClient

    if settings.storage_connection:
        return TableServiceClient.from_connection_string(
            settings.storage_connection, **_RETRIES, **_emulator_options(settings.storage_connection)
        )
    return TableServiceClient(str(settings.table_service_uri), credential=_credential(settings), **_RETRIES)


@dataclass(frozen=True, slots=True)
class Operator:
    """What an operator's command needs besides the loop: the ledger, the customer's storage, and
    Event Grid's dead-letter records (`autoretrain status`, `replay`, `drop`)."""

    ledger: Ledger
    blobs: BlobStore
    deadletters: Callable[[str], DeadLetterContainer]
    blob_url: Callable[[str, str], str]  # (container, name) -> the blob's URL, as an event names it
    # container -> the prefixes under which a name cannot be listed (listing it, never creating it)
    unlistable: Callable[[str], tuple[str, ...]]


def operator(settings: Settings) -> Operator:
    """The ledger and the stores an operator's command reads, built from settings (nothing started)."""
    from autoretrain.adapters.ledger import TableLedger
    from autoretrain.adapters.storage import AzureBlobStore, DeadLetterContainer

    service = blob_service(settings)
    blobs = AzureBlobStore(service)
    return Operator(
        ledger=TableLedger.connect(table_service(settings), settings.ledger_table),
        blobs=blobs,
        unlistable=blobs.scan_unlistable,
        deadletters=lambda container: DeadLetterContainer(service, container),
        blob_url=lambda container, name: str(service.get_blob_client(container, name).url),
    )


def bootstrap(
    settings: Settings | None = None,
    *,
    workspace: Workspace | None = None,
    ledger: Ledger | None = None,
    blobs: BlobStore | None = None,
    worker: bool = True,
    resume: bool | None = None,
) -> Deps:
    """Build the loop's dependencies from settings; any of them may be given instead.

    `worker=False` (the CLI) builds a local workspace that neither resumes the jobs another
    process left (the running stack does) nor sends run events (the CLI completes its own jobs),
    and starts its step runner and tracker only if it runs a job.
    `resume=False`: a worker that sends run events but leaves resuming to the host's main process
    (a second worker process); by default a worker resumes.
    """
    settings = settings or Settings.from_env()
    contract = load_contract(settings.contract)
    if blobs is None:
        from autoretrain.adapters.storage import AzureBlobStore

        blobs = AzureBlobStore(blob_service(settings), create_containers=settings.storage_connection is not None)
    if ledger is None:
        from autoretrain.adapters.ledger import TableLedger

        ledger = TableLedger.connect(
            table_service(settings), settings.ledger_table, create=settings.storage_connection is not None
        )
    if workspace is None:
        workspace = _workspace(settings, blobs, worker=worker, resume=worker if resume is None else resume)
    return Deps(
        config=LoopConfig.from_settings(settings), contract=contract, workspace=workspace, ledger=ledger, blobs=blobs
    )


def _workspace(settings: Settings, blobs: BlobStore, *, worker: bool, resume: bool) -> Workspace:
    if settings.workspace is WorkspaceKind.LOCAL:
        from autoretrain.adapters.eventgrid import EventGridDelivery, publish_to_function
        from autoretrain.adapters.localworkspace.workspace import LocalWorkspace

        delivery = EventGridDelivery(settings.home)

        def send(event: dict[str, object]) -> None:
            publish_to_function(delivery, settings.host_url, "completion", event)

        workspace = LocalWorkspace(
            settings.home,
            pipeline=PIPELINE,
            contract=settings.contract,
            blobs=blobs,
            experiment=settings.experiment,
            data_asset=settings.data_asset,
            model_name=settings.model_name,
            on_event=send if worker else None,
            warm_up=worker,  # a command starts the step runner and the tracker when it runs a job
        )
        if resume:
            workspace.resume()
        return workspace
    if settings.workspace is WorkspaceKind.AZUREML:
        from autoretrain.adapters.azureml import AzureMLWorkspace, client_options

        return AzureMLWorkspace(
            ml_client(settings, **client_options()),
            blobs=blobs,
            datastore=str(settings.azureml_datastore),
            datasets_container=settings.datasets_container,
            compute=str(settings.azureml_compute),
            contract=settings.contract,
            experiment=settings.experiment,
            data_asset=settings.data_asset,
            model_name=settings.model_name,
            pipeline_component=settings.pipeline_component,
        )
    raise ConfigError(f"AUTORETRAIN_WORKSPACE={settings.workspace.value!r} has no workspace adapter.")


_runtime: Deps | None = None
_runtime_settings: Settings | None = None
_runtime_lock = threading.Lock()


def runtime() -> Deps:
    """The dependencies of this worker process, built once, on first use.

    The host runs functions on several threads at once; the lock makes the first concurrent
    calls share one set of adapters (one local workspace, one job pool) instead of racing.
    """
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            settings = runtime_settings()
            # The first event loads the adapters' libraries (the Azure ML SDK above all).
            with no_collection():
                # One of the local host's extra worker processes: the main one resumes the jobs.
                _runtime = bootstrap(settings, resume=os.environ.get("AUTORETRAIN_HOST_WORKER", "0") == "0")
            log.info("bootstrap.ready workspace=%s contract=%s", settings.workspace.value, settings.contract)
        return _runtime


@contextlib.contextmanager
def installed(deps: Deps, settings: Settings) -> Iterator[Deps]:
    """Make `deps` this process's runtime, the one the triggers use, for the block (a host or a test
    that builds the dependencies itself, e.g. to keep the run events); the previous one after."""
    global _runtime, _runtime_settings
    with _runtime_lock:
        previous = _runtime, _runtime_settings
        _runtime, _runtime_settings = deps, settings
    try:
        yield deps
    finally:
        with _runtime_lock:
            _runtime, _runtime_settings = previous


def runtime_settings() -> Settings:
    """This worker process's settings, read from the environment once."""
    global _runtime_settings
    if _runtime_settings is None:
        _runtime_settings = Settings.from_env()
    return _runtime_settings


def create_local_storage(settings: Settings) -> None:
    """Create the ledger table and the containers, if missing (local mode: after the storage emulator
    was restarted without what it had not saved, as `bootstrap` does at the first start)."""
    from azure.core.exceptions import ResourceExistsError

    from autoretrain.adapters.ledger import TableLedger

    TableLedger.connect(table_service(settings), settings.ledger_table, create=True)
    service = blob_service(settings)
    for container in (settings.incoming_container, settings.quarantine_container, settings.datasets_container):
        with contextlib.suppress(ResourceExistsError):
            service.create_container(container)


def resume_jobs(workspace: Workspace) -> list[str]:
    """Take over and run the local workspace's jobs whose runner is gone (a closed workspace, a dead
    process); their names. Azure ML runs its own jobs: nothing to do there."""
    from autoretrain.adapters.localworkspace.workspace import LocalWorkspace

    return workspace.resume() if isinstance(workspace, LocalWorkspace) else []


def resume_orphaned_jobs() -> list[str]:
    """`resume_jobs` on this process's runtime, if it is built (the local stack calls it every second)."""
    with _runtime_lock:
        deps = _runtime
    return resume_jobs(deps.workspace) if deps is not None else []


def shutdown() -> None:
    """Stop this process's workspace (local mode: running jobs are stopped and left to resume)."""
    global _runtime, _runtime_settings
    with _runtime_lock:
        if _runtime is not None:
            _runtime.workspace.close()
        _runtime = _runtime_settings = None
